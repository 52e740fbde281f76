"""Accuracy of the classical engine: Dice per lesion for point, centroid and box prompts and for tracking.

Run::

    .venv/bin/python benchmarks/accuracy.py                  # family + sample study (seed 0) + real cases
    .venv/bin/python benchmarks/accuracy.py --family 20 --held-out 20 --no-synthetic --no-real
    .venv/bin/python benchmarks/accuracy.py --seeds 0 1 2 --rotate   # sample study, also oblique grids
    .venv/bin/python benchmarks/accuracy.py --no-real / --no-synthetic / --family 0

Family (:mod:`napari_lesionlocator.sample.family`): the sample's lesion kinds placed at random by a
seed (pleura, mediastinum, vessels, organ borders; sizes, contrasts, grids). ``--family N`` scores
the first N tuning seeds, ``--held-out N`` the first N seeds of the held-out range (never looked
at while tuning; reported separately). Per mask the engine's status is recorded: a mask with
Dice < 0.5 must be flagged (``check``/``empty``/``lost``), and at most 15 % of masks with
Dice >= 0.8 may be. New-lesion candidates at the follow-up are scored for sensitivity (the
case's new lesion among the top three) and false candidates per scan.

Prompts come from the ground truth: *box* = the lesion's bounding box; *point* = the lesion voxel
nearest its centroid (always inside the lesion); *centroid* = the plain rounded centroid (may
fall outside a non-convex lesion, as a careless click would).

Synthetic: :func:`make_synthetic_study` (3 timepoints, exact ground truth). Segmentation is
measured on the baseline; tracking from each timepoint's ground truth to the next one
(single step) and autoregressively over the series, as ``api.iter_track_series`` runs it.

Real: the IBSI soft-tissue-sarcoma CT crops and the pyradiomics lung CTs in
``/work/shared/data/real`` (one labelled lesion each). Each is also resampled onto an oblique,
anisotropic grid (generality check, same lesion). For tracking, a follow-up is made by a known
rigid motion plus a smooth B-spline deformation onto a different grid (size, spacing, origin,
direction); the label goes through the same transform.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from napari_lesionlocator.api import iter_track_series, run_sync
from napari_lesionlocator.core.geometry import Geometry
from napari_lesionlocator.core.image import Image, LabelMap
from napari_lesionlocator.core.measurements import dice
from napari_lesionlocator.core.prompts import BoxPrompt, PointPrompt
from napari_lesionlocator.engines.base import EngineSettings
from napari_lesionlocator.engines.classical import ClassicalEngine
from napari_lesionlocator.engines.classical.register import to_sitk

REAL = Path(os.environ.get("LESIONLOCATOR_SHARED") or Path(__file__).resolve().parents[2] / "shared") / "data" / "real"


# ---------------------------------------------------------------- helpers
def gt_prompts(mask: np.ndarray, lesion_id: int) -> dict[str, object]:
    idx = np.argwhere(mask)
    c = idx.mean(axis=0)
    inside = idx[np.argmin(((idx - c) ** 2).sum(axis=1))]
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    return {
        "point": PointPrompt(lesion_id, tuple(int(v) for v in inside)),
        "centroid": PointPrompt(lesion_id, tuple(int(v) for v in np.round(c))),
        "box": BoxPrompt(lesion_id, (lo[0], hi[0], lo[1], hi[1], lo[2], hi[2])),
    }


def seg_row(engine, image: Image, gt: np.ndarray, lesion_id: int) -> dict[str, float]:
    row = {}
    for kind, prompt in gt_prompts(gt, lesion_id).items():
        t0 = time.perf_counter()
        res = engine.segment(image, [prompt])
        row[kind] = dice(res.labels.array == lesion_id, gt)
        row[f"{kind}_s"] = time.perf_counter() - t0
        row[f"{kind} status"] = _status(res, lesion_id)[0]
    return row


def print_table(title: str, rows: list[tuple[str, dict]], cols: list[str]) -> None:
    print(f"\n## {title}\n")
    print("| lesion | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, row in rows:
        cells = []
        for c in cols:
            v = row.get(c)
            cells.append("-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v)))
        print(f"| {name} | " + " | ".join(cells) + " |")
    means = []
    for c in cols:
        vals = [r[c] for _, r in rows if isinstance(r.get(c), float)]
        means.append(f"**{np.mean(vals):.3f}**" if vals else "-")
    print("| **mean** | " + " | ".join(means) + " |")
    sys.stdout.flush()


# ---------------------------------------------------------------- synthetic
def synthetic(engine, seed: int, rotate: bool) -> dict[str, float]:
    from napari_lesionlocator.sample.synthetic import make_synthetic_study

    study = make_synthetic_study(seed=seed, size="small", rotate_grid=rotate)
    tag = f"synthetic seed {seed}{' oblique grid' if rotate else ''}"
    image, labels = study.images[0], study.labels[0]
    rows = []
    for rec in study.lesions:
        gt = labels.array == rec.id
        if not gt.any():
            continue
        rows.append((f"{rec.id} {rec.kind} ({rec.diameter_mm:.0f} mm)", seg_row(engine, image, gt, rec.id)))
    print_table(f"{tag}: segmentation on the baseline (Dice)", rows, ["point", "centroid", "box"])

    trows: dict[int, dict] = {}
    for k in range(len(study.images) - 1):
        res = engine.track(study.images[k], study.labels[k], study.images[k + 1])
        for lid in study.labels[k].ids:
            truth = study.labels[k + 1].array == lid
            row = trows.setdefault(lid, {})
            if truth.any():
                row[f"tp{k}->tp{k + 1}"] = dice(res.labels.array == lid, truth)
            else:
                row[f"tp{k}->tp{k + 1}"] = "lost: ok" if lid in res.lost_ids else "FALSE MASK"
    series = run_sync(iter_track_series(engine, study.images[0], study.labels[0], study.images[1:]))
    for k, res in enumerate(series.results, start=1):
        for lid in study.labels[0].ids:
            truth = study.labels[k].array == lid
            row = trows.setdefault(lid, {})
            if truth.any():
                row[f"series tp{k}"] = dice(res.labels.array == lid, truth)
            else:
                row[f"series tp{k}"] = "lost: ok" if lid in res.lost_ids else "FALSE MASK"
    print_table(
        f"{tag}: tracking (Dice; GT of the earlier scan -> next scan, and autoregressive series)",
        [(str(lid), r) for lid, r in sorted(trows.items())],
        ["tp0->tp1", "tp1->tp2", "series tp1", "series tp2"],
    )
    seg_means = {c: float(np.mean([r[c] for _, r in rows])) for c in ("point", "centroid", "box")}
    tvals = [v for r in trows.values() for key, v in r.items() if isinstance(v, float) and "->" in key]
    seg_means["tracking"] = float(np.mean(tvals)) if tvals else float("nan")
    return seg_means


# ---------------------------------------------------------------- family
def _status(result, lid: int) -> tuple[str, list[str]]:
    r = getattr(result, "lesions", {}).get(lid)
    if r is None:
        if lid in getattr(result, "lost_ids", []):
            return "lost", []
        if lid in getattr(result, "empty_ids", []):
            return "empty", []
        return "ok", []
    return r.status, list(r.messages)


def _quality(result, lid: int) -> dict:
    r = getattr(result, "lesions", {}).get(lid)
    return dict(r.provenance.get("quality", {})) if r is not None else {}


def _lesion_mask(result, lid: int) -> np.ndarray:
    r = getattr(result, "lesions", {}).get(lid)
    return r.mask.to_full() if r is not None else result.labels.array == lid


def _candidate_hit(cand: dict, truth: np.ndarray, geo: Geometry) -> bool:
    """A candidate finds a lesion when its box holds the lesion's centroid or its centroid lies in the lesion."""
    idx = np.argwhere(truth)
    c = idx.mean(axis=0)
    b = cand["box"]
    if all(b[2 * a] <= c[a] < b[2 * a + 1] for a in range(3)):
        return True
    ci = np.round(geo.world_to_index(np.asarray(cand["centroid_mm"], float))).astype(int)
    return bool(np.all(ci >= 0) and np.all(ci < truth.shape) and truth[tuple(ci)])


