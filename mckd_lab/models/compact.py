"""The ``compact`` backbone: a small CPU-friendly residual encoder and skip decoder from MONAI blocks.

Instance norm and LeakyReLU as in the reference; the stem downsamples at once (stride 2) so a 48^3 crop costs
little. With ``channels=(16, 32, 64)`` the bottleneck is 64 x D/8 x H/8 x W/8 and the skips are at 1/2 and
1/4.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from monai.networks.blocks.dynunet_block import UnetResBlock
from torch import nn

from mckd_lab.models.blocks import SkipDecoder

NORM = ("instance", {"affine": True})
ACT = ("leakyrelu", {"negative_slope": 0.01, "inplace": True})


class CompactEncoder(nn.Module):
    """One modality's encoder: (N, in_channels, D, H, W) -> (bottleneck (N, C, D/2^L, ...), skips shallow
    to deep).

    ``channels[0]`` is a stride-2 convolution stem; each further width is a stride-2 MONAI ``ResidualUnit``.
    """

    def __init__(self, in_channels: int = 1, channels: Sequence[int] = (16, 32, 64)):
        super().__init__()
        if len(channels) < 2:
            raise ValueError(f"the compact encoder needs at least 2 widths, got channels={tuple(channels)}")
        self.stem = Convolution(3, in_channels, channels[0], strides=2, kernel_size=3, norm=NORM, act=ACT)
        self.down = nn.ModuleList(
            ResidualUnit(3, c_in, c_out, strides=2, kernel_size=3, subunits=2, norm=NORM, act=ACT)
            for c_in, c_out in zip(channels[:-1], channels[1:], strict=True)
        )
        self.bottleneck_channels = channels[-1]
        self.skip_channels = list(channels[:-1])
        self.stride = 2 ** len(channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = [self.stem(x)]
        for down in self.down:
            skips.append(down(skips[-1]))
        return skips[-1], skips[:-1]


def compact_decoder(num_modalities: int, encoder: CompactEncoder, out_channels: int) -> SkipDecoder:
    """The decoder mirroring ``encoder``: a level per skip at the skip's width, logits upsampled x2."""
    return SkipDecoder(
        num_modalities,
        encoder.bottleneck_channels,
        encoder.skip_channels,
        list(reversed(encoder.skip_channels)),
        out_channels,
        make_skip=lambda c_in, c_out: Convolution(3, c_in, c_out, kernel_size=1, norm=NORM, act=ACT),
        make_block=lambda c: UnetResBlock(3, c, c, kernel_size=3, stride=1, norm_name=NORM, act_name=ACT),
        final_scale=(2, 2, 2),
    )
