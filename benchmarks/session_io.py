"""Session save / restore / autosave / report timings, and the GUI-thread stall an autosave in a worker causes.

Run::

    .venv/bin/python benchmarks/session_io.py                 # the sample study (small), images as files
    .venv/bin/python benchmarks/session_io.py --embedded      # images kept in the session (no files)
    .venv/bin/python benchmarks/session_io.py --size realistic

Prints, on the sample study with its ground truth as the reader's masks (7 lesions x 3 timepoints):

* GUI-thread costs: ``snapshot_state()`` (what the GUI thread does before handing an autosave to a
  worker), ``apply_label_edit`` of a brush stroke, ``measurements()`` after that edit (cached: only
  the edited lesion is measured again) against a cold full measurement;
* worker costs: first save (image checksums computed), later saves (checksums cached), autosave
  (embedded images hard-linked from the previous autosave), restore (images read and checked),
  report;
* the longest gap of a 5 ms heartbeat on the main thread while a worker thread autosaves
  (the stall a viewer would feel; the issue's bound is 100 ms).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _timed(fn, n=1):
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out), max(out)


def _heartbeat_max_gap(work) -> tuple[float, float]:
    """Run ``work`` in a thread; return (max gap of a 5 ms sleep loop on this thread, work seconds)."""
    done = threading.Event()
    result = {}

    def run():
        t0 = time.perf_counter()
        work()
        result["s"] = time.perf_counter() - t0
        done.set()

    worker = threading.Thread(target=run)
    last = time.perf_counter()
    gap = 0.0
    worker.start()
    while not done.is_set():
        time.sleep(0.005)
        now = time.perf_counter()
        gap = max(gap, now - last - 0.005)
        last = now
    worker.join()
    return gap, result["s"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", choices=["small", "realistic"])
    parser.add_argument("--embedded", action="store_true", help="images in memory only (stored in the session)")
    args = parser.parse_args()

    from napari_lesionlocator.core.recist import auto_assign_targets
    from napari_lesionlocator.core.study import Study, Timepoint
    from napari_lesionlocator.io.session import autosave, load_session, save_session
    from napari_lesionlocator.report import build_report
    from napari_lesionlocator.sample.synthetic import make_synthetic_study
    from test_report import sample_review

    tmp = Path(tempfile.mkdtemp(prefix="session_bench_"))
    t0 = time.perf_counter()
    if args.size == "small":
        study = sample_review(None if args.embedded else tmp / "scans")
    else:
        from napari_lesionlocator.io.images import read_image, write_image

        syn = make_synthetic_study(seed=0, size="realistic")
        images = syn.images
        if not args.embedded:
            images = [read_image(write_image(im, tmp / "scans" / f"{im.name}.nii.gz"), name=im.name)
                      for im in syn.images]
            for im, orig in zip(images, syn.images, strict=True):
                im.acquisition_date = orig.acquisition_date
        study = Study([Timepoint(i, lab) for i, lab in zip(images, syn.labels, strict=True)], patient_id=syn.case)
        auto_assign_targets(study)
    voxels = sum(int(np.prod(tp.geometry.shape)) for tp in study.timepoints)
    print(f"study: {len(study)} timepoints, {voxels / 1e6:.1f} M voxels, {len(study.lesion_ids)} lesions, "
          f"images {'embedded' if args.embedded else 'as files'} (prepared in {time.perf_counter() - t0:.1f} s)")

    # ---- GUI thread
    med, worst = _timed(study.snapshot_state, 50)
    print(f"GUI thread  snapshot_state()                      median {1e3 * med:7.2f} ms  max {1e3 * worst:7.2f} ms")
    study.measurements()  # warm the cache
    tp = study.names[1]
    obs = study.observation(2, tp)
    z, y, x = (int(v) for v in obs.mask.centroid_index())
    edits = []
    for k in range(10):
        edited = study[tp].labels.array.copy()
        edited[z, y - 2: y + 2, x + 3: x + 7] = 2 if k % 2 == 0 else 0  # paint, then erase, the same stroke
        region = (slice(z, z + 1), slice(y - 2, y + 2), slice(x + 3, x + 7))
        t0 = time.perf_counter()
        study.apply_label_edit(tp, edited, region=region, user="bench")
        t1 = time.perf_counter()
        study.measurements()
        edits.append((t1 - t0, time.perf_counter() - t1))
    edit_ms = 1e3 * statistics.median(e[0] for e in edits)
    measure_ms = 1e3 * statistics.median(e[1] for e in edits)
    print(f"GUI thread  apply_label_edit (brush stroke)        median {edit_ms:7.2f} ms")
    print(f"GUI thread  measurements() after one edit (cached) median {measure_ms:7.2f} ms")
    study._measure_cache.clear()
    med, _ = _timed(study.measurements)
    print(f"            measurements() cold, every lesion      {1e3 * med:7.1f} ms")

    # ---- worker
    folder = tmp / "review"
    first, _ = _timed(lambda: save_session(study, folder))
    again, _ = _timed(lambda: save_session(study, folder, overwrite=True), 3)
    print(f"worker      save_session first (checksums)         {first:7.2f} s")
    print(f"worker      save_session again (checksums cached)  {again:7.2f} s")
    root = tmp / "recovery"
    auto_first, _ = _timed(lambda: autosave(study.snapshot_state(), root))
    auto_next, auto_worst = _timed(lambda: autosave(study.snapshot_state(), root), 5)
    print(f"worker      autosave first                         {auto_first:7.2f} s")
    print(f"worker      autosave next (median / max of 5)      {auto_next:7.2f} s / {auto_worst:.2f} s")
    restore, _ = _timed(lambda: load_session(folder))
    print(f"worker      load_session (images read + checked)   {restore:7.2f} s")
    rep, _ = _timed(lambda: build_report(study))
    print(f"worker      build_report                           {rep:7.2f} s")

    # ---- stall felt by the GUI thread while a worker autosaves
    gaps = []
    for _ in range(5):
        state = study.snapshot_state()
        gaps.append(_heartbeat_max_gap(lambda state=state: autosave(state, root)))
    print(f"stall       main-thread heartbeat during autosave  max gap {1e3 * max(g for g, _ in gaps):6.1f} ms "
          f"(autosaves took {min(s for _, s in gaps):.2f}-{max(s for _, s in gaps):.2f} s)")
    state = study.snapshot_state()
    gap, secs = _heartbeat_max_gap(lambda: save_session(state, tmp / "fresh"))
    print(f"stall       main-thread heartbeat during a fresh save   max gap {1e3 * gap:6.1f} ms ({secs:.2f} s)")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
