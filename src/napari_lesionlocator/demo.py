"""`make demo`: the main job, end to end, on the embedded classical engine.

1. builds the synthetic longitudinal study (baseline + 2 follow-ups) and writes it in the
   LesionLocator dataset layout;
2. prompts every baseline lesion (a box from the reference annotation, as an annotator would draw
   it) and segments it;
3. tracks all lesions through both follow-ups, keeping their ids;
4. writes the masks (instance maps and one file per lesion, in each scan's geometry), the prompts,
   the lesion table with RECIST, and Dice against the ground truth;
5. shows the result in napari when a display exists; without one it renders the same view under
   Xvfb and writes a screenshot.

Run: ``python -m napari_lesionlocator.demo [--out demo_output] [--no-viewer]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from . import api
from .core.measurements import dice
from .core.prompts import prompts_from_label_map
from .engines.base import EngineSettings, create_engine
from .io.atomic import atomic_write_text
from .io.images import read_image, read_label_map
from .io.prompt_files import write_prompt_json


def run_pipeline(out: Path) -> list[Path]:
    """Headless part; returns the predicted instance-map paths, one per timepoint."""
    from .sample.synthetic import make_synthetic_study

    t0 = time.perf_counter()
    study = make_synthetic_study(seed=0, size="small")
    study.write(out / "study", overwrite=True)
    print(f"[1/4] synthetic study: {len(study.images)} timepoints, {study.images[0].shape} voxels "
          f"-> {out / 'study'} ({time.perf_counter() - t0:.1f} s)")

    baseline, gt0 = study.images[0], study.labels[0]
    prompts = prompts_from_label_map(gt0.array, "box")
    write_prompt_json(prompts, out / f"{baseline.name}_prompts.json", overwrite=True)
    engine = create_engine("classical", EngineSettings())

    t0 = time.perf_counter()
    seg = api.run_sync(api.iter_segment(engine, baseline, prompts))
    print(f"[2/4] segmented {len(prompts)} baseline lesions from box prompts in {time.perf_counter() - t0:.1f} s")

    t0 = time.perf_counter()
    series = api.run_sync(api.iter_track_series(engine, baseline, seg.labels, study.images[1:]))
    print(f"[3/4] tracked through {len(study.images) - 1} follow-ups in {time.perf_counter() - t0:.1f} s")
    for note in _accept_new_lesions(engine, study, series):
        print(f"      {note}")

    masks_dir = out / "masks"
    predicted = [seg, *series.results]
    label_paths = []
    print("\n  timepoint        lesion  Dice vs ground truth")
    for image, result, gt in zip(study.images, predicted, study.labels, strict=True):
        # each lesion's own whole mask, the display map and <case>_summary.json (statuses, overlaps)
        api.write_case_outputs(masks_dir, image.name, result.lesions, image.geometry, overwrite=True,
                               new_candidates=getattr(result, "new_candidates", None))
        label_paths.append(api.instance_file(masks_dir, image.name))
        for lid in sorted(set(gt.ids) | set(result.lesions)):
            own = result.lesions.get(lid)
            mask = own.mask.to_full() if own is not None else np.zeros(gt.geometry.shape, bool)
            d = dice(mask, gt.mask(lid))
            note = "" if lid in gt.ids else "  (not in ground truth)"
            if own is None or own.mask.is_empty:
                note = "  (absent in prediction)"
            elif own.status != "ok":
                note += f"  [{own.status}]"
            print(f"  {image.name:<16} {lid:>6}  {d:.3f}{note}")
    for r in series.results:
        for msg in r.messages:
            print(f"  note: {msg}")
    # Every lesion seen anywhere gets a row at every timepoint: a tracked lesion that vanished is
    # measured as absent (0 mm for RECIST), not as "not evaluated".
    # the annotator knows where each box was drawn: sites give RECIST's 2-per-organ and node rules
    sites = {rec.id: ("lymph node" if rec.kind == "lymph_node" else rec.organ) for rec in study.lesions}
    measured = api.measure_timepoints([(image, r.labels) for image, r in zip(study.images, predicted, strict=True)],
                                      sites=sites)
    recist = measured.recist
    table_paths = api.write_measurements(out / "lesion_table", measured, overwrite=True)
    if recist is not None:
        print("\n  RECIST 1.1 (targets: " + ", ".join(str(t) for t in recist.targets) + ")")
        for tp in recist.timepoints:
            change = "" if tp.change_vs_baseline_pct is None else f"{tp.change_vs_baseline_pct:+.1f} % vs baseline"
            total = "n/a" if tp.sum_mm is None else f"{tp.sum_mm:.1f} mm"
            print(f"  timepoint {tp.timepoint}: sum {total:<9} {change:<22} {tp.response}")
    for note in measured.notes:
        print(f"  note: {note}")
    naming = (out / "study" / "naming.csv").read_text().splitlines()[1:]
    manifest = [
        {"name": image.name, "image": str(out / "study" / row.split(",")[3]), "labels": str(path)}
        for image, row, path in zip(study.images, naming, label_paths, strict=True)
    ]
    atomic_write_text(out / "demo_manifest.json", json.dumps(manifest, indent=2), overwrite=True)
    print(f"[4/4] masks -> {masks_dir}; lesion table -> {', '.join(str(p) for p in table_paths.values())}")
    from .cli.export import export_study  # DICOM-SEG + SR per timepoint (with a CT series, the images are NIfTI)

    export_study(study.images, [r.lesions for r in predicted], out, formats=["dicom-seg", "dicom-sr"],
                 engine="classical", overwrite=True)
    print(f"      DICOM-SEG and DICOM SR (TID 1500), one per timepoint -> {out / 'dicom'}")
    # The whole review as a session folder (`lesionlocator session`) and its HTML response report.
    from .core.recist import auto_assign_targets
    from .core.study import SITES, Study
    from .io.session import save_session
    from .report import write_report

    for image, entry in zip(study.images, manifest, strict=True):
        image.source = entry["image"]  # the scans as written to study/: the session names them by checksum
    review = Study.from_results(study.images, predicted, patient_id=study.case, prompts=prompts, engine="classical")
    for rec in study.lesions:  # the annotator knows where each box was drawn
        site = "lymph node" if rec.kind == "lymph_node" else rec.organ
        if rec.id in review.lesion_ids:
            review.set_lesion_info(rec.id, site=site if site in SITES else "other", check_rules=False)
    auto_assign_targets(review)
    save_session(review, out / "session", overwrite=True)
    report = write_report(review, out / "report.html", overwrite=True)
    print(f"      review session -> {out / 'session'} (tracked lesions unverified); response report -> {report}")
    return label_paths


def _accept_new_lesions(engine, study, series) -> list[str]:
    """The scripted review of each follow-up's new-lesion candidates (the top three).

    As the annotator drew the baseline boxes, the script knows the ground truth: it accepts a
    candidate whose box holds a lesion absent from the scan before. The accepted lesion is
    segmented from the candidate's box (grown by 3 mm) at that follow-up, under the ground truth's
    id, and tracked on through the later follow-ups; RECIST then counts it as new.
    """
    from .core.prompts import BoxPrompt
    from .core.results import compose_label_map

    notes = []
    for k, result in enumerate(series.results):
        image, gt, before = study.images[k + 1], study.labels[k + 1], study.labels[k]
        for rank, cand in enumerate(result.new_candidates[:3], start=1):
            b = cand["box"]
            inside = set(np.unique(gt.array[b[0]:b[1], b[2]:b[3], b[4]:b[5]]).tolist()) - {0}
            new = sorted(i for i in inside if i not in before.ids and i not in result.lesions)
            if not new:
                continue
            lid = new[0]
            pad = np.ceil(3.0 / np.asarray(image.geometry.spacing)).astype(int)
            lo = np.maximum(np.asarray(b[0::2]) - pad, 0)
            hi = np.minimum(np.asarray(b[1::2]) + pad, image.shape)
            own = engine.segment(image, [BoxPrompt(lid, (lo[0], hi[0], lo[1], hi[1], lo[2], hi[2]))]).lesions[lid]
            result.lesions[lid] = own
            result.labels = compose_label_map(result.lesions, image.geometry, result.labels.name)
            notes.append(f"{image.name}: new-lesion candidate {rank} (score {cand['score']:.1f}) accepted as "
                         f"lesion {lid} ({own.volume_ml:.1f} mL, {own.status})")
            prev, mask = image, own.mask
            for later, nxt in zip(series.results[k + 1:], study.images[k + 2:]):
                if mask.is_empty:
                    break
                tracked = engine.track(prev, {lid: mask}, nxt).lesions[lid]
                later.lesions[lid] = tracked
                later.labels = compose_label_map(later.lesions, nxt.geometry, later.labels.name)
                if tracked.status == "lost":
                    later.lost_ids.append(lid)
                prev, mask = nxt, tracked.mask
    return notes


def render_screenshot(out: Path) -> Path | None:
    """Render the review view to PNG; re-runs itself under xvfb-run when there is no display."""
    png = out / "demo_screenshot.png"
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        xvfb = shutil.which("xvfb-run")
        if xvfb is None:
            print("no display and no xvfb-run: skipping the screenshot (apt-get install xvfb)")
            return None
        cmd = [xvfb, "-a", "-s", "-screen 0 1600x1000x24", sys.executable, "-m", "napari_lesionlocator.demo",
               "--out", str(out), "--screenshot-only"]
        subprocess.run(cmd, check=True)
        return png if png.exists() else None
    from .gui.screenshot import render_study_screenshot

    images, labels = _demo_results(out)
    # Centre every timepoint on the largest baseline lesion so the figure shows its course.
    counts = {lid: int(labels[0].mask(lid).sum()) for lid in labels[0].ids}
    focus = max(counts, key=counts.get) if counts else None
    return render_study_screenshot(images, labels, png, lesion_id=focus)


def _demo_results(out: Path):
    """(images, predicted label maps) of the demo run, read back from ``out``."""
    manifest = json.loads((out / "demo_manifest.json").read_text())
    images = [read_image(entry["image"], name=entry["name"]) for entry in manifest]
    labels = [read_label_map(entry["labels"], like=image) for entry, image in zip(manifest, images, strict=True)]
    return images, labels


def build_viewer(out: Path):
    """An interactive napari viewer on the demo's results: every timepoint with its tracked lesions,
    in world (mm) space, and the plugin's three widgets docked, ready for corrections."""
    import napari

    from .gui._layers import image_layer_data, labels_layer_data

    viewer = napari.Viewer(title="napari-lesionlocator demo")
    for k, (image, labels) in enumerate(zip(*_demo_results(out), strict=True)):
        data, kwargs, _ = image_layer_data(image)
        layer = viewer.add_image(data, **kwargs)
        layer.visible = k == 0  # opaque CT layers hide each other; the timeline/review widgets switch
        ldata, lkwargs, _ = labels_layer_data(labels, name=f"{layer.name} lesions", image_name=layer.name)
        viewer.add_labels(ldata, **lkwargs).visible = k == 0
    for widget in ("Lesion prompts", "Timeline", "Lesion review"):
        viewer.window.add_plugin_dock_widget("napari-lesionlocator", widget)
    return viewer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder (default demo_output)")
    parser.add_argument("--no-viewer", action="store_true", help="never open an interactive napari window")
    parser.add_argument("--screenshot-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    if args.screenshot_only:
        path = render_screenshot(out)
        return 0 if path else 1
    out.mkdir(parents=True, exist_ok=True)
    run_pipeline(out)
    has_display = bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    png = render_screenshot(out)
    if png:
        print(f"screenshot -> {png}")
    if has_display and not args.no_viewer:
        import napari

        build_viewer(out)
        napari.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
