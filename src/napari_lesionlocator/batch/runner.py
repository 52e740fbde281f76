"""Run a cohort on a Dask client: skip what is finished, submit the rest, collect, write the tables.

:func:`run_batch` is the headless batch (the ``lesionlocator batch`` command is a thin layer on
it). Each study is one Dask task (:func:`.cluster.run_study_task`); the worker plugin
(:class:`.cluster.EnginePlugin`) loads the engine once per worker. Before submitting, every
study folder already under ``OUT/studies`` is checked (:func:`.pipeline.check_study_output`): a
valid one from the same inputs and settings is *skipped*; one made from other inputs is refused
unless ``overwrite``; an interrupted one is redone. After the run, the cohort tables are rebuilt
from every finished study folder, so a resumed run reports the whole cohort.

Output folder::

    OUT/studies/<study_id>/...     one folder per finished study (see .pipeline)
    OUT/lesions.parquet, .csv      one row per lesion per timepoint, every finished study
    OUT/studies.parquet, .csv      one row per study of the manifest: done/skipped/failed, reason, time
    OUT/.batch.lock                held while a batch runs (a second batch on OUT refuses)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import OutputExistsError
from .cluster import PLUGIN_NAME, EngineConfig, EnginePlugin, failure_reason, run_study_task
from .manifest import StudySpec, input_fingerprint
from .pipeline import (
    STUDIES_SUBDIR,
    StudyOutcome,
    check_study_output,
    outcome_from_record,
    read_study_record,
    study_dir,
)
from .tables import STUDY_COLUMNS, write_tables

__all__ = ["BatchReport", "run_batch", "plan_batch", "BatchLockedError"]


class BatchLockedError(OutputExistsError):
    """Another batch is running on the same output folder."""


@dataclass
class BatchReport:
    """What a batch did: one status row per study, every lesion row, the table files."""

    studies: list[dict] = field(default_factory=list)
    lesions: list[dict] = field(default_factory=list)
    tables: dict[str, Path] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    outcomes: dict[str, dict] = field(default_factory=dict)

    @property
    def failed(self) -> list[dict]:
        return [s for s in self.studies if s["status"] == "failed"]


@dataclass
class _Plan:
    run: list[tuple[StudySpec, str, str]]  # (spec, fingerprint, note)
    skipped: list[StudyOutcome]
    refused: list[StudyOutcome]


def plan_batch(specs: Sequence[StudySpec], out: str | os.PathLike, config: EngineConfig, *,
               overwrite: bool = False) -> _Plan:
    """Decide per study: run (absent, interrupted, or stale with ``overwrite``), skip, or refuse."""
    settings = config.result_settings()
    plan = _Plan([], [], [])
    for spec in specs:
        fp = input_fingerprint(spec, settings)
        state, why = check_study_output(study_dir(out, spec.study_id), fp)
        if state == "done":
            try:
                plan.skipped.append(outcome_from_record(read_study_record(study_dir(out, spec.study_id))))
                continue
            except (OSError, ValueError, KeyError) as exc:  # checksummed, so only if edited by hand
                state, why = "incomplete", f"unreadable study record ({exc})"
        if state == "stale" and not overwrite:
            plan.refused.append(StudyOutcome(spec.study_id, "failed", reason=f"outputs exist: {why}; rerun with "
                                             "--overwrite to replace them"))
            continue
        note = "" if state == "absent" else f"redone: {why}"
        plan.run.append((spec, fp, note))
    return plan


class _Lock:
    """An exclusive lock on ``OUT/.batch.lock`` (fcntl), held for the whole batch."""

    def __init__(self, out: Path) -> None:
        self.path = out / ".batch.lock"
        self.fh = None

    def __enter__(self):
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.fh.close()
            raise BatchLockedError(f"another batch is running on {self.path.parent} (it holds {self.path.name})") \
                from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"{os.getpid()}\n")
        self.fh.flush()
        return self

    def __exit__(self, *exc):
        import fcntl

        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()
        return False


def _clean_debris(out: Path) -> int:
    """Remove staging folders left by killed runs (never a study folder). Runs under the batch lock."""
    import shutil

    root = out / STUDIES_SUBDIR
    if not root.is_dir():
        return 0
    n = 0
    for p in root.iterdir():
        if p.name.startswith(".") and (".tmp-" in p.name or ".old-" in p.name) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            n += 1
    return n


def _status_row(spec: StudySpec, outcome: StudyOutcome, note: str = "") -> dict:
    statuses = [r.get("status") for r in outcome.rows]
    reason = outcome.reason or note
    if outcome.duplicate:
        reason = (reason + "; " if reason else "") + "finished twice (a retried task): the first result was kept"
    return {
        "study_id": spec.study_id, "patient": spec.patient, "status": outcome.status, "reason": reason,
        "seconds": round(float(outcome.seconds), 3), "worker": outcome.worker,
        "timepoints": len(spec.timepoints), "lesions": outcome.n_lesions,
        "rows_ok": statuses.count("ok"), "rows_check": statuses.count("check"),
        "rows_empty": statuses.count("empty"), "rows_lost": statuses.count("lost"),
        "output": str(study_dir("", spec.study_id)) if outcome.status in ("done", "skipped") else "",
    }


def run_batch(specs: Sequence[StudySpec], out: str | os.PathLike, client, config: EngineConfig, *,
              overwrite: bool = False, gpus_per_task: int = 0, progress: bool = True,
              on_outcome: Callable[[dict], None] | None = None,
              log: Callable[[str], None] | None = None) -> BatchReport:
    """Run every study of ``specs`` not finished yet on ``client``; write the cohort tables into ``out``.

    Returns a :class:`BatchReport` (the tables are written even when some studies failed, and
    when the batch is interrupted, with the studies not run reported ``not run``).
    """
    from distributed import as_completed

    t0 = time.perf_counter()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = log or (lambda _m: None)
    report = BatchReport()
    by_id = {s.study_id: s for s in specs}
    with _Lock(out):
        removed = _clean_debris(out)
        if removed:
            log(f"removed {removed} unfinished staging folder(s) left by an interrupted run")
        plan = plan_batch(specs, out, config, overwrite=overwrite)
        statuses: dict[str, dict] = {}
        for o in plan.skipped:
            statuses[o.study_id] = _status_row(by_id[o.study_id], o)
        for o in plan.refused:
            statuses[o.study_id] = _status_row(by_id[o.study_id], o)
        log(f"{len(specs)} studies: {len(plan.skipped)} already finished (skipped), {len(plan.run)} to run"
            + (f", {len(plan.refused)} refused (outputs from other inputs)" if plan.refused else ""))
        if plan.run:
            client.register_plugin(EnginePlugin(config), name=PLUGIN_NAME)
        resources = {"GPU": gpus_per_task} if gpus_per_task > 0 else None
        futures = {}
        notes = {}
        for spec, fp, note in plan.run:
            fut = client.submit(run_study_task, spec.to_dict(), str(out), fp, config, overwrite,
                                key=f"study-{spec.study_id}-{fp[:12]}", pure=False, resources=resources, retries=0)
            futures[fut] = spec
            notes[spec.study_id] = note
        bar = _bar(len(specs), len(plan.skipped) + len(plan.refused), progress)
        counts = {"done": 0, "failed": len(plan.refused), "skipped": len(plan.skipped)}
        try:
            for fut in as_completed(list(futures)):
                spec = futures[fut]
                outcome = _outcome_of(fut, spec)
                report.outcomes[spec.study_id] = outcome
                o = StudyOutcome(**{k: v for k, v in outcome.items() if k in StudyOutcome.__dataclass_fields__})
                statuses[spec.study_id] = _status_row(spec, o, notes.get(spec.study_id, ""))
                counts[o.status] = counts.get(o.status, 0) + 1
                fut.release()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(counts, refresh=False)
                if o.status == "failed":
                    log(f"{spec.study_id}: failed: {o.reason}")
                if on_outcome is not None:
                    on_outcome(outcome)
        except KeyboardInterrupt:
            client.cancel(list(futures))
            for spec in by_id.values():
                statuses.setdefault(spec.study_id, {**dict.fromkeys(STUDY_COLUMNS, ""), "study_id": spec.study_id,
                                                    "patient": spec.patient, "status": "not run",
                                                    "reason": "the batch was interrupted"})
            report.studies = [statuses[s.study_id] for s in specs]
            report.tables = _write_all(out, specs, report)
            raise
        finally:
            if bar is not None:
                bar.close()
        # every task has finished: what staging folders remain are from workers killed mid-study
        _clean_debris(out)
        report.studies = [statuses[s.study_id] for s in specs]
        report.tables = _write_all(out, specs, report)
        report.counts = {k: sum(1 for s in report.studies if s["status"] == k) for k in ("done", "skipped", "failed")}
        report.seconds = time.perf_counter() - t0
    return report


def _outcome_of(fut, spec: StudySpec) -> dict:
    """The task's outcome, or a failed one for a task that raised (a worker that kept dying, ...)."""
    if fut.status == "finished":
        try:
            return fut.result()
        except Exception as exc:  # noqa: BLE001 - e.g. the result could not be transferred
            return StudyOutcome(spec.study_id, "failed", reason=failure_reason(exc)).to_dict()
    exc = fut.exception()
    from distributed import KilledWorker

    if isinstance(exc, KilledWorker):
        reason = ("worker died: every worker that ran this study died (killed, or out of memory); "
                  f"last on {getattr(exc, 'last_worker', None) and exc.last_worker.address}")
    elif exc is None:
        reason = f"task {fut.status}"
    else:
        reason = failure_reason(exc)
    return StudyOutcome(spec.study_id, "failed", reason=reason).to_dict()


def _write_all(out: Path, specs: Sequence[StudySpec], report: BatchReport) -> dict[str, Path]:
    """Lesion rows of every finished study (read back from their folders) and the status table."""
    rows: list[dict] = []
    for spec in specs:
        folder = study_dir(out, spec.study_id)
        if (folder / "done.json").is_file():
            try:
                rows.extend(outcome_from_record(read_study_record(folder)).rows)
            except (OSError, ValueError, KeyError):
                continue
    report.lesions = rows
    return write_tables(out, rows, report.studies)


def _bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    import sys

    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="studies", unit="study", file=sys.stderr, dynamic_ncols=True)
