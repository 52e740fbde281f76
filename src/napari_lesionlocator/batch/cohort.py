"""Generated cohorts with exact ground truth, for tests and the scaling benchmark.

Each study is a lesion-centred crop of a synthetic longitudinal chest CT: by default a case of
the randomised evaluation family (:func:`..sample.family.make_family_case`, held-out seeds:
lesions pressed against the pleura, mediastinum, vessels or the liver border, random sizes and
contrasts, thick or thin slices, identity/flipped/oblique grids, a lesion that sometimes vanishes
and a new one at the follow-up), or the sample study (:func:`..sample.synthetic.make_synthetic_study`,
three timepoints). Around one baseline lesion a box is cut out of every timepoint, centred on that
lesion's ground truth there (nothing is resampled, so the ground truth stays exact); other lesions
wholly inside the box come along, and a lesion the box cuts through (at any timepoint) is left
unannotated at every timepoint (its voxels stay in the image). The cohort is written in the LesionLocator dataset layout
(``Baseline/``, ``Synthetic_Follow_Up*/``, ``naming.csv``), one case per study, which
``lesionlocator batch`` reads directly.
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


def _touching_faces(labels: LabelMap) -> set[int]:
    """Ids with a voxel on a face of the grid (cut by the crop, or by the scan's field of view)."""
    a = labels.array
    faces = [a[0], a[-1], a[:, 0], a[:, -1], a[:, :, 0], a[:, :, -1]]
    return {int(v) for f in faces for v in np.unique(f) if v}


def _centre(labels: LabelMap, lesion_id: int):
    idx = np.argwhere(labels.array == lesion_id)
    return None if idx.size == 0 else labels.geometry.index_to_world(idx.mean(axis=0))


def _family_studies(seed: int, timepoints: int):
    from ..sample.family import make_family_case

    case = make_family_case(seed)
    for rec in case.lesions:
        centres = [_centre(lab, rec.id) for lab in case.labels[:timepoints]]
        if centres[0] is None:
            continue  # not at baseline (the new lesion) or too small to have a voxel
        centres = [c if c is not None else centres[0] for c in centres]  # vanished: where it was
        yield f"f{seed}l{rec.id}", list(zip(case.images, case.labels, strict=True))[:timepoints], centres


def _sample_studies(seed: int, timepoints: int):
    from ..sample.synthetic import make_synthetic_study

    study = make_synthetic_study(seed=seed, size="small", use_cache=False)
    for rec in study.lesions:
        if not rec.present[0] or any(c is None for c in rec.centre_world[:timepoints]):
            continue
        yield f"s{seed:03d}l{rec.id}", study.pairs[:timepoints], list(rec.centre_world[:timepoints])


DATES = ("2024-01-15", "2024-04-16", "2024-07-18")


def write_cohort(folder: str | os.PathLike, n_studies: int, *, source: str = "family", seed: int | None = None,
                 timepoints: int = 2, half_extent_mm=(32.0, 48.0, 48.0), overwrite: bool = False) -> list[str]:
    """Write ``n_studies`` lesion-centred studies into ``folder`` (dataset layout); returns the case names.

    ``source`` is ``"family"`` (default; seeds from the family's held-out range, baseline + one
    follow-up) or ``"sample"`` (the sample study's seeds, up to 3 timepoints). Studies cycle through
    the baseline lesions of case ``seed``, ``seed + 1``, ...
    """
    from ..io.study_layout import write_study_layout

    if source == "family":
        from ..sample.family import HELD_OUT_SEEDS

        limit, make, s = 2, _family_studies, HELD_OUT_SEEDS.start if seed is None else seed
    elif source == "sample":
        limit, make, s = 3, _sample_studies, 0 if seed is None else seed
    else:
        raise ValueError(f"source must be 'family' or 'sample', got {source!r}")
    if not 1 <= timepoints <= limit:
        raise ValueError(f"a {source} case has {limit} timepoints: keep 1 to {limit}")
    root = Path(folder)
    cases: list[str] = []
    while len(cases) < n_studies:
        for name, pairs, centres in make(s, timepoints):
            if len(cases) == n_studies:
                break
            crops = [crop_around(img, lab, c, half_extent_mm) for (img, lab), c in zip(pairs, centres, strict=True)]
            cut = set().union(*(_touching_faces(lab) for _img, lab in crops))
            for _img, lab in crops:
                lab.array[np.isin(lab.array, sorted(cut))] = 0
            if not crops[0][1].ids:
                continue
            write_study_layout(root, crops, case=name, dates=list(DATES[:timepoints]), overwrite=overwrite)
            cases.append(name)
        s += 1
    return cases
