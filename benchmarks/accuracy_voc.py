"""The classical engine on the real Lung-PET-CT-Dx series, prompted by the collection's own VOC boxes.

Run::

    .venv/bin/python benchmarks/accuracy_voc.py

Data: patient Lung_Dx-A0002 of TCIA's Lung-PET-CT-Dx (DOI 10.7937/TCIA.2020.NNC20461), two
reconstructions of one chest CT (B40f soft-tissue and B70f sharp lung kernel, 0.65 x 0.65 x 8 mm),
with the collection's PASCAL VOC XML boxes, one per annotated slice (``../shared/data/real/
lung_pet_ct_dx/SOURCE.md``). The XML boxes become one 3D box prompt through
:func:`napari_lesionlocator.io.voc.voc_box_prompts`, exactly as ``lesionlocator segment`` and the
napari reader do; the *point* row clicks the voxel at the 3D box centre.

There is no voxel ground truth for this mass, only the annotator's box on each slice, so the mask
is scored against those boxes: per annotated slice, the IoU of the mask's in-plane bounding box
with the annotated box (mean and minimum), the share of annotated slices the mask covers, and the
mask slices outside the annotated range. The engine's status and its messages are printed beside.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from napari_lesionlocator.core.prompts import PointPrompt
from napari_lesionlocator.engines.base import EngineSettings
from napari_lesionlocator.engines.classical import ClassicalEngine
from napari_lesionlocator.io.dicom import read_dicom_folder
from napari_lesionlocator.io.voc import voc_box_prompts

SHARED = Path(os.environ.get("LESIONLOCATOR_SHARED") or Path(__file__).resolve().parents[2] / "shared")
BASE = SHARED / "data" / "real" / "lung_pet_ct_dx"
STUDY = "Lung-PET-CT-Dx/Lung_Dx-A0002/04-25-2007-NA-ThoraxAThoraxRoutine Adult-34834"
SERIES = {"B40f": "3.000000-ThoraxRoutine  8.0.0  B40f-10983", "B70f": "2.000000-ThoraxRoutine  8.0.0  B70f-62919"}


def box_iou_2d(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """IoU of two in-plane boxes ``(row0, row1, col0, col1)``, max exclusive."""
    r0, r1 = max(a[0], b[0]), min(a[1], b[1])
    c0, c1 = max(a[2], b[2]), min(a[3], b[3])
    inter = max(0, r1 - r0) * max(0, c1 - c0)
    area = (a[1] - a[0]) * (a[3] - a[2]) + (b[1] - b[0]) * (b[3] - b[2]) - inter
    return inter / area if area else 0.0


def score_against_slices(mask: np.ndarray, slices) -> dict[str, float]:
    """Per annotated slice: the mask's in-plane bounding box against the annotated one."""
    ious, covered = [], 0
    annotated = set()
    for k, vb, _path in slices:
        annotated.add(k)
        ann = (vb.ymin, vb.ymax + 1, vb.xmin, vb.xmax + 1)
        sl = mask[k]
        if not sl.any():
            ious.append(0.0)
            continue
        covered += 1
        rows, cols = np.nonzero(sl)
        ious.append(box_iou_2d((rows.min(), rows.max() + 1, cols.min(), cols.max() + 1), ann))
    mask_slices = {int(k) for k in np.nonzero(mask.any(axis=(1, 2)))[0]}
    return {"mean IoU": float(np.mean(ious)) if ious else float("nan"),
            "min IoU": float(np.min(ious)) if ious else float("nan"),
            "covered": covered / max(1, len(annotated)),
            "extra slices": float(len(mask_slices - annotated))}


def run(engine) -> list[tuple[str, dict]]:
    rows = []
    for kernel, series in SERIES.items():
        (image,) = read_dicom_folder(BASE / STUDY / series)
        voc = voc_box_prompts(BASE / "Annotation" / "A0002", image)
        for les in voc.lesions:
            box = les.prompt
            b = box.box
            centre = tuple((b[2 * a] + b[2 * a + 1] - 1) // 2 for a in range(3))
            for kind, prompt in (("box", box), ("point", PointPrompt(box.lesion_id, centre))):
                t0 = time.perf_counter()
                res = engine.segment(image, [prompt])
                secs = time.perf_counter() - t0
                r = res.lesions.get(box.lesion_id)
                mask = r.mask.to_full() if r is not None else res.labels.array == box.lesion_id
                row = score_against_slices(mask, les.slices)
                row["mL"] = float(mask.sum() * image.geometry.voxel_volume_mm3 / 1000.0)
                row["s"] = secs
                row["status"] = r.status if r is not None else "-"
                rows.append((f"{kernel} lesion {box.lesion_id} ({les.name}), {kind}", row))
                msgs = "; ".join(r.messages) if r is not None and r.messages else ""
                print(f"  {kernel} {kind}: status {row['status']}{' (' + msgs + ')' if msgs else ''}")
                sys.stdout.flush()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    if not BASE.exists():
        print(f"skipped: {BASE} not found")
        return 0
    rows = run(ClassicalEngine(EngineSettings(threads=args.threads)))
    cols = ["mean IoU", "min IoU", "covered", "extra slices", "mL", "s", "status"]
    print("\n## Lung-PET-CT-Dx A0002: mask against the annotated per-slice boxes\n")
    print("| prompt | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, row in rows:
        cells = [f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c]) for c in cols]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