def family_case(engine, seed: int, records: list[dict], cand_records: list[dict], verbose: bool = True,
                tasks: tuple[str, ...] = ("segment", "track")) -> None:
    """Score one family case; appends one record per mask (and one per case for candidates).

    ``tasks`` picks what is scored: ``segment`` (point, click and box prompts on the baseline) and/or
    ``track`` (baseline ground truth tracked to the follow-up, with the new-lesion candidates).
    """
    from napari_lesionlocator.core.results import LesionMask
    from napari_lesionlocator.sample.family import make_family_case

    t0 = time.perf_counter()
    case = make_family_case(seed)
    render_s = time.perf_counter() - t0
    image, labels = case.images[0], case.labels[0]
    rng = np.random.default_rng([seed, 5])
    for rec in case.lesions if "segment" in tasks else ():
        gt = labels.array == rec.id
        if not gt.any():
            continue
        prompts = gt_prompts(gt, rec.id)
        # An off-centre click: a random voxel of the lesion's inner half (depth), as a user might click.
        from scipy import ndimage

        depth = ndimage.distance_transform_edt(gt, sampling=image.geometry.spacing)
        inner = np.argwhere(depth >= 0.5 * depth.max())
        prompts["click"] = PointPrompt(rec.id, tuple(int(v) for v in inner[rng.integers(len(inner))]))
        for kind in ("point", "click", "box"):
            t1 = time.perf_counter()
            res = engine.segment(image, [prompts[kind]])
            status, msgs = _status(res, rec.id)
            d = dice(_lesion_mask(res, rec.id), gt)
            records.append({"seed": seed, "grid": case.grid, "id": rec.id, "kind": rec.kind, "prompt": kind,
                            "dice": d, "status": status, "messages": msgs, "s": time.perf_counter() - t1,
                            "diameter": rec.diameter_mm, "contrast": rec.contrast_hu,
                            "quality": _quality(res, rec.id)})
    if "track" not in tasks:
        if verbose:
            _print_case(records, seed, case.grid, render_s, None, None, None)
        return
    masks = {r.id: LesionMask.from_full(labels.geometry, labels.array == r.id) for r in case.lesions
             if r.scales[0] > 0}
    t1 = time.perf_counter()
    res = engine.track(image, masks, case.images[1])
    track_s = time.perf_counter() - t1
    for rec in case.lesions:
        if rec.scales[0] == 0:
            continue
        truth = case.labels[1].array == rec.id
        status, msgs = _status(res, rec.id)
        pred = _lesion_mask(res, rec.id)
        if truth.any():
            d = dice(pred, truth)
        else:  # vanished: right when reported lost (or empty) with no mask
            d = 1.0 if (status in ("lost", "empty") and not pred.any()) else 0.0
        records.append({"seed": seed, "grid": case.grid, "id": rec.id, "kind": rec.kind, "prompt": "tracking",
                        "dice": d, "status": status, "messages": msgs, "s": track_s / max(1, len(masks)),
                        "diameter": rec.diameter_mm, "contrast": rec.contrast_hu, "vanished": not truth.any()})
    cands = list(getattr(res, "new_candidates", []) or [])
    geo1 = case.images[1].geometry
    new_truth = [case.labels[1].array == i for i in case.new_ids]
    rank = None
    false = 0
    for k, c in enumerate(cands):
        if any(_candidate_hit(c, t, geo1) for t in new_truth):
            rank = k + 1 if rank is None else rank
        else:
            false += 1
    cand_records.append({"seed": seed, "rank": rank, "false": false, "n": len(cands), "has_new": bool(new_truth)})
    if verbose:
        _print_case(records, seed, case.grid, render_s, track_s, rank, false)


