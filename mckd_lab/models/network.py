"""The multi-modal network: encode each modality, fill missing bottlenecks, decode the concatenation.

METHOD.md "Forward pass": (1) a missing modality's input is zeroed; (2) every modality is encoded (missing
ones as zeros); (3) each missing bottleneck is replaced by the mean of the present ones, per sample (skips
are not filled: a missing modality's skips stay the encoder's response to zeros); (4) the M bottlenecks are
concatenated along channels, the skips per level, and decoded (segmentation: 3 sigmoid channels ET, WT, TC;
classification: a head over the pooled bottlenecks).

Inputs: ``image`` (B, M, D, H, W) volumes (one 1-channel volume per modality), or a dict {modality: (B, F_m)}
for tabular groups (then one encoder per modality, each ending in the same width C). ``present`` (B, M) bool.

The known hazard (METHOD.md): a zero input gives zero-variance instance norms whose backward scales gradients
by ~1/sqrt(eps), which explodes to NaN in the reference network. ``encode(image, present)`` therefore runs the
encoder only on present, non-blank inputs; a missing (or all-zero) input gets the encoder's fixed zero-input
response, computed once per call without autograd. No gradient ever flows through a zero input, training with
modalities missing from the first step stays finite for every backbone, and the encoder's cost falls with the
number of missing modalities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mckd_lab.method.kd import fill_missing

Image = torch.Tensor | dict[str, torch.Tensor]


def _per_modality(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, M) -> (B, M, 1, ..., 1) broadcastable against (B, M, ...)."""
    return mask.view(*mask.shape, *([1] * (like.dim() - 2)))


