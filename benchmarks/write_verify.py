"""What the write verification costs: one mask and one CT written with and without the read-back.

    python benchmarks/write_verify.py [--shape 300 512 512] [--repeat 3]

Every image the package writes is verified before its rename (``io.images.verify_image_file``:
header read back, the gzip trailer's length of a ``.nii.gz`` checked against the header),
because SimpleITK's NIfTI writer reports no error when the disk is full. This prints the median
time of ``write_label_map`` / ``write_image`` with the check, and of the bare SimpleITK write plus
rename that it replaces, so the overhead is measured, not guessed; then the write-time check alone
(header + gzip trailer) and the full check (everything inflated) that ``--continue_prediction``
uses on files it finds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from napari_lesionlocator.core.geometry import Geometry
from napari_lesionlocator.core.image import Image, LabelMap
from napari_lesionlocator.io.images import to_sitk, verify_image_file, write_image, write_label_map


def _median(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _measure(what, writer, array, geom, tmp: Path, repeat: int):
    out = tmp / "x.nii.gz"
    checked = _median(lambda: writer(out), repeat)

    def bare() -> None:
        t = tmp / ".bare.nii.gz"
        sitk.WriteImage(to_sitk(array, geom), str(t), useCompression=True)
        os.replace(t, tmp / "bare.nii.gz")

    plain = _median(bare, repeat)
    quick = _median(lambda: verify_image_file(out, geom, full=False), repeat)
    verify = _median(lambda: verify_image_file(out, geom), repeat)
    return what, out.stat().st_size, plain, checked, quick, verify


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", nargs=3, type=int, default=[300, 512, 512])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    shape = tuple(args.shape)
    geom = Geometry(shape, (1.0, 0.7, 0.7), (-10.0, 20.0, 30.0))
    zz, yy, xx = np.indices(shape, sparse=True)
    c = np.array(shape) / 2
    mask = (((zz - c[0]) / 30.0) ** 2 + ((yy - c[1]) / 40.0) ** 2 + ((xx - c[2]) / 40.0) ** 2 <= 1).astype(np.uint8)
    rng = np.random.default_rng(0)
    ct = np.round(rng.normal(40, 30, shape)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = [
            _measure("mask (uint8)", lambda p: write_label_map(LabelMap(mask, geom, "m"), p, overwrite=True), mask,
                     geom, tmp, args.repeat),
            _measure("CT (int16)", lambda p: write_image(Image(ct, geom, "ct"), p, overwrite=True),
                     ct.astype(np.int16), geom, tmp, args.repeat),
        ]
    print(f"shape {shape} (z, y, x), .nii.gz, median of {args.repeat}")
    print(f"{'what':<14} {'file MB':>8} {'bare write s':>13} {'atomic+verified s':>18} {'overhead':>9} "
          f"{'write-time check s':>19} {'full check s':>13}")
    for what, size, plain, checked, quick, verify in rows:
        print(f"{what:<14} {size / 1e6:>8.2f} {plain:>13.2f} {checked:>18.2f} {(checked - plain) / plain * 100:>8.0f}% "
              f"{quick:>19.3f} {verify:>13.2f}")


if __name__ == "__main__":
    main()
