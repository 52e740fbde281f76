"""``lesionlocator batch``: a whole cohort on Dask distributed, resumable, with status and result tables.

Thin layer over :mod:`.batch` (manifest, per-study pipeline, worker plugin, runner): parses the
flags, opens the cluster (an embedded LocalCluster, or any running one by ``--scheduler``),
prints the dashboard link, runs, and prints the summary.
"""

from __future__ import annotations

import argparse
import os
import sys

from .common import add_command, add_engine_args, info, warn

__all__ = ["add_parser", "run", "EXIT_SOME_FAILED"]

EXIT_SOME_FAILED = 4

_EPILOG = """output folder OUT:
  studies/<study_id>/   one folder per finished study: masks per timepoint (each lesion's own mask
                        and the instance map, source geometry), lesion table + RECIST, study.json,
                        and done.json (written last: checksums of every file + input fingerprint)
  lesions.parquet/.csv  one row per lesion per timepoint (ids, volume, RECIST axes, HU, centroid,
                        status ok/check/empty/lost, Dice against the ground truth when given)
  studies.parquet/.csv  one row per study: done / skipped / failed with the reason, seconds, worker

Rerunning the same command resumes: finished studies (done.json valid, same inputs and settings)
are skipped, interrupted ones are redone, failed ones are retried. A finished study made from other
inputs or settings is never replaced unless --overwrite. The two tables are rebuilt on every run.

On a cluster (--scheduler), every worker must see MANIFEST's files and OUT at the same paths
(a shared file system) and have napari-lesionlocator installed; for GPUs start each worker with
one GPU and `--resources GPU=1` and pass --gpus-per-worker 1.

exit codes:
  0    every study done or skipped
  1    runtime error (cluster, engine, unexpected error)
  2    bad manifest or usage
  3    another batch is running on OUT
  4    the batch ran, and some studies failed (see studies.csv)
  130  cancelled (Ctrl-C); finished studies are complete, the tables list the rest as 'not run'
"""


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``batch`` on the ``lesionlocator`` subparsers (called by :func:`.build_parser`)."""
    p = add_command(
        sub, "batch", epilog=_EPILOG,
        help="run a cohort (CSV/JSON manifest or dataset folder) on Dask distributed, resumable",
        description="Segment every study's baseline from its prompts, track its lesions through the follow-ups, "
                    "measure them, and write each study's outputs atomically; one Dask task per study, on an "
                    "embedded LocalCluster or on a running cluster (--scheduler).",
    )
    p.add_argument("manifest", metavar="MANIFEST",
                   help="a CSV or JSON manifest of studies (patient, timepoints with images and dates, prompts or "
                        "baseline masks, optional ground truth), or a folder in the LesionLocator dataset layout "
                        "(Baseline/, Synthetic_Follow_Up*/, naming.csv)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder (created if needed)")
    p.add_argument("--prompt-type", dest="prompt_type", choices=["box", "point", "prev_mask"], default="box",
                   help="for studies that do not say (and dataset folders, whose baseline label maps are the "
                        "prompts): box or point prompts derived from a label map, or prev_mask to track the "
                        "baseline masks as given (default: box)")
    g = p.add_argument_group("cluster")
    where = g.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=None, metavar="N",
                       help="worker processes of the embedded LocalCluster (default: one per CPU core, or one per "
                            "GPU with --gpus-per-worker)")
    where.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                       help="use a running Dask cluster (dask scheduler + dask worker, dask-jobqueue, "
                            "dask-kubernetes) instead of an embedded one")
    g.add_argument("--threads-per-worker", dest="threads_per_worker", type=int, default=1, metavar="K",
                   help="studies each local worker runs at once (default: 1)")
    g.add_argument("--gpus-per-worker", dest="gpus_per_worker", type=int, default=None, metavar="G",
                   help="GPUs per worker: local workers get their own CUDA_VISIBLE_DEVICES and a GPU resource, "
                        "studies need that resource (default: 1 with --engine lesionlocator when this machine "
                        "has GPUs, else 0)")
    g.add_argument("--dashboard-address", dest="dashboard_address", default="127.0.0.1:8787", metavar="ADDR",
                   help="where the embedded cluster serves the Dask dashboard (default: 127.0.0.1:8787, another "
                        "port when taken; 'none' to turn it off)")
    g.add_argument("--memory-limit", dest="memory_limit", default="auto", metavar="BYTES",
                   help="memory per local worker before Dask restarts it, e.g. 8GB (default: auto, RAM / workers)")
    p.add_argument("--overwrite", action="store_true",
                   help="redo finished studies whose inputs or settings changed (default: report them as failed)")
    add_engine_args(p)
    return p


def _checkpoint_configured(args: argparse.Namespace) -> bool:
    from ..api import engine_settings

    try:
        return engine_settings(None, checkpoint=args.checkpoint, device="cpu").name == "lesionlocator"
    except Exception:  # noqa: BLE001 - the real resolution below reports the problem
        return bool(args.checkpoint)


def _validate(args: argparse.Namespace) -> None:
    from .common import UsageError

    for flag, value in (("--workers", args.workers), ("--threads-per-worker", args.threads_per_worker)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    if args.gpus_per_worker is not None and args.gpus_per_worker < 0:
        raise UsageError(f"--gpus-per-worker must be 0 or more, got {args.gpus_per_worker}")
    if args.scheduler and not args.scheduler.strip():
        raise UsageError("--scheduler needs an address like tcp://127.0.0.1:8786")


def _engine_config(args: argparse.Namespace, gpus: int, workers: int | None):
    """The workers' engine, resolved by :func:`.api.engine_settings` like every other command's. The
    device is not probed on this machine: local GPU workers get ``cuda``, other local ones ``cpu``,
    and on a running cluster ``auto`` is left to each worker."""
    from ..api import engine_settings
    from ..batch import EngineConfig

    device = args.device
    if device == "auto":  # local: the GPUs given to the workers; a running cluster: each worker's own choice
        device = "auto" if args.scheduler else ("cuda" if gpus > 0 else "cpu")
    resolved = engine_settings(args.engine, checkpoint=args.checkpoint, device="cuda" if device == "auto" else device,
                               folds=args.folds,
                               tta=False if args.disable_tta else None, threads=args.threads,
                               allow_unsafe=bool(getattr(args, "allow_unsafe_checkpoint", False)))
    for note in resolved.notes:
        warn(note)
    threads = args.threads
    if threads is None and not args.scheduler:
        # the cores are shared by the local workers' studies: one numeric thread each unless cores are spare
        threads = max(1, (os.cpu_count() or 1) // max(1, (workers or 1) * args.threads_per_worker))
    return EngineConfig.from_resolved(resolved, threads=threads, device=device)


def run(args: argparse.Namespace) -> int:
    from ..batch import load_manifest, open_client, run_batch
    from ..batch.cluster import visible_gpus

    _validate(args)
    specs = load_manifest(args.manifest, prompt_type=args.prompt_type)
    info(f"manifest: {len(specs)} studies from {args.manifest}", args)
    name = args.engine or ("lesionlocator" if _checkpoint_configured(args) else "classical")
    gpus = args.gpus_per_worker
    if gpus is None:
        gpus = 1 if (name == "lesionlocator" and not args.scheduler and args.device in ("auto", "cuda")
                     and visible_gpus()) else 0
    if gpus and name == "classical":
        warn("the classical engine does not use GPUs; --gpus-per-worker only places studies on GPU workers")
    workers = args.workers
    if workers is None and not args.scheduler:
        workers = max(1, len(visible_gpus()) // gpus) if gpus else max(1, min(len(specs), (os.cpu_count() or 1)
                                                                               // args.threads_per_worker))
    config = _engine_config(args, gpus, workers)
    with open_client(scheduler=args.scheduler, workers=workers, threads_per_worker=args.threads_per_worker,
                     gpus_per_worker=gpus, dashboard_address=args.dashboard_address,
                     memory_limit=args.memory_limit) \
            as (client, cluster):
        where = (f"scheduler {cluster.scheduler} ({cluster.workers} workers)" if cluster.kind == "remote" else
                 f"local cluster: {cluster.workers} worker(s) x {cluster.threads_per_worker} thread(s)"
                 + (f", {gpus} GPU(s) each" if gpus else "") + f", scheduler {cluster.scheduler}")
        info(f"engine: {config.name} ({'device ' + config.device + ', ' if config.name != 'classical' else ''}"
             f"{config.threads or 'default'} numeric thread(s) per study); {where}", args)
        info(f"Dask dashboard: {cluster.dashboard}" if cluster.dashboard else "Dask dashboard: off", args)
        report = run_batch(specs, args.output, client, config, overwrite=args.overwrite, gpus_per_task=gpus,
                           progress=not args.quiet, log=lambda m: info(m, args))
    c = report.counts
    info(f"{c.get('done', 0)} done, {c.get('skipped', 0)} skipped (already finished), {c.get('failed', 0)} failed "
         f"in {report.seconds:.1f} s", args)
    for row in report.failed:
        print(f"failed: {row['study_id']}: {row['reason']}", file=sys.stderr)
    info("tables: " + ", ".join(str(p) for p in report.tables.values()), args)
    return EXIT_SOME_FAILED if report.failed else 0
