"""Dask distributed glue: the engine loaded once per worker, the study task, and the cluster.

* :class:`EnginePlugin` is a :class:`distributed.WorkerPlugin`: every worker (also one that joins
  later or is restarted after a crash) builds the engine once in ``setup`` and keeps it, so the
  model is loaded once per worker, not once per study.
* :func:`run_study_task` is the task: one study, with the worker's engine. Errors of the study
  (corrupt file, bad prompt, engine error) come back as a ``failed`` outcome with the reason; a
  worker that dies mid-study is Dask's to handle: the scheduler gives the study to another worker
  (``distributed.scheduler.allowed-failures`` times), then reports :class:`distributed.KilledWorker`.
* :func:`open_client` gives a client on an embedded :class:`distributed.LocalCluster` (default),
  on a per-GPU :class:`distributed.SpecCluster` (one GPU per worker, ``CUDA_VISIBLE_DEVICES`` and a
  ``GPU`` resource each), or on any running cluster by its scheduler address.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from distributed import WorkerPlugin

from .manifest import StudySpec
from .pipeline import StudyOutcome, process_study

__all__ = [
    "PLUGIN_NAME",
    "EngineConfig",
    "EnginePlugin",
    "run_study_task",
    "open_client",
    "visible_gpus",
    "failure_reason",
]

PLUGIN_NAME = "napari-lesionlocator-engine"


@dataclass(frozen=True)
class EngineConfig:
    """How every worker builds its engine (picklable and hashable; sent to the workers with the plugin).

    Build it from what the user chose with :meth:`from_resolved` on :func:`..api.engine_settings`
    (the one place engine choices are resolved), or directly for the classical engine.
    ``extra`` holds the engine-specific settings as ``(key, value)`` pairs.
    """

    name: str = "classical"
    checkpoint: str | None = None
    folds: tuple[int, ...] | None = None
    tta: bool = False
    device: str = "cpu"
    threads: int | None = 1
    extra: tuple[tuple[str, object], ...] = ()

    @classmethod
    def from_resolved(cls, resolved, *, threads: int | None = None, device: str | None = None) -> EngineConfig:
        """From an :class:`..api.settings.ResolvedEngine`; ``threads`` and ``device`` override its own
        (``device="auto"``: each worker picks cuda, mps or cpu for itself)."""
        s = resolved.settings
        return cls(name=resolved.name, checkpoint=s.checkpoint,
                   folds=tuple(int(f) for f in s.folds) if s.folds is not None else None, tta=bool(s.tta),
                   device=device or s.device, threads=threads if threads is not None else s.threads,
                   extra=tuple(sorted((str(k), v) for k, v in (s.extra or {}).items())))

    def settings(self):
        from ..engines.base import EngineSettings

        device = self.device
        if device == "auto":  # decided on the worker that builds the engine
            from ..api.settings import resolve_device_choice

            device = resolve_device_choice("auto")
        return EngineSettings(threads=self.threads, device=device, checkpoint=self.checkpoint,
                              folds=list(self.folds) if self.folds is not None else None, tta=self.tta,
                              extra=dict(self.extra))

    def create(self):
        from ..engines.base import create_engine

        return create_engine(self.name, self.settings())

    def result_settings(self) -> dict:
        """The settings that change results (a finished study is reused only for the same ones)."""
        extra = {k: v for k, v in self.extra if k not in ("allow_unsafe",)}
        return {"engine": self.name, "checkpoint": self.checkpoint,
                "folds": list(self.folds) if self.folds is not None else None, "tta": self.tta, "extra": extra}

    @property
    def thread_safe(self) -> bool:
        """Whether two studies may call one engine object at once (the classical engine keeps no state)."""
        return self.name == "classical"


class EnginePlugin(WorkerPlugin):
    """Builds the engine once per worker and keeps it for every study that worker runs.

    ``loads`` counts the engines this worker built (1 per worker process); ``lock`` serialises
    calls into an engine that is not thread-safe when a worker runs several studies at once.
    """

    name = PLUGIN_NAME

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.engine = None
        self.error: str | None = None
        self.loads = 0
        self.lock = None
        self.worker_name = ""

    def setup(self, worker) -> None:
        self.worker_name = str(worker.name)
        self.lock = None if self.config.thread_safe else threading.Lock()
        try:
            self.engine = self.config.create()
            self.loads += 1
            self.error = None
        except Exception as exc:  # noqa: BLE001 - reported by every study this worker gets
            self.engine = None
            self.error = f"the engine could not be built on worker {self.worker_name}: {type(exc).__name__}: {exc}"

    def teardown(self, worker) -> None:
        self.engine = None


_LOCAL: dict[EngineConfig, tuple[object, object]] = {}


def _worker_engine(config: EngineConfig):
    """(engine, lock, worker name, loads) of the current worker; outside a worker, one cached per process."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except ValueError:
        worker = None
    if worker is not None:
        plugin = worker.plugins.get(PLUGIN_NAME)
        if plugin is not None and plugin.config == config:
            if plugin.engine is None:
                from ..core.errors import EngineError

                raise EngineError(plugin.error or "the engine is not available on this worker")
            return plugin.engine, plugin.lock, str(worker.name), plugin.loads
    if config not in _LOCAL:
        _LOCAL[config] = (config.create(), None if config.thread_safe else threading.Lock())
    engine, lock = _LOCAL[config]
    return engine, lock, str(worker.name) if worker is not None else f"pid{os.getpid()}", 1


