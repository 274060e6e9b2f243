"""Building blocks shared by the backbones: weight-standardised convolution and the skip decoder.

Tensor layout: ``N C D H W`` (PyTorch); ``M`` is the number of modalities, ``B`` the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class WSConv3d(nn.Conv3d):
    """A 3D convolution with weight standardisation (each output filter z-scored before use; Qiao et al.
    2019), as in the reference network's encoder and decoder."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.flatten(1)
        w = (w - w.mean(1, keepdim=True)) / torch.sqrt(w.var(1, keepdim=True) + 1e-12)
        return F.conv3d(
            x, w.view_as(self.weight), self.bias, self.stride, self.padding, self.dilation, self.groups
        )


class PatchUpsample3d(nn.ConvTranspose3d):
    """A transposed convolution with kernel = stride (no overlap, e.g. 2 x 2 x 2, stride 2), the decoder's
    upsampling; parameters and state dict are ``nn.ConvTranspose3d``'s.

    Without autograd (inference, the meta step's encoder, held-out scoring) it is computed as one matrix
    product and a reshuffle, which gives the same sums as the convolution (each output voxel is one input
    voxel's channels times one kernel tap: a single dot product over C_in) and is 2-3x faster on CPUs, where
    PyTorch runs this convolution in a slow generic kernel (measured in benchmarks/README.md, "Speed"). With
    autograd the convolution itself runs (its backward is faster than the matrix product's).
    """

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        k = self.kernel_size
        plain = (
            output_size is None and tuple(self.stride) == tuple(k) and self.groups == 1
            and tuple(self.padding) == (0, 0, 0) and tuple(self.output_padding) == (0, 0, 0)
            and tuple(self.dilation) == (1, 1, 1) and x.dim() == 5
        )  # fmt: skip
        if not plain or (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)):
            return super().forward(x, output_size)
        n, c, d, h, w = x.shape
        o = self.out_channels
        y = torch.matmul(self.weight.reshape(c, -1).t(), x.reshape(n, c, -1))  # (n, o * k^3, d h w)
        if self.bias is not None:
            y = y + self.bias.repeat_interleave(k[0] * k[1] * k[2]).view(1, -1, 1)
        y = y.view(n, o, *k, d, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        return y.reshape(n, o, d * k[0], h * k[1], w * k[2])


class SkipDecoder(nn.Module):
    """Decode concatenated per-modality bottlenecks with per-level concatenated skips.

    Level l (deepest first): ``x = block_l(up_l(x) + skip_l(skips[-1 - l]))``, where ``up_l`` is a stride-2
    transposed convolution and ``skip_l`` reduces the M-fold concatenated skip to the level's width; then a
    1x1 convolution to ``out_channels`` and a trilinear upsampling by ``final_scale``.

    Args:
        num_modalities: M.
        bottleneck_channels: C of one modality's bottleneck (the input has M * C channels).
        skip_channels: channels of one modality's skips, shallow to deep (inputs have M times as many).
        decoder_channels: width of each decoder level, deep to shallow (one per skip).
        out_channels: logits channels (3 for ET, WT, TC).
        make_skip, make_block: factories ``(in, out) -> Module`` and ``(channels) -> Module``.
        final_scale: upsampling factor of the logits back to the input size.
    """

    def __init__(
        self,
        num_modalities: int,
        bottleneck_channels: int,
        skip_channels: Sequence[int],
        decoder_channels: Sequence[int],
        out_channels: int,
        make_skip: Callable[[int, int], nn.Module],
        make_block: Callable[[int], nn.Module],
        final_scale: tuple[int, int, int] = (2, 2, 2),
    ):
        super().__init__()
        if len(decoder_channels) != len(skip_channels):
            raise ValueError(f"{len(decoder_channels)} decoder levels for {len(skip_channels)} skip levels")
        m, widths = num_modalities, [bottleneck_channels * num_modalities, *decoder_channels]
        self.up = nn.ModuleList(
            PatchUpsample3d(widths[i], widths[i + 1], kernel_size=2, stride=2, bias=False)
            for i in range(len(decoder_channels))
        )
        deep_first = list(reversed(skip_channels))
        self.skip = nn.ModuleList(
            make_skip(m * c, d) for c, d in zip(deep_first, decoder_channels, strict=True)
        )
        self.block = nn.ModuleList(make_block(d) for d in decoder_channels)
        self.out = nn.Conv3d(decoder_channels[-1], out_channels, kernel_size=1, bias=False)
        self.final_scale = tuple(final_scale)

    def forward(self, bottleneck: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        """bottleneck (B, M*C, *s), skips shallow to deep [(B, M*C_l, *s_l)] -> logits (B, out, D, H, W)."""
        x = bottleneck
        for up, skip, block, s in zip(self.up, self.skip, self.block, reversed(skips), strict=True):
            x = block(up(x) + skip(s))
        x = self.out(x)
        if any(f != 1 for f in self.final_scale):
            x = F.interpolate(x, scale_factor=self.final_scale, mode="trilinear", align_corners=False)
        return x


class ClassificationHead(nn.Module):
    """Classification from the concatenated bottlenecks: global average pool over any spatial axes, then a
    linear layer. Input (B, M*C, *s) or (B, M*C); skips are ignored. Output logits (B, K)."""

    def __init__(self, in_channels: int, num_classes: int, hidden: int = 64, dropout: float = 0.1):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_channels, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )

    def forward(self, bottleneck: torch.Tensor, skips: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        pooled = bottleneck.flatten(2).mean(-1) if bottleneck.dim() > 2 else bottleneck
        return self.mlp(pooled)