@dataclass
class Encoded:
    """Per-modality encoder outputs: bottleneck (B, M, C, *s); skips shallow to deep, (B, M, C_l, *s_l)."""

    bottleneck: torch.Tensor
    skips: list[torch.Tensor]

    def where(self, present: torch.Tensor, other: Encoded) -> Encoded:
        """Entries of ``self`` where ``present`` (B, M) is True, else those of ``other`` (batch B or 1).

        ``model.encode(full).where(present, model.encode_zero(full))`` encodes a subset without re-encoding.
        """

        def pick(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return torch.where(_per_modality(present.bool(), a), a, b)

        return Encoded(
            pick(self.bottleneck, other.bottleneck),
            [pick(a, b) for a, b in zip(self.skips, other.skips, strict=True)],
        )

    def subsets(self, rows: torch.Tensor, other: Encoded) -> Encoded:
        """k subsets of every sample at once: entries of ``self`` (batch B) where ``rows`` (k, M) is True,
        else those of ``other`` (batch 1, e.g. the zero response); batch k * B, subset-major.

        Equals ``self`` repeated k times ``.where(rows.repeat_interleave(B, 0), other)``, written in one pass
        (no repeated copy of ``self`` first).
        """
        k, m = rows.shape

        def pick(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            mask = rows.bool().to(a.device).view(k, 1, m, *([1] * (a.dim() - 2)))
            return torch.where(mask, a.unsqueeze(0), b.unsqueeze(0)).flatten(0, 1)

        return Encoded(
            pick(self.bottleneck, other.bottleneck),
            [pick(a, b) for a, b in zip(self.skips, other.skips, strict=True)],
        )


@dataclass
class ModelOutput:
    """logits (B, 3, D, H, W) or (B, K); features (B, M, C, *s) bottlenecks before filling; filled: after."""

    logits: torch.Tensor
    features: torch.Tensor
    filled: torch.Tensor


class MultiModalNet(nn.Module):
    """Shared (one encoder for all image modalities, the reference) or separate encoders + a fusion head.

    Args:
        encoders: one module (shared) or M modules, each ``x (N, C_in, ...) -> (bottleneck, skips)``.
        head: ``(bottleneck (B, M*C, *s), skips [(B, M*C_l, *s_l)]) -> logits``.
        modalities: the M modality names, card order.
    """

    def __init__(self, encoders: Sequence[nn.Module], head: nn.Module, modalities: Sequence[str]):
        super().__init__()
        self.modalities = tuple(modalities)
        if len(encoders) not in (1, len(self.modalities)):
            raise ValueError(
                f"give 1 shared encoder or one per modality ({len(self.modalities)}), got {len(encoders)}"
            )
        self.encoders = nn.ModuleList(encoders)
        self.head = head

    @property
    def shared(self) -> bool:
        return len(self.encoders) == 1

    @property
    def output_stride(self) -> int:
        """Each spatial side of a volume input must be a multiple of this (the encoders' ``stride``)."""
        return self.encoders[0].stride

    def _run_encoders(self, image: Image, keep: torch.Tensor) -> Encoded:
        """Encode (B, M) inputs; where ``keep`` (B, M) is False the encoder is not run on the input: the entry
        is its zero-input response (``zero_response``)."""
        b, m = _batch_size(image), len(self.modalities)
        keep = keep.bool().cpu()
        if isinstance(image, dict):
            if self.shared and m > 1:
                raise ValueError(
                    "tabular inputs (a dict per modality) need one encoder per modality, not a shared one"
                )
            inputs = [image[name] for name in self.modalities]
        elif self.shared:
            bottleneck, skips = _encode_rows(
                self.encoders[0], image.reshape(b * m, 1, *image.shape[2:]), keep.view(-1)
            )
            return Encoded(
                bottleneck.view(b, m, *bottleneck.shape[1:]), [t.view(b, m, *t.shape[1:]) for t in skips]
            )
        else:
            inputs = [image[:, i : i + 1] for i in range(m)]
        encoders = list(self.encoders) * (m if self.shared else 1)
        outs = [
            _encode_rows(enc, x, keep[:, i]) for i, (enc, x) in enumerate(zip(encoders, inputs, strict=True))
        ]
        return Encoded(
            torch.stack([o[0] for o in outs], 1),
            [torch.stack(level, 1) for level in zip(*(o[1] for o in outs), strict=True)],
        )

    def encode(self, image: Image, present: torch.Tensor | None = None) -> Encoded:
        """Encode every modality as given; (B, M) -> Encoded.

        Blank (all-zero) inputs, and with ``present`` (B, M) missing ones, are not run through the encoder:
        their entries are the encoder's zero-input response (``zero_response``), without gradient (see the
        module docstring: the zero-variance hazard). So a blank input has one value whichever path encodes
        it (this call, ``encode_zero``, a subset decoded from an encode-once pass): instance norm on a
        zero-variance input amplifies rounding ~1/sqrt(eps), and rounding differs with the batch size and the
        CPU's kernels, so the response is always computed the same way, on a batch of one zero input.
        """
        keep = ~self.blank(image)
        return self._run_encoders(image, keep if present is None else keep & present.bool())

    def encode_zero(self, like: Image) -> Encoded:
        """The encoder's response to all-zero inputs, shaped like ``encode(like)`` (``zero_response``)."""
        return self._run_encoders(
            like, torch.zeros(_batch_size(like), len(self.modalities), dtype=torch.bool)
        )

    def decode(
        self, enc: Encoded, present: torch.Tensor, scale: torch.Tensor | None = None, fill: bool = True
    ) -> ModelOutput:
        """Fill the missing bottlenecks (mean of the present ones, per sample) and decode.

        ``scale`` (M,), optional: multiply each modality's bottleneck by it (the meta step's w_m).
        ``fill=False``: decode the raw encoder bottlenecks (a missing one stays the zero response), as the
        reference's meta step does.
        """
        filled = fill_missing(enc.bottleneck, present) if fill else enc.bottleneck
        fused = filled if scale is None else filled * scale.view(1, -1, *([1] * (filled.dim() - 2)))
        logits = self.head(fused.flatten(1, 2), [s.flatten(1, 2) for s in enc.skips])
        return ModelOutput(logits=logits, features=enc.bottleneck, filled=filled)

    def forward(self, image: Image, present: torch.Tensor) -> ModelOutput:
        """Zero the missing inputs, encode, fill, decode. image (B, M, D, H, W) or dict; present (B, M)."""
        return self.decode(self.encode(self.zero_missing(image, present), present), present)

    def zero_missing(self, image: Image, present: torch.Tensor) -> Image:
        """Set each missing modality's input to zero (METHOD.md step 1)."""
        if isinstance(image, dict):
            return {
                k: v * present[:, i].view(-1, *([1] * (v.dim() - 1))).to(v.dtype)
                for i, (k, v) in enumerate(image.items())
            }
        return image * _per_modality(present, image).to(image.dtype)

    def blank(self, image: Image) -> torch.Tensor:
        """(B, M) bool: True where a modality's input is all zeros (missing, or an empty crop)."""
        if isinstance(image, dict):
            return torch.stack([image[k].flatten(1).abs().amax(1) == 0 for k in self.modalities], 1)
        return image.flatten(2).abs().amax(2) == 0


def _batch_size(image: Image) -> int:
    return next(iter(image.values())).shape[0] if isinstance(image, dict) else image.shape[0]


def zero_response(encoder: nn.Module, like: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``encoder``'s response to one all-zero input shaped like a row of ``like`` (N, ...), without autograd:
    (bottleneck (1, ...), skips [(1, ...)]). The one place a zero input meets the encoder."""
    with torch.no_grad():
        return encoder(torch.zeros_like(like[:1]))


def _encode_rows(
    encoder: nn.Module, x: torch.Tensor, keep: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``encoder`` on the rows of x (N, ...) where ``keep`` (N,) is True; the other rows get the response to a
    zero row, computed once under ``no_grad``. Returns (bottleneck (N, ...), skips [(N, ...)])."""
    if bool(keep.all()):
        return encoder(x)
    zero_b, zero_s = zero_response(encoder, x)
    n = x.shape[0]
    if not bool(keep.any()):
        return zero_b.expand(n, *zero_b.shape[1:]), [z.expand(n, *z.shape[1:]) for z in zero_s]
    rows = keep.nonzero().squeeze(1).to(x.device)
    part_b, part_s = encoder(x[rows])

    def scatter(zero: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
        return zero.expand(n, *zero.shape[1:]).to(part.dtype).clone().index_put_((rows,), part)

    return scatter(zero_b, part_b), [scatter(z, p) for z, p in zip(zero_s, part_s, strict=True)]


def build_segmentation_network(
    modalities: Sequence[str],
    backbone: str = "compact",
    channels: Sequence[int] = (16, 32, 64),
    shared_encoder: bool = True,
    out_channels: int = 3,
) -> MultiModalNet:
    """A segmentation network for 1-channel volumes per modality.

    backbone: ``compact`` (MONAI blocks, widths ``channels``) or ``reference`` (ResNet-50 + ASPP, METHOD.md;
    ``channels`` unused). shared_encoder: one encoder for every modality (the reference) or one each.
    """
    from mckd_lab.models.compact import CompactEncoder, compact_decoder
    from mckd_lab.models.reference import ReferenceEncoder, reference_decoder

    m = len(modalities)
    if backbone == "compact":
        encoders = [CompactEncoder(1, channels) for _ in range(1 if shared_encoder else m)]
        head = compact_decoder(m, encoders[0], out_channels)
    elif backbone == "reference":
        encoders = [ReferenceEncoder(1) for _ in range(1 if shared_encoder else m)]
        head = reference_decoder(m, out_channels)
    else:
        raise ValueError(f"unknown backbone {backbone!r}; choose 'compact' or 'reference'")
    return MultiModalNet(encoders, head, modalities)
