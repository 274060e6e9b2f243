"""Synthetic T1-weighted volumes of the ADNI cohort: contrast, determinism, atrophy read from the image, NIfTI."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from mckd_lab.data.anatomy import mni_anatomy, phantom_affine
from mckd_lab.data.t1_phantoms import T1_VOLUMES, render_t1, save_t1

SIZE = 32
TEMPLATE = dict.fromkeys(T1_VOLUMES, 1.0)  # every volume as the template's
# the cohort's AD means over its CN means
AD = {"Hippocampus": 5800 / 7300, "Ventricles": 47000 / 33000, "WholeBrain": 980000 / 1030000}


def _mm(size: int = SIZE) -> np.ndarray:
    """(3, S, S, S) MNI millimetres of every voxel."""
    affine = phantom_affine(size)
    return affine[:3, 3, None, None, None] + affine[0, 0] * np.indices((size,) * 3)


def _hippocampal_radius(size: int = SIZE) -> np.ndarray:
    """Normalised radius of the nearer hippocampal ellipsoid, (+-26, -22, -14) mm, semi-axes (7, 18, 7)."""
    x, y, z = _mm(size)
    return np.sqrt(((np.abs(x) - 26) / 7) ** 2 + ((y + 22) / 18) ** 2 + ((z + 14) / 7) ** 2)


def test_the_renderer_does_not_import_the_cohort():
    code = "import sys, mckd_lab.data.t1_phantoms; print('mckd_lab.data.cohort' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_shape_background_and_t1_contrast():
    anatomy = mni_anatomy(SIZE)
    volume = render_t1(TEMPLATE, SIZE, rng=0)
    assert volume.shape == (SIZE,) * 3 and volume.dtype == np.float32
    assert np.all(volume[~anatomy.brain] == 0)
    assert np.all(np.isfinite(volume)) and volume[anatomy.brain].min() > 0
    dominant = anatomy.tissue.argmax(0)
    csf, gm, wm = (volume[anatomy.brain & (dominant == t)].mean() for t in range(3))
    assert wm > gm + 0.15 and gm > csf + 0.1, (csf, gm, wm)
    assert 0.8 < wm < 1.1  # white matter is the unit


def test_same_seed_same_volume_other_seed_differs():
    a, b = render_t1(AD, SIZE, rng=3), render_t1(AD, SIZE, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    c = render_t1(AD, SIZE, rng=4)
    brain = mni_anatomy(SIZE).brain
    assert np.abs(a - c)[brain].mean() > 0.02  # independent noise (sigma 0.03) and bias


def test_csf_like_volume_around_ventricles_grows_with_ventricles():
    anatomy = mni_anatomy(SIZE)
    x, y, z = _mm()
    box = anatomy.brain & (np.abs(x) <= 30) & (y >= -50) & (y <= 25) & (z >= -5) & (z <= 30)
    volumes = [render_t1(dict(TEMPLATE, Ventricles=r), SIZE, rng=0) for r in (1, 2, 3)]
    counts = [int((volume[box] < 0.4).sum()) for volume in volumes]
    assert counts[0] < counts[1] < counts[2], counts
    assert counts[2] >= 1.15 * counts[0], counts


def test_hippocampal_signal_falls_with_hippocampus_and_only_there():
    radius = _hippocampal_radius()
    cn = render_t1(TEMPLATE, SIZE, rng=1)
    ad = render_t1(dict(TEMPLATE, Hippocampus=AD["Hippocampus"]), SIZE, rng=1)
    inside = radius < 1
    assert inside.sum() >= 20
    assert ad[inside].mean() < cn[inside].mean() - 0.02, (ad[inside].mean(), cn[inside].mean())
    far = radius > 1.3  # beyond the soft edge (1.25): the same voxels, the same noise
    np.testing.assert_array_equal(ad[far], cn[far])


def test_whole_brain_atrophy_darkens_the_brain():
    brain = mni_anatomy(SIZE).brain
    cn = render_t1(TEMPLATE, SIZE, rng=2)
    atrophic = render_t1(dict(TEMPLATE, WholeBrain=AD["WholeBrain"]), SIZE, rng=2)
    assert atrophic[brain].mean() < cn[brain].mean() - 0.02


def test_bad_inputs_are_refused():
    with pytest.raises(KeyError, match="Ventricles"):
        render_t1({"Hippocampus": 1.0, "WholeBrain": 1.0}, SIZE)
    with pytest.raises(ValueError, match="Hippocampus"):
        render_t1(dict(TEMPLATE, Hippocampus=float("nan")), SIZE)
    with pytest.raises(ValueError, match="size"):
        render_t1(TEMPLATE, 16)


def test_save_t1_writes_mni_nifti(tmp_path):
    volume = render_t1(AD, SIZE, rng=5)
    path = save_t1(volume, tmp_path / "sub" / "t1.nii.gz")
    assert path == tmp_path / "sub" / "t1.nii.gz" and path.is_file()
    image = nib.load(path)
    np.testing.assert_allclose(image.get_fdata(dtype=np.float32), volume, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(image.affine, phantom_affine(SIZE))
    assert int(image.header["sform_code"]) == 4 and int(image.header["qform_code"]) == 4