def failure_reason(exc: BaseException) -> str:
    """A short category and the error's own words, for the status table."""
    from ..core.errors import (
        CheckpointError,
        EngineError,
        InputImageError,
        OutputExistsError,
        PromptError,
    )

    if isinstance(exc, PromptError):
        kind = "bad prompt"
    elif isinstance(exc, OutputExistsError):
        kind = "outputs exist"
    elif isinstance(exc, InputImageError):
        kind = "bad input"
    elif isinstance(exc, (EngineError, CheckpointError)):
        kind = "engine error"
    elif isinstance(exc, MemoryError):
        kind = "out of memory"
    elif isinstance(exc, OSError):
        kind = "i/o error"
    else:
        kind = f"error ({type(exc).__name__})"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{kind}: {text}"


def run_study_task(spec: dict, out: str, fingerprint: str, config: EngineConfig, overwrite: bool = False) -> dict:
    """The Dask task for one study; returns :meth:`StudyOutcome.to_dict` (status done or failed)."""
    study = StudySpec.from_dict(spec)
    t0 = time.perf_counter()
    worker = ""
    try:
        engine, lock, worker, loads = _worker_engine(config)
        outcome = process_study(study, engine, out, fingerprint=fingerprint, overwrite=overwrite, engine_lock=lock,
                                worker=worker)
        result = outcome.to_dict()
        result["engine_loads"] = loads
        result["engine_id"] = id(engine)
        result["pid"] = os.getpid()
        return result
    except Exception as exc:  # noqa: BLE001 - the study fails, the batch goes on
        return StudyOutcome(study.study_id, "failed", reason=failure_reason(exc), seconds=time.perf_counter() - t0,
                            worker=worker).to_dict()


