"""Run the classical engine's jobs in a helper process, so the GUI thread never waits for the GIL.

Why: the classical engine spends most of its time in SimpleITK, scikit-image and scipy calls that
hold the GIL for their whole duration (SimpleITK's filters never release it). In a worker *thread*
the GUI thread then cannot run at all while such a call lasts: the longest event-loop stalls
during segmentation and propagation (0.3-1.7 s on a loaded 2-core machine) were the GUI thread
waiting for the GIL, not doing work. In a separate process the engine has its own interpreter.

How: one helper process per GUI process (``spawn``: a fresh interpreter without Qt, threads or the
user's ``__main__``), started in
the background when a dock opens and reused for every job, so the imports are paid once. A job is
one of :mod:`napari_lesionlocator.api`'s generators run there; its progress comes back through a
queue and is re-yielded here, in the GUI's worker thread, which only waits on the queue (so it
never holds the GIL for long). Images travel through shared memory (no pickling of volumes); the
results (per-lesion crops and the display label map) are pickled back. Cancel sets an event the
helper's :class:`CancelToken` checks. When no helper can start, jobs run in the worker thread as
before (``LESIONLOCATOR_NO_HELPER_PROCESS=1`` forces that).

The LesionLocator engine stays in the worker thread: torch releases the GIL in its kernels, and its
loaded models and per-image caches live in the GUI process across button presses.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
from collections.abc import Generator
from typing import Any

import numpy as np

from ..core.errors import Cancelled
from ..core.image import Image
from ..core.progress import CancelToken, ProgressEvent

__all__ = ["helper_available", "start_helper", "run_in_helper", "stop_helper"]

_state: dict[str, Any] = {}
_lock = threading.Lock()


# ----------------------------------------------------------------------------- helper side
_child: dict[str, Any] = {}


class _EventToken(CancelToken):
    """A CancelToken on the cross-process cancel event (same interface: set/is_set)."""

    def __init__(self, event) -> None:
        super().__init__()
        self._event = event


def _child_init(events, cancel) -> None:
    _child["events"], _child["cancel"] = events, cancel


def _warm() -> bool:
    """Import the classical engine in the helper (done once, in the background)."""
    from ..engines.base import create_engine

    _child.setdefault("engine", create_engine("classical"))
    return True


def _attach(spec) -> tuple[Image, Any]:
    from multiprocessing import shared_memory

    name, shape, dtype, meta = spec
    shm = shared_memory.SharedMemory(name=name)
    array = np.ndarray(shape, dtype=np.dtype(dtype), buffer=shm.buf)
    return Image(array=array, **meta), shm


def _child_run(kind: str, images: list, payload: dict):
    """Run one api job in the helper; progress goes to the queue, the result is returned (pickled)."""
    from .. import api

    _warm()
    engine = _child["engine"]
    events, cancel = _child["events"], _child["cancel"]
    token = _EventToken(cancel)
    opened = [_attach(spec) for spec in images]
    try:
        ims = [im for im, _ in opened]

        def detail(event: ProgressEvent) -> None:
            events.put(("detail", event))

        if kind == "segment":
            gen = api.iter_segment(engine, ims[0], payload["prompts"], cancel=token, on_progress=detail)
        elif kind == "track":
            gen = api.iter_track_series(engine, ims[0], payload["baseline_labels"], ims[1:],
                                        lesion_ids=payload.get("lesion_ids"), cancel=token, on_progress=detail)
        else:
            raise ValueError(f"unknown helper job {kind!r}")
        try:
            while True:
                try:
                    event = next(gen)
                except StopIteration as stop:
                    result = stop.value
                    break
                if isinstance(event, ProgressEvent):
                    events.put(("step", event))
        except Cancelled:
            return "CANCELLED"
        # the result refers to the shared arrays only through the images, which stay here
        return result
    finally:
        del ims
        for _, shm in opened:
            shm.close()


# ----------------------------------------------------------------------------- GUI side
@contextlib.contextmanager
def _main_hidden():
    """Start processes without them importing the user's ``__main__``.

    ``spawn`` re-imports the parent's main module in the child (so that its functions can be
    unpickled); a script that opens napari without an ``if __name__ == "__main__"`` guard would run
    again there. The helper's job lives in this module, so the main module is not needed.
    """
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__dict__["__spec__"] = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


def helper_available() -> bool:
    return not os.environ.get("LESIONLOCATOR_NO_HELPER_PROCESS") and _state.get("failed") is None


def start_helper():
    """Start the helper process once (in the background: returns at once); None when it cannot start."""
    if not helper_available():
        return None
    with _lock:
        if "pool" in _state:
            return _state["pool"]
        try:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            ctx = mp.get_context("spawn")
            events, cancel = ctx.Queue(), ctx.Event()
            pool = ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=_child_init,
                                       initargs=(events, cancel))
            with _main_hidden():  # the process starts here, at the first submit
                warm = pool.submit(_warm)
            _state.update(pool=pool, events=events, cancel=cancel, warm=warm)
        except Exception as exc:  # noqa: BLE001 - no helper: jobs run in the worker thread
            _state["failed"] = exc
            return None
        return pool


def stop_helper() -> None:
    with _lock:
        pool = _state.pop("pool", None)
        for key in ("events", "cancel", "warm"):
            _state.pop(key, None)
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


def _share(image: Image):
    from multiprocessing import shared_memory

    array = np.ascontiguousarray(image.array)
    shm = shared_memory.SharedMemory(create=True, size=max(1, array.nbytes))
    view = np.ndarray(array.shape, dtype=array.dtype, buffer=shm.buf)
    view[...] = array
    meta = {"geometry": image.geometry, "name": image.name, "acquisition_date": image.acquisition_date,
            "source": image.source, "modality": image.modality}
    return (shm.name, array.shape, array.dtype.str, meta), shm


def run_in_helper(kind: str, images: list[Image], payload: dict, token: CancelToken,
                  on_progress) -> Generator[ProgressEvent | None, None, Any]:
    """Run ``kind`` ("segment" or "track") in the helper; yields its progress, returns its result.

    Runs in the GUI's worker thread. Raises what the job raised (our errors keep their message).
    """
    pool = start_helper()
    if pool is None:
        raise RuntimeError("no helper process")
    events, cancel = _state["events"], _state["cancel"]
    cancel.clear()
    while True:  # events left over from an earlier, cancelled job
        try:
            events.get_nowait()
        except queue.Empty:
            break
    shared = [_share(im) for im in images]
    future = None
    try:
        future = pool.submit(_child_run, kind, [spec for spec, _ in shared], payload)
        while True:
            try:
                tag, event = events.get(timeout=0.05)
            except queue.Empty:
                if future.done():
                    break
                if token.cancelled:
                    cancel.set()
                yield None  # lets the worker's quit() take effect
                continue
            if tag == "step":
                yield event
            elif on_progress is not None:
                on_progress(event)
        while True:
            try:
                tag, event = events.get_nowait()
            except queue.Empty:
                break
            if tag == "step":
                yield event
        result = future.result()
        if isinstance(result, str) and result == "CANCELLED":
            raise Cancelled("cancelled")
        return result
    finally:
        if future is not None and not future.done():
            cancel.set()  # the worker was stopped here (quit): stop the helper's job too
        for _, shm in shared:
            shm.close()
            shm.unlink()