def _print_case(records, seed, grid, render_s, track_s, rank, false) -> None:
    mine = [r for r in records if r["seed"] == seed]
    cells = "  ".join(f"{r['id']}{r['prompt'][0]}={r['dice']:.2f}{'' if r['status'] == 'ok' else '*'}" for r in mine)
    tr = "" if track_s is None else f", track {track_s:.0f} s; new lesion rank {rank}, {false} false"
    print(f"  seed {seed} ({grid}; render {render_s:.0f} s{tr}): {cells}")
    sys.stdout.flush()


def family_tables(title: str, records: list[dict], cand_records: list[dict]) -> dict[str, float]:
    """Print the family tables (per kind, per grid, status shares, candidates); return the means."""
    prompts = ["point", "click", "box", "tracking"]
    kinds = sorted({r["kind"] for r in records})
    rows = []
    for kind in kinds:
        row = {"n": str(len({(r["seed"], r["id"]) for r in records if r["kind"] == kind}))}
        for p in prompts:
            vals = [r["dice"] for r in records if r["kind"] == kind and r["prompt"] == p]
            if vals:
                row[p] = float(np.mean(vals))
        rows.append((kind, row))
    print_table(f"{title}: mean Dice per lesion kind", rows, ["n", *prompts])
    grids = sorted({r["grid"] for r in records})
    grows = []
    for g in grids:
        row = {}
        for p in prompts:
            vals = [r["dice"] for r in records if r["grid"] == g and r["prompt"] == p]
            if vals:
                row[p] = float(np.mean(vals))
        grows.append((g, row))
    print_table(f"{title}: mean Dice per grid", grows, prompts)
    srows = []
    for p in prompts:
        sel = [r for r in records if r["prompt"] == p]
        bad = [r for r in sel if r["dice"] < 0.5]
        good = [r for r in sel if r["dice"] >= 0.8]
        srows.append((p, {
            "masks": str(len(sel)),
            "Dice<0.5": str(len(bad)),
            "of those flagged": f"{sum(r['status'] != 'ok' for r in bad)}/{len(bad)}",
            "Dice>=0.8": str(len(good)),
            "of those flagged ": (f"{100.0 * sum(r['status'] != 'ok' for r in good) / max(1, len(good)):.1f} %"),
            "ok / check / empty / lost": " / ".join(str(sum(r["status"] == s for r in sel))
                                                     for s in ("ok", "check", "empty", "lost")),
        }))
    print(f"\n## {title}: status (target: every Dice<0.5 flagged, <= 15 % of Dice>=0.8 flagged)\n")
    cols = ["masks", "Dice<0.5", "of those flagged", "Dice>=0.8", "of those flagged ", "ok / check / empty / lost"]
    print("| prompt | " + " | ".join(c.strip() for c in cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, row in srows:
        print(f"| {name} | " + " | ".join(row[c] for c in cols) + " |")
    unflagged = [r for r in records if r["dice"] < 0.5 and r["status"] == "ok"]
    if unflagged:
        print("\nbad masks passed as ok: " + ", ".join(
            f"seed {r['seed']} lesion {r['id']} {r['kind']} {r['prompt']} Dice {r['dice']:.2f}" for r in unflagged))
    with_new = [c for c in cand_records if c["has_new"]]
    top3 = sum(c["rank"] is not None and c["rank"] <= 3 for c in with_new)
    anyr = sum(c["rank"] is not None for c in with_new)
    fp = float(np.mean([c["false"] for c in cand_records])) if cand_records else float("nan")
    print(f"\n{title}: new-lesion candidates: sensitivity (top 3) {top3}/{len(with_new)}, (any rank) "
          f"{anyr}/{len(with_new)}; false candidates per scan {fp:.2f}")
    out = {}
    for p in prompts:
        vals = [r["dice"] for r in records if r["prompt"] == p]
        out[p] = float(np.mean(vals)) if vals else float("nan")
    sel = [r for r in records if r["prompt"] in ("point", "box", "tracking")]
    bad = [r for r in sel if r["dice"] < 0.5]
    good = [r for r in sel if r["dice"] >= 0.8]
    out["bad flagged"] = sum(r["status"] != "ok" for r in bad) / max(1, len(bad))
    out["good flagged"] = sum(r["status"] != "ok" for r in good) / max(1, len(good))
    out["cand top3"] = top3 / max(1, len(with_new))
    out["false/scan"] = fp
    sys.stdout.flush()
    return out


def family(engine, seeds, title: str, dump: str | None = None,
           tasks: tuple[str, ...] = ("segment", "track")) -> dict[str, float]:
    records: list[dict] = []
    cand_records: list[dict] = []
    print(f"\n## {title}: seeds {seeds[0]}..{seeds[-1]} ({len(seeds)} cases)\n")
    for seed in seeds:
        family_case(engine, seed, records, cand_records, tasks=tasks)
        if dump:
            import json

            Path(dump).write_text(json.dumps({"masks": records, "candidates": cand_records}, indent=1, default=str))
    return family_tables(title, records, cand_records)


# ---------------------------------------------------------------- real data
def read(path: Path) -> tuple[np.ndarray, Geometry]:
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    geo = Geometry.from_itk(img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection())
    return sitk.GetArrayFromImage(img), geo


def real_cases() -> list[tuple[str, Image, np.ndarray]]:
    cases = []
    for d in sorted((REAL / "ibsi_sts_validation" / "nifti").glob("STS_*")):
        if not (d / "CT_image.nii.gz").exists() or not (d / "CT_mask.nii.gz").exists():
            continue
        arr, geo = read(d / "CT_image.nii.gz")
        lab, _ = read(d / "CT_mask.nii.gz")
        cases.append((d.name, Image(arr.astype(np.float32), geo, d.name), lab > 0))
    for name in ("lung1", "lung2"):
        if not (REAL / "pyradiomics" / f"{name}_image.nrrd").exists():
            continue
        arr, geo = read(REAL / "pyradiomics" / f"{name}_image.nrrd")
        lab, _ = read(REAL / "pyradiomics" / f"{name}_label.nrrd")
        cases.append((name, Image(arr.astype(np.float32), geo, name), lab > 0))
    return cases


def rotation(deg_zyx) -> np.ndarray:
    out = np.eye(3)
    for axis, deg in enumerate(deg_zyx):
        a = np.deg2rad(deg)
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = np.cos(a), -np.sin(a), np.sin(a), np.cos(a)
        out = out @ r
    return out


def resample_case(image: Image, mask: np.ndarray, transform, geo: Geometry) -> tuple[Image, np.ndarray]:
    """Image and mask on ``geo`` through a SimpleITK transform (output point -> input point)."""
    import SimpleITK as sitk

    ref = to_sitk(np.zeros(geo.shape, np.float32), geo)
    img = sitk.Resample(to_sitk(image.array, image.geometry), ref, transform, sitk.sitkLinear, -1000.0)
    lab = sitk.Resample(to_sitk(mask.astype(np.float32), image.geometry), ref, transform, sitk.sitkLinear, 0.0)
    return Image(sitk.GetArrayFromImage(img), geo, image.name + "_moved"), sitk.GetArrayFromImage(lab) >= 0.5


def oblique_grid(geo: Geometry, spacing, deg_zyx, shift_mm=(0.0, 0.0, 0.0), grow=1.0) -> Geometry:
    """A grid around the same physical centre with another spacing and direction."""
    centre = geo.index_to_world((np.asarray(geo.shape) - 1) / 2) + np.asarray(shift_mm)
    d = rotation(deg_zyx) @ geo.direction_matrix
    shape = np.maximum(8, np.round(np.asarray(geo.extent_mm) * grow / np.asarray(spacing))).astype(int)
    origin = centre - d @ ((shape - 1) / 2 * np.asarray(spacing))
    return Geometry(tuple(int(v) for v in shape), tuple(spacing), tuple(origin), tuple(d.reshape(-1)))


def known_motion(image: Image, mask: np.ndarray, seed: int = 0):
    """Rigid (3 deg, ~8 mm) + smooth B-spline deformation (~3 mm) onto a different grid."""
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    ref = to_sitk(image.array, image.geometry)
    centre = ref.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in ref.GetSize()])
    rigid = sitk.Euler3DTransform()
    rigid.SetCenter(centre)
    rigid.SetRotation(*np.deg2rad(rng.uniform(-3, 3, 3)))
    rigid.SetTranslation(tuple(rng.uniform(-8, 8, 3)))
    bspline = sitk.BSplineTransformInitializer(ref, [4, 4, 4])
    params = np.asarray(bspline.GetParameters())
    bspline.SetParameters(tuple(rng.normal(0, 3.0, params.size)))
    motion = sitk.CompositeTransform([rigid, bspline])
    g = image.geometry
    spacing = tuple(np.asarray(g.spacing) * np.array([0.8, 1.15, 1.1]))
    geo = oblique_grid(g, spacing, (4, -3, 2), shift_mm=(5.0, -6.0, 4.0), grow=1.1)
    return resample_case(image, mask, motion, geo)


