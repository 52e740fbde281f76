"""DICOM-SEG / SR interchange at clinical size: export (CT series + SEG + SR) and import times, file sizes.

    .venv/bin/python benchmarks/dicom_interchange.py [--slices 200] [--lesions 8] [--seed 0]

A 512 x 512 x N CT on a random oblique-free grid with random spherical lesions (two overlapping),
exported with io.dicom_seg / io.dicom_sr and read back; the masks are checked voxel-equal.
Prints measured seconds and MB (one run; the machine is shared, so treat them as indicative).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=200)
    ap.add_argument("--lesions", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-overlap", action="store_true",
                    help="no two lesions touch (the SEG is then built from one label-map style array)")
    args = ap.parse_args()

    from napari_lesionlocator.core.geometry import Geometry
    from napari_lesionlocator.core.image import Image
    from napari_lesionlocator.core.measurements import measure_mask
    from napari_lesionlocator.core.results import LesionMask, LesionResult
    from napari_lesionlocator.io.dicom_seg import export_dicom_study, read_dicom_seg, write_dicom_seg
    from napari_lesionlocator.io.dicom_sr import read_dicom_sr, write_dicom_sr

    rng = np.random.default_rng(args.seed)
    g = Geometry((args.slices, 512, 512), (1.25, 0.78, 0.78), (-300.0, -200.0, -200.0))
    img = Image(rng.normal(0, 40, g.shape).astype(np.float32).round(), g, "ct")
    lesions = {}
    centres = [rng.uniform([20, 60, 60], [args.slices - 20, 450, 450]) for _ in range(args.lesions)]
    if args.lesions > 1 and not args.no_overlap:
        centres[1] = centres[0] + 5  # two lesions whose own masks overlap
    for k, c in enumerate(centres):
        r = rng.uniform(4, 20)  # mm
        if args.no_overlap:
            r = min(r, min((np.linalg.norm((c - o) * np.asarray(g.spacing)) for o in centres if o is not c),
                           default=r) / 2.2)
        rad = np.ceil(r / np.asarray(g.spacing)).astype(int) + 1
        lo = np.maximum(np.floor(c).astype(int) - rad, 0)
        hi = np.minimum(np.floor(c).astype(int) + rad + 1, g.shape)
        zz, yy, xx = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij")
        d2 = sum(((q - cq) * s) ** 2 for q, cq, s in zip((zz, yy, xx), c, g.spacing, strict=True))
        lesions[k + 1] = LesionResult(k + 1, LesionMask.from_crop(g, lo, d2 < r * r))
    out = Path(tempfile.mkdtemp())
    try:
        t0 = time.perf_counter()
        exp = export_dicom_study([img], [lesions], out, engine="classical")
        t_seg = time.perf_counter() - t0
        t0 = time.perf_counter()
        write_dicom_seg(img, lesions, out / "again_seg.dcm", descriptions=exp.descriptions, source=exp.builds[0].source)
        t_seg_only = time.perf_counter() - t0
        rows = [measure_mask(r.mask.to_full(), g, lesion_id=lid, image=img) for lid, r in lesions.items()]
        t0 = time.perf_counter()
        sr = write_dicom_sr(out / "ct_sr.dcm", exp.builds[0], rows, exp.descriptions)
        t_sr = time.perf_counter() - t0
        t0 = time.perf_counter()
        imp = read_dicom_seg(exp.seg_paths[0])
        t_read = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = read_dicom_sr(sr)
        t_read_sr = time.perf_counter() - t0
        equal = all(np.array_equal(imp.lesions[lid].mask.to_full(), r.mask.to_full()) for lid, r in lesions.items())
        ct_mb = sum(p.stat().st_size for p in exp.ct_folders[0].iterdir()) / 1e6
        print(f"grid {g.shape} (z, y, x), {len(lesions)} lesions, {sum(r.voxels for r in lesions.values())} voxels, "
              f"{len(imp.overlaps)} overlapping pair(s)")
        seg_mb = exp.seg_paths[0].stat().st_size / 1e6
        print(f"export CT series + SEG: {t_seg:.2f} s  (CT {ct_mb:.1f} MB, SEG {seg_mb:.2f} MB, "
              f"{int(exp.builds[0].dataset.NumberOfFrames)} frames)")
        print(f"export SEG only (on the written series): {t_seg_only:.2f} s")
        print(f"export SR (TID 1500):   {t_sr:.2f} s  ({sr.stat().st_size / 1e3:.0f} kB, "
              f"{len(report.lesions)} lesion groups)")
        print(f"import SEG onto the CT: {t_read:.2f} s  (CT series read included); masks voxel-equal: {equal}")
        print(f"import SR:              {t_read_sr:.2f} s")
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return 0 if equal else 1


if __name__ == "__main__":
    raise SystemExit(main())
