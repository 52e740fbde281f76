"""Cohort throughput of `lesionlocator batch` with 1 and 2 local Dask workers (classical engine).

Generates one cohort of lesion-centred synthetic studies in the LesionLocator dataset layout
(baseline + follow-up, as the synthetic follow-up dataset; exact ground truth), then runs the
same cohort with each worker count into a fresh output folder: studies per minute, speedup and
efficiency against the ideal (N workers = N x one worker). Each worker is one process with one
thread, and the engine uses one numeric thread, so N workers use N cores. The machine's load
average is printed with every run (the cores may be shared), and so are the workers' own CPU time
per study, which does not depend on what else runs, and the cores the workers actually got (their
CPU time over the wall time: N on N free cores).

A study the engine fails on is a finished task too (its reason is printed); the same studies
must fail, and every other lesion's Dice must be the same, with every worker count.

Run: ``python benchmarks/batch_scaling.py [--studies 24] [--workers 1 2] [--source family|sample]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def _cpu_seconds() -> float:
    import psutil

    t = psutil.Process().cpu_times()
    return t.user + t.system


def run_once(cohort: Path, out: Path, workers: int) -> dict:
    """One batch over the cohort; a study that fails is a finished task too (its reason is kept)."""
    from napari_lesionlocator.batch import EngineConfig, load_manifest, open_client, run_batch

    specs = load_manifest(cohort)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    with open_client(workers=workers, threads_per_worker=1, dashboard_address=None) as (client, _info):
        startup = time.perf_counter() - t0
        cpu0 = sum(client.run(_cpu_seconds).values())
        report = run_batch(specs, out, client, EngineConfig("classical", threads=1), progress=False)
        cpu = sum(client.run(_cpu_seconds).values()) - cpu0
    load_after = os.getloadavg()[0]
    failed = {s["study_id"]: s["reason"] for s in report.studies if s["status"] != "done"}
    return {"failed": failed, "workers": workers, "studies": len(specs), "wall_s": report.seconds, "startup_s": startup,
            "per_min": 60.0 * len(specs) / report.seconds, "cpu_per_study_s": cpu / len(specs),
            "load": (load_before, load_after),
            "dice": sorted((r["study_id"], r["timepoint"], r["lesion_id"], round(r["dice"], 6))
                           for r in report.lesions)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=24, help="cohort size (default 24)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (default: 1 2)")
    parser.add_argument("--timepoints", type=int, default=2, help="timepoints per study (default 2: baseline + "
                                                                   "follow-up, as the synthetic dataset)")
    parser.add_argument("--half-extent-mm", type=float, nargs=3, default=(32.0, 48.0, 48.0), metavar=("Z", "Y", "X"),
                        help="half size of each study's box around its lesion (default 32 48 48 mm)")
    parser.add_argument("--source", choices=["family", "sample"], default="family",
                        help="cohort source: the randomised evaluation family (default) or the sample study")
    parser.add_argument("--keep", type=Path, default=None, help="keep the cohort and outputs in this folder")
    args = parser.parse_args(argv)
    if args.studies < 1 or min(args.workers) < 1:
        parser.error("--studies and --workers must be at least 1")

    from napari_lesionlocator.batch.cohort import write_cohort
    from napari_lesionlocator.io.images import read_image

    root = args.keep or Path(tempfile.mkdtemp(prefix="batch_scaling_"))
    cohort = root / "cohort"
    try:
        t0 = time.perf_counter()
        if cohort.exists():
            shutil.rmtree(cohort)
        cases = write_cohort(cohort, args.studies, source=args.source, timepoints=args.timepoints,
                             half_extent_mm=args.half_extent_mm)
        import numpy as np

        grids = [read_image(cohort / "Baseline" / "images" / f"{c}.nii.gz").geometry for c in cases]
        voxels = [int(np.prod(g.shape)) for g in grids]
        spacing = np.array([g.spacing for g in grids])
        print(f"cohort: {len(cases)} studies x {args.timepoints} timepoints ({args.source}), "
              f"baseline {min(voxels)}-{max(voxels)} voxels (median {int(np.median(voxels))}), slices "
              f"{spacing[:, 0].min():.1f}-{spacing[:, 0].max():.1f} mm, pixels {spacing[:, 1].min():.2f}-"
              f"{spacing[:, 1].max():.2f} mm; written in {time.perf_counter() - t0:.1f} s")
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} before the runs; "
              f"python {sys.version.split()[0]}")
        results = []
        for n in args.workers:
            out = root / f"out_{n}w"
            if out.exists():
                shutil.rmtree(out)
            r = run_once(cohort, out, n)
            results.append(r)
            print(f"  {n} worker(s): {r['wall_s']:.1f} s, {r['per_min']:.1f} studies/min "
                  f"(cluster start {r['startup_s']:.1f} s, not counted; load {r['load'][0]:.2f} -> {r['load'][1]:.2f})",
                  flush=True)
        base = next((r for r in results if r["workers"] == 1), results[0])
        print()
        print("| workers | wall (s) | studies/min | speedup | ideal | efficiency | worker CPU s/study | cores the "
              "workers got | load avg before -> after |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in results:
            speedup = r["per_min"] / base["per_min"]
            ideal = r["workers"] / base["workers"]
            print(f"| {r['workers']} | {r['wall_s']:.1f} | {r['per_min']:.1f} | {speedup:.2f}x | {ideal:.0f}x | "
                  f"{100 * speedup / ideal:.0f} % | {r['cpu_per_study_s']:.2f} | "
                  f"{r['cpu_per_study_s'] * r['studies'] / r['wall_s']:.2f} | {r['load'][0]:.2f} -> "
                  f"{r['load'][1]:.2f} |")
        same = all(r["dice"] == base["dice"] and r["failed"] == base["failed"] for r in results)
        print(f"\nresults identical across worker counts (every lesion's Dice, the same failures): "
              f"{'yes' if same else 'NO'}")
        if base["failed"]:
            print(f"{len(base['failed'])} of {base['studies']} studies failed (counted as finished tasks):")
            for sid, reason in sorted(base["failed"].items()):
                print(f"  {sid}: {reason}")
        return 0 if same else 1
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
