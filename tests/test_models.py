"""The multi-modal network: shapes, the encode/fill/decode split, the zero-input hazard, parameter counts."""

import pytest
import torch

from mckd_lab.models import ClassificationHead, MultiModalNet, build_segmentation_network

MODS = ("flair", "t1", "t1ce", "t2")


def _volumes(size=16, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, len(MODS), size, size, size, generator=g)


@pytest.mark.parametrize("shared", [True, False])
def test_compact_shapes_and_contract(shared):
    torch.manual_seed(0)
    net = build_segmentation_network(MODS, channels=(4, 8, 16), shared_encoder=shared)
    assert len(net.encoders) == (1 if shared else 4)
    present = torch.tensor([[True, False, True, False], [True, True, True, True]])
    out = net(_volumes(), present)
    assert out.logits.shape == (2, 3, 16, 16, 16)
    assert out.features.shape == out.filled.shape == (2, 4, 16, 2, 2, 2)
    # present entries are unfilled, missing ones are the mean of the present ones
    torch.testing.assert_close(out.filled[0, 0], out.features[0, 0])
    torch.testing.assert_close(out.filled[0, 1], (out.features[0, 0] + out.features[0, 2]) / 2)
    torch.testing.assert_close(out.filled[1], out.features[1])


def test_encode_once_then_decode_any_subset_equals_forward():
    torch.manual_seed(0)
    net = build_segmentation_network(MODS, channels=(4, 8, 16)).eval()
    image = _volumes()
    present = torch.tensor([[False, True, False, True], [True, False, False, False]])
    with torch.no_grad():
        direct = net(image, present)
        enc = net.encode(image).where(present, net.encode_zero(image))
        split = net.decode(enc, present)
    torch.testing.assert_close(split.logits, direct.logits)
    torch.testing.assert_close(split.filled, direct.filled)


@pytest.mark.parametrize("shared", [True, False])
def test_a_blank_input_has_one_encoding_whichever_path_encodes_it(shared):
    """Instance norm on a zero-variance input amplifies rounding ~1/sqrt(eps), and rounding differs with the
    batch size and the CPU's kernels (AVX2 vs AVX-512). So a blank input is never run through the encoder in
    a batch: every path takes the same zero response (batch 1), bit for bit, on any CPU."""
    torch.manual_seed(0)
    net = build_segmentation_network(MODS, channels=(4, 8, 16), shared_encoder=shared).eval()
    image = _volumes(batch=3)
    image[1, 3] = 0  # t2 blank in sample 1, t1 blank in sample 2
    image[2, 1] = 0
    with torch.no_grad():
        zero = net.encode_zero(image)
        plain = net.encode(image)
        present = net.encode(image, torch.ones(3, 4, dtype=torch.bool))
    for enc in (plain, present):
        assert torch.equal(enc.bottleneck[1, 3], zero.bottleneck[0, 3])
        assert torch.equal(enc.bottleneck[2, 1], zero.bottleneck[0, 1])
        for skip, z in zip(enc.skips, zero.skips, strict=True):
            assert torch.equal(skip[1, 3], z[0, 3]) and torch.equal(skip[2, 1], z[0, 1])
    assert not torch.equal(plain.bottleneck[0, 3], zero.bottleneck[0, 3])  # a real input is encoded


def test_missing_input_is_zeroed_inside_the_model():
    torch.manual_seed(0)
    net = build_segmentation_network(MODS, channels=(4, 8, 16)).eval()
    image, noisy = _volumes(), _volumes()
    noisy[:, 1] = 100.0  # garbage in a missing modality's slot must not matter
    present = torch.tensor([[True, False, True, True]] * 2)
    with torch.no_grad():
        noisy[:, 0], noisy[:, 2], noisy[:, 3] = image[:, 0], image[:, 2], image[:, 3]
        torch.testing.assert_close(net(noisy, present).logits, net(image, present).logits)


