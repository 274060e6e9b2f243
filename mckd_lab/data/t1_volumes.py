"""T1-weighted volumes of ADNI subjects (task ``adni-t1``): a NIfTI file -> a normalised cube for the encoder.

The card (``data_cards/adni.md``, ``t1_image``) expects skull-stripped volumes affinely registered to MNI152.
Each is reoriented to RAS (``nibabel.as_closest_canonical``), padded with zeros to a cube (centred, so the
aspect ratio is kept), resized to ``size`` voxels a side with MONAI's ``Resize`` (trilinear, anti-aliased when
shrinking) and z-scored over its brain (non-zero) voxels like a BraTS sequence (``normalise_intensity``:
upper 99.5th percentile clipped, background 0).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.transforms import Resize, SpatialPad

from mckd_lab.data.brats import normalise_intensity


class T1Error(ValueError):
    """A T1 file that cannot be used (the message names the file and what to do)."""


def read_t1(path: str | Path, size: int) -> np.ndarray:
    """float32 (1, size, size, size): the volume at ``path`` reoriented, padded, resized and normalised."""
    path = Path(path)
    if not path.is_file():
        raise T1Error(f"{path}: no such file")
    try:
        img = nib.as_closest_canonical(nib.load(path, mmap=False))
        data = np.asanyarray(img.dataobj).astype(np.float32)
    except Exception as err:  # nibabel raises many types for broken files
        raise T1Error(f"{path}: cannot read this NIfTI ({type(err).__name__}: {err})") from err
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise T1Error(f"{path}: expected a 3-D volume, found shape {data.shape}")
    if not np.isfinite(data).all():
        raise T1Error(f"{path}: {int((~np.isfinite(data)).sum())} voxels are NaN or infinite")
    if not data.any():
        raise T1Error(f"{path}: the volume is all zeros (an empty or failed skull-strip?)")
    cube = SpatialPad((max(data.shape),) * 3)(torch.from_numpy(data)[None])
    resized = Resize((size,) * 3, mode="trilinear", anti_aliasing=True)(cube)
    volume = torch.as_tensor(resized).numpy()
    volume[volume < 1e-3 * float(data.max())] = 0.0  # interpolation leaves a faint halo outside the brain
    return normalise_intensity(volume)