# ----------------------------------------------------------------------------- clusters
def visible_gpus() -> list[str]:
    """GPU ids this machine offers (``CUDA_VISIBLE_DEVICES`` when set, else ``nvidia-smi -L``)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


@dataclass
class ClusterInfo:
    kind: str  # "local", "local-gpu" or "remote"
    scheduler: str
    dashboard: str | None
    workers: int
    threads_per_worker: int | None
    gpus_per_worker: int

    def to_dict(self) -> dict:
        return asdict(self)


@contextmanager
def open_client(*, scheduler: str | None = None, workers: int | None = None, threads_per_worker: int = 1,
                gpus_per_worker: int = 0, dashboard_address: str | None = "127.0.0.1:8787",
                memory_limit: str | float | None = "auto",
                wait_timeout: float = 60.0) -> Iterator[tuple[object, ClusterInfo]]:
    """A :class:`distributed.Client` and what it is connected to; the embedded cluster is closed on exit.

    ``scheduler``: address of a running cluster (``tcp://host:8786``); its workers must see the
    same file paths as this machine and, with ``gpus_per_worker``, offer a ``GPU`` resource
    (``dask worker ... --resources GPU=1``; dask-jobqueue/dask-kubernetes: ``resources`` or
    ``--resources`` in the worker options). Otherwise a local cluster on 127.0.0.1: ``workers``
    processes (default: one per core, or one per ``gpus_per_worker`` GPUs) with
    ``threads_per_worker`` threads each.
    """
    from distributed import Client

    dashboard = dashboard_address if dashboard_address not in (None, "", "none") else None
    if scheduler:
        try:
            client = Client(scheduler, timeout="30s")
        except OSError as exc:  # refused, unreachable, timed out
            from ..core.errors import EngineError

            raise EngineError(f"cannot reach the Dask scheduler {scheduler}: {exc}") from None
        try:
            client.wait_for_workers(1, timeout=wait_timeout)
        except (TimeoutError, OSError) as exc:
            client.close()
            from ..core.errors import EngineError

            raise EngineError(f"no worker joined the scheduler {scheduler} within {wait_timeout:.0f} s ({exc})") \
                from None
        info = client.scheduler_info()
        ws = info.get("workers", {})
        if gpus_per_worker > 0 and not any(w.get("resources", {}).get("GPU", 0) >= gpus_per_worker
                                           for w in ws.values()):
            client.close()
            from ..core.errors import EngineError

            raise EngineError(f"no worker of {scheduler} offers the resource GPU={gpus_per_worker}: start the workers "
                              f"with `dask worker {scheduler} --resources GPU={gpus_per_worker}` (one GPU each)")
        try:
            yield client, ClusterInfo("remote", scheduler, _dashboard_link(client), len(ws), None, gpus_per_worker)
        finally:
            client.close()
        return

    processes_hint = os.cpu_count() or 1
    if gpus_per_worker > 0:
        from distributed import Nanny, Scheduler, SpecCluster

        gpus = visible_gpus()
        if len(gpus) < gpus_per_worker:
            from ..core.errors import EngineError

            raise EngineError(f"--gpus-per-worker {gpus_per_worker}: this machine shows {len(gpus)} GPU(s)")
        n = workers or len(gpus) // gpus_per_worker
        if n * gpus_per_worker > len(gpus):
            from ..core.errors import EngineError

            raise EngineError(f"{n} worker(s) x {gpus_per_worker} GPU(s) needs {n * gpus_per_worker} GPUs; "
                              f"this machine shows {len(gpus)}")
        sched = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": dashboard or ":0",
                                               "dashboard": dashboard is not None}}
        specs = {}
        for i in range(n):
            mine = gpus[i * gpus_per_worker:(i + 1) * gpus_per_worker]
            specs[i] = {"cls": Nanny, "options": {
                "nthreads": threads_per_worker, "host": "127.0.0.1", "resources": {"GPU": gpus_per_worker},
                "env": {"CUDA_VISIBLE_DEVICES": ",".join(mine)}, "memory_limit": memory_limit}}
        cluster = SpecCluster(workers=specs, scheduler=sched, silence_logs=40)
        kind = "local-gpu"
    else:
        from distributed import LocalCluster

        n = workers or max(1, processes_hint // max(1, threads_per_worker))
        cluster = LocalCluster(n_workers=n, threads_per_worker=threads_per_worker, processes=True, host="127.0.0.1",
                               dashboard_address=dashboard, memory_limit=memory_limit, silence_logs=40)
        kind = "local"
    try:
        client = Client(cluster)
        try:
            client.wait_for_workers(n, timeout=wait_timeout)
            yield client, ClusterInfo(kind, cluster.scheduler_address, _dashboard_link(client) if dashboard else None,
                                      n, threads_per_worker, gpus_per_worker)
        finally:
            client.close()
    finally:
        cluster.close()


def _dashboard_link(client) -> str | None:
    try:
        return client.dashboard_link
    except Exception:  # noqa: BLE001 - no dashboard (bokeh missing, or disabled)
        return None