@pytest.mark.parametrize(
    "backbone,size", [("compact", 16), pytest.param("reference", 32, marks=pytest.mark.slow)]
)
def test_finite_gradients_with_missing_modalities_at_step_zero(backbone, size):
    """METHOD.md's known hazard: zero inputs make instance norms see zero variance; the reference network's
    first step with a modality missing gives NaN gradients. Ours must stay finite from random weights."""
    torch.manual_seed(0)
    net = build_segmentation_network(MODS, backbone=backbone, channels=(4, 8, 16))
    present = torch.tensor([[True, False, False, True], [False, False, True, False]])
    out = net(_volumes(size), present)
    loss = out.logits.sigmoid().mean() + out.features.abs().mean()
    loss.backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert len(grads) > 0.9 * len(list(net.parameters()))
    assert all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_reference_parameter_count_matches_the_authors_network():
    net = build_segmentation_network(MODS, backbone="reference")
    encoder = sum(p.numel() for p in net.encoders.parameters())
    decoder = sum(p.numel() for p in net.head.parameters())
    # METHOD.md: encoder 35,127,872, decoder 8,528,800; +4 importance weights = 43,656,676 (theirs)
    assert (encoder, decoder) == (35_127_872, 8_528_800)
    assert encoder + decoder + len(MODS) == 43_656_676


def test_tabular_encoders_with_a_classification_head():
    """ADNI-style: one encoder per modality (different input widths, common width C) + a pooled head."""
    widths, c = (5, 3), 8

    class Tabular(torch.nn.Module):
        def __init__(self, f):
            super().__init__()
            self.lin = torch.nn.Linear(f, c)

        def forward(self, x):
            return self.lin(x), []

    net = MultiModalNet([Tabular(f) for f in widths], ClassificationHead(2 * c, 3), ("a", "b"))
    image = {"a": torch.randn(4, 5), "b": torch.randn(4, 3)}
    present = torch.tensor([[True, True], [True, False], [False, True], [True, True]])
    out = net(image, present)
    assert out.logits.shape == (4, 3) and out.features.shape == (4, 2, c)
    torch.testing.assert_close(out.filled[1, 1], out.features[1, 0])


def test_patch_upsample_without_autograd_equals_the_transposed_convolution():
    """The decoder's upsampling takes a matrix-product path when no gradient is wanted; it computes the same
    single dot product per output voxel, so it equals the convolution (and the gradient path is the
    convolution itself)."""
    from mckd_lab.models.blocks import PatchUpsample3d

    torch.manual_seed(0)
    for bias in (False, True):
        up = PatchUpsample3d(6, 5, kernel_size=2, stride=2, bias=bias)
        x = torch.randn(3, 6, 3, 4, 5)
        reference = torch.nn.functional.conv_transpose3d(x, up.weight, up.bias, stride=2)
        with torch.no_grad():
            torch.testing.assert_close(up(x), reference, rtol=1e-6, atol=1e-6)
        y = up(x.requires_grad_())
        assert y.grad_fn is not None and "Convolution" in type(y.grad_fn).__name__
        torch.testing.assert_close(y.detach(), reference.detach(), rtol=1e-6, atol=1e-6)
    plain = torch.nn.ConvTranspose3d(6, 5, kernel_size=2, stride=2, bias=False)
    assert set(plain.state_dict()) == set(
        PatchUpsample3d(6, 5, kernel_size=2, stride=2, bias=False).state_dict()
    )


def test_encoded_subsets_equal_repeat_then_where():
    torch.manual_seed(0)
    net = build_segmentation_network(MODS, channels=(4, 8)).eval()
    with torch.no_grad():
        enc, zero = net.encode(_volumes(batch=2)), net.encode_zero(_volumes(batch=1))
    rows = torch.tensor([[True, False, True, False], [False] * 4, [True] * 4])
    got = enc.subsets(rows, zero)
    k, b = rows.shape[0], 2
    keep = rows.repeat_interleave(b, 0)
    repeated = type(enc)(
        enc.bottleneck.repeat(k, 1, 1, 1, 1, 1), [s.repeat(k, 1, 1, 1, 1, 1) for s in enc.skips]
    )
    expected = repeated.where(keep, zero)
    assert torch.equal(got.bottleneck, expected.bottleneck)
    assert all(torch.equal(a, e) for a, e in zip(got.skips, expected.skips, strict=True))
