"""The ``reference`` backbone: METHOD.md's encoder (3D ResNet-50 + ASPP) and residual decoder, for GPU scale.

Encoder (one modality, 1 channel in): a 7x7x7 stem with stride (1, 2, 2), max-pool /2, ResNet-50 bottleneck
stages 3-4-6-3 (64, 128, 256, 320 planes, expansion 4: the last stage has 1280 channels), weight-standardised
convolutions, instance norm, LeakyReLU(0.01); a 1x1 convolution to 256 and ASPP (1x1, dilations 2, 4, 8 and a
global-pool branch). Bottleneck 256 x D/16 x H/32 x W/32; skips: stem (64, D x H/2), stages 1-3.
Decoder: four transposed-convolution levels 256, 128, 64, 32, each adding a 1x1 convolution of the
concatenated skips and followed by a residual block; a 1x1 convolution to the logits and a (1, 2, 2)
trilinear upsampling.

One change from the authors' network: their global-pool branch applies instance norm to a 1x1x1 map (one value
per channel), which current PyTorch refuses in training. Here that branch uses GroupNorm(16 groups) instead:
it normalises over channel groups, is defined at 1x1x1, and has the same 512 affine parameters.
Inputs need D divisible by 16 and H, W by 32.
"""

from __future__ import annotations

import torch
from torch import nn

from mckd_lab.models.blocks import SkipDecoder, WSConv3d


def _norm(c: int) -> nn.Module:
    return nn.InstanceNorm3d(c, affine=True)


def _act() -> nn.Module:
    return nn.LeakyReLU(0.01, inplace=True)


def conv_norm_act(c_in: int, c_out: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (kernel // 2)
    return nn.Sequential(
        WSConv3d(c_in, c_out, kernel, padding=pad, dilation=dilation, bias=False), _norm(c_out), _act()
    )


class Bottleneck(nn.Module):
    """ResNet bottleneck block: 1x1, 3x3x3 (stride), 1x1 to 4x planes; shortcut B (1x1 if shapes change)."""

    def __init__(self, c_in: int, planes: int, stride: int | tuple[int, int, int] = 1):
        super().__init__()
        c_out = planes * 4
        self.body = nn.Sequential(
            WSConv3d(c_in, planes, 1, bias=False), _norm(planes), _act(),
            WSConv3d(planes, planes, 3, stride=stride, padding=1, bias=False), _norm(planes), _act(),
            WSConv3d(planes, c_out, 1, bias=False), _norm(c_out),
        )  # fmt: skip
        self.shortcut = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(WSConv3d(c_in, c_out, 1, stride=stride, bias=False), _norm(c_out))
        )
        self.act = _act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class BasicBlock(nn.Module):
    """Residual block of two 3x3x3 convolutions at constant width (the reference decoder's)."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(
            WSConv3d(c, c, 3, padding=1, bias=False),
            _norm(c),
            _act(),
            WSConv3d(c, c, 3, padding=1, bias=False),
            _norm(c),
        )
        self.act = _act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + x)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, dilated 3x3x3 (2, 4, 8) and a global-pool branch, fused by 1x1.
    The pooled branch uses GroupNorm (not instance norm: it is 1x1x1)."""

    def __init__(self, c: int = 256):
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_norm_act(c, c, 1), *(conv_norm_act(c, c, 3, d) for d in (2, 4, 8))]
        )
        self.pooled = nn.Sequential(WSConv3d(c, c, 1, bias=False), nn.GroupNorm(16, c), _act())
        self.fuse = conv_norm_act(5 * c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pooled(x.mean((2, 3, 4), keepdim=True)).expand(-1, -1, *x.shape[2:])
        return self.fuse(torch.cat([b(x) for b in self.branches] + [pooled], 1))


class ReferenceEncoder(nn.Module):
    """(N, 1, D, H, W) -> (bottleneck (N, 256, D/16, H/32, W/32), skips [stem, stage1, stage2, stage3])."""

    def __init__(self, in_channels: int = 1):
        super().__init__()
        self.stride = 32  # bottleneck D/16, H/32, W/32: inputs padded to multiples of 32 always fit
        self.stem = nn.Sequential(
            WSConv3d(in_channels, 64, 7, stride=(1, 2, 2), padding=3, bias=False), _norm(64), _act()
        )
        self.pool = nn.MaxPool3d(3, stride=2, padding=1)
        stages, c_in = [], 64
        for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (320, 3, 2)):
            layers = [Bottleneck(c_in, planes, stride)] + [
                Bottleneck(planes * 4, planes) for _ in range(blocks - 1)
            ]
            stages.append(nn.Sequential(*layers))
            c_in = planes * 4
        self.stages = nn.ModuleList(stages)
        self.reduce = conv_norm_act(c_in, 256, 1)
        self.aspp = ASPP(256)
        self.bottleneck_channels = 256
        self.skip_channels = [64, 256, 512, 1024]
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = [self.stem(x)]
        x = self.pool(skips[0])
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return self.aspp(self.reduce(skips.pop())), skips


def reference_decoder(num_modalities: int, out_channels: int) -> SkipDecoder:
    """The reference residual decoder (widths 256, 128, 64, 32) for ``ReferenceEncoder`` skips."""
    decoder = SkipDecoder(
        num_modalities,
        256,
        [64, 256, 512, 1024],
        [256, 128, 64, 32],
        out_channels,
        make_skip=lambda c_in, c_out: conv_norm_act(c_in, c_out, 1),
        make_block=BasicBlock,
        final_scale=(1, 2, 2),
    )
    for module in decoder.modules():
        if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
    return decoder
