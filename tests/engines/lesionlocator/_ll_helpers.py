"""Shared pieces for the LesionLocator segmentation tests (no conftest: imported explicitly).

Checkpoints are generated once per test session into a temporary folder with the tiny plans
(4-stage ResidualEncoderUNet, 32x48x48 patch) and loaded through the same code path as the
downloaded weights.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from napari_lesionlocator.engines.lesionlocator.generate import generate_checkpoint

PATCH = (32, 48, 48)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch thread per test (deterministic timing on a shared 2-core CI); a module that imports
    this fixture gets it for every test."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@functools.cache
def tiny_checkpoint(folds: tuple[int, ...] = (0, 1), mirror: tuple[int, ...] | None = (0, 1, 2)) -> Path:
    """A tiny Seg-only checkpoint (both segmentation parts), generated once per session."""
    tmp = Path(tempfile.mkdtemp(prefix="ll_ckpt_"))
    atexit.register(shutil.rmtree, tmp, True)
    return generate_checkpoint(tmp, tiny=True, seed=0, folds=folds, parts=("bbox", "point"), mirror_axes=mirror)


def copy_checkpoint(tmp_path: Path, **kwargs) -> Path:
    """A private copy of the tiny checkpoint that a test may damage."""
    dst = tmp_path / "LesionLocatorCheckpoint"
    shutil.copytree(tiny_checkpoint(**kwargs), dst)
    return dst


def ct_volume(shape, seed: int = 0, border: int = 0) -> np.ndarray:
    """A CT-like float32 volume (HU): smooth blobs plus noise; ``border`` voxels of exact zeros around it
    (exercises the crop to the non-zero box)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    vol = ndimage.gaussian_filter(rng.normal(0, 1, shape), 2.0) * 3000 + rng.normal(0, 20, shape)
    vol = vol.astype(np.float32)
    vol[vol == 0] = 1.0
    if border:
        vol[:border] = 0
        vol[:, :border] = 0
        vol[:, :, -border:] = 0
    return vol


@functools.cache
def tiny_full_checkpoint() -> Path:
    """A tiny checkpoint with all three parts (segmentation and tracking, registration grid 65^3), one fold."""
    tmp = Path(tempfile.mkdtemp(prefix="ll_full_ckpt_"))
    atexit.register(shutil.rmtree, tmp, True)
    return generate_checkpoint(tmp, tiny=True, seed=0, folds=(0,), parts=("bbox", "point", "track"))


def timepoints(shape=(24, 56, 56), spacing=(1.5, 0.8, 0.8), seed: int = 3):
    """A baseline and two follow-ups of one CT-like field: each follow-up shifted by a few voxels, with its
    own noise and origin (tracking has something to register)."""
    from napari_lesionlocator.core.geometry import Geometry
    from napari_lesionlocator.core.image import Image

    base = ct_volume(shape, seed=seed)
    rng = np.random.default_rng(seed + 1)
    out = [Image(base, Geometry(shape, spacing, (0.0, 0.0, 0.0)), "base")]
    for k, shift in enumerate(((0, 2, 1), (1, 3, 3)), start=1):
        arr = np.roll(base, shift, axis=(0, 1, 2)) + rng.normal(0, 20, shape).astype(np.float32)
        out.append(Image(arr.astype(np.float32), Geometry(shape, spacing, (0.5 * k, -0.3 * k, 0.2 * k)), f"fu{k}"))
    return out