def real(engine, tasks: tuple[str, ...] = ("segment", "track")) -> dict[str, float]:
    import SimpleITK as sitk

    rows, orows, trows = [], [], []
    for name, image, gt in real_cases():
        ml = gt.sum() * image.geometry.voxel_volume_mm3 / 1000
        rows.append((f"{name} ({ml:.1f} mL)", seg_row(engine, image, gt, 1)))
        # Generality: the same case on an oblique, anisotropic grid (identity transform, new grid).
        sp = np.asarray(image.geometry.spacing)
        geo = oblique_grid(image.geometry, (sp.max() * 0.8, sp.min() * 1.3, sp.min() * 1.1), (10, 7, -5))
        ob_img, ob_gt = resample_case(image, gt, sitk.Transform(3, sitk.sitkIdentity), geo)
        orows.append((name, seg_row(engine, ob_img, ob_gt, 1)))
        if "track" not in tasks:
            continue
        f_img, f_gt = known_motion(image, gt)
        t0 = time.perf_counter()
        res = engine.track(image, LabelMap(gt.astype(np.uint16), image.geometry), f_img)
        trows.append((name, {"tracking": dice(res.labels.array == 1, f_gt), "s": time.perf_counter() - t0,
                             "lost": "lost" if res.lost_ids else ""}))
    print_table("real cases: segmentation (Dice)", rows, ["point", "centroid", "box", "point_s", "box_s",
                                                          "point status", "box status"])
    print_table("real cases on an oblique anisotropic grid (Dice)", orows, ["point", "centroid", "box"])
    if trows:
        print_table("real cases: tracking to a known rigid + B-spline motion, other grid (Dice)", trows,
                    ["tracking", "s", "lost"])
    out = {c: float(np.mean([r[c] for _, r in rows])) for c in ("point", "centroid", "box")}
    out.update({f"oblique {c}": float(np.mean([r[c] for _, r in orows])) for c in ("point", "centroid", "box")})
    if trows:
        out["tracking"] = float(np.mean([r["tracking"] for _, r in trows]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="*", default=[0])
    ap.add_argument("--rotate", action="store_true", help="also run the synthetic study on oblique grids")
    ap.add_argument("--no-real", action="store_true")
    ap.add_argument("--no-synthetic", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--family", type=int, default=12, help="number of family tuning seeds (0: none)")
    ap.add_argument("--family-start", type=int, default=0, help="first family tuning seed")
    ap.add_argument("--held-out", type=int, default=0, help="number of held-out family seeds (report only)")
    ap.add_argument("--held-out-start", type=int, default=0, help="offset into the held-out seeds")
    ap.add_argument("--tasks", nargs="+", default=["segment", "track"], choices=("segment", "track"),
                    help="family: score segmentation prompts, tracking (+ candidates), or both")
    ap.add_argument("--dump", default=None, help="write the family's per-mask records to this JSON file")
    args = ap.parse_args(argv)
    tasks = tuple(args.tasks)
    engine = ClassicalEngine(EngineSettings(threads=args.threads))
    summary: list[tuple[str, dict]] = []
    if args.family:
        from napari_lesionlocator.sample.family import TUNING_SEEDS

        seeds = list(TUNING_SEEDS[args.family_start: args.family_start + args.family])
        means = family(engine, seeds, "family (tuning)", args.dump, tasks)
        summary.append((f"family, tuning seeds {seeds[0]}-{seeds[-1]}", means))
    if args.held_out:
        from napari_lesionlocator.sample.family import HELD_OUT_SEEDS

        seeds = list(HELD_OUT_SEEDS[args.held_out_start: args.held_out_start + args.held_out])
        summary.append((f"family, held-out seeds {seeds[0]}-{seeds[-1]}",
                        family(engine, seeds, "family (held out)", None, tasks)))
    if not args.no_synthetic:
        for seed in args.seeds:
            for rot in (False, True) if args.rotate else (False,):
                summary.append((f"synthetic seed {seed}{' oblique' if rot else ''}", synthetic(engine, seed, rot)))
    if not args.no_real and REAL.exists():
        summary.append(("real (7 cases)", real(engine, tasks)))
    elif not args.no_real:
        print(f"\nreal cases skipped: {REAL} not found")
    cols = sorted({k for _, r in summary for k in r}, key=lambda c: (c.startswith("oblique"), c))
    print_table("summary (mean Dice)", summary, cols)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
