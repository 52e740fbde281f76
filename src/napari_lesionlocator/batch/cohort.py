"""Generated cohorts with exact ground truth, for tests and the scaling benchmark.

Each study is a lesion-centred crop of a synthetic longitudinal chest CT study
(:func:`..sample.synthetic.make_synthetic_study`): the same world box, centred on one lesion, is
cut out of every timepoint (each in its own pose, spacing and field of view, nothing resampled,
so the ground truth stays exact). Other lesions inside the box come along. The cohort is written
in the LesionLocator dataset layout (``Baseline/``, ``Synthetic_Follow_Up*/``, ``naming.csv``),
one case per study, which ``lesionlocator batch`` reads directly.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..core.image import Image, LabelMap

__all__ = ["crop_around", "write_cohort"]


def crop_around(image: Image, labels: LabelMap, centre_world, half_extent_mm) -> tuple[Image, LabelMap]:
    """The image and label map cut to the voxel box around ``centre_world`` (z, y, x mm) reaching
    ``half_extent_mm`` each way (clipped to the grid); the geometry's origin follows the crop."""
    g = image.geometry
    c = np.rint(g.world_to_index(np.asarray(centre_world, dtype=float))).astype(int)
    h = np.maximum(1, np.rint(np.asarray(half_extent_mm, dtype=float) / np.asarray(g.spacing))).astype(int)
    lo = np.clip(c - h, 0, np.asarray(g.shape) - 1)
    hi = np.clip(c + h, lo + 1, np.asarray(g.shape))
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    geom = g.crop(lo, hi)
    return (image.with_array(np.ascontiguousarray(image.array[sl]), geometry=geom),
            LabelMap(np.ascontiguousarray(labels.array[sl]), geom, name=labels.name))


def write_cohort(folder: str | os.PathLike, n_studies: int, *, seed: int = 0, timepoints: int = 3,
                 half_extent_mm=(40.0, 60.0, 60.0), overwrite: bool = False) -> list[str]:
    """Write ``n_studies`` lesion-centred studies into ``folder`` (dataset layout); returns the case names.

    Studies cycle through the lesions present at baseline of synthetic studies ``seed``,
    ``seed + 1``, ...; ``timepoints`` (2 or 3) keeps the baseline and the first follow-up(s).
    """
    from ..io.study_layout import write_study_layout
    from ..sample.synthetic import make_synthetic_study

    if not 1 <= timepoints <= 3:
        raise ValueError("a synthetic study has 3 timepoints: keep 1 to 3")
    root = Path(folder)
    cases: list[str] = []
    s = seed
    while len(cases) < n_studies:
        study = make_synthetic_study(seed=s, size="small", use_cache=False)
        for rec in study.lesions:
            if len(cases) == n_studies:
                break
            if not rec.present[0] or any(c is None for c in rec.centre_world[:timepoints]):
                continue
            pairs = [crop_around(img, lab, rec.centre_world[k], half_extent_mm)
                     for k, (img, lab) in enumerate(study.pairs[:timepoints])]
            case = f"s{s:03d}l{rec.id}"
            write_study_layout(root, pairs, case=case, overwrite=overwrite)
            cases.append(case)
        s += 1
    return cases
