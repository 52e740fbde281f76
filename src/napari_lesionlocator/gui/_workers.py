"""Background jobs: the api generators run in napari workers; results come back on the GUI thread.

Why this shape:

* The job is one of :mod:`napari_lesionlocator.api`'s generators; napari's ``create_worker`` runs it
  in a thread and checks ``worker.quit()`` at every yield (between lesions and timepoints).
* A :class:`CancelToken` is also passed to the engine, so long steps inside it stop too; the
  resulting :class:`Cancelled` is caught in the worker and turned into a normal "cancelled" end,
  not an error notification.
* Engine progress callbacks run in the worker thread; they are forwarded to the GUI through a Qt
  signal (queued connection), never by touching widgets from the worker.
* Real errors become napari notifications (our own errors by their message, bugs with their
  traceback); the widget also shows the message in its status line.
* ``returned`` handlers run on the GUI thread; they are skipped when the user cancelled, so a
  cancelled job never writes into a layer.
"""

from __future__ import annotations

from collections.abc import Callable, Generator

from qtpy.QtCore import QObject, QTimer, Signal

from ..core.errors import Cancelled, LesionLocatorError
from ..core.progress import CancelToken, ProgressEvent

__all__ = ["JobRunner", "CANCELLED"]


class _Cancelled:
    def __repr__(self) -> str:
        return "CANCELLED"


CANCELLED = _Cancelled()


def _guarded(job: Generator) -> Generator:
    """Run ``job`` to its end; a Cancelled raised inside it becomes the CANCELLED result."""
    try:
        result = yield from job
    except Cancelled:
        return CANCELLED
    return result


def _notify_error(exc: BaseException) -> None:
    """Show a worker error in napari: our own errors by their message, bugs with their traceback.

    (napari 0.9.2's GeneratorWorker does not relay errors itself: its notifying mixin is never
    initialised, so this is the only relay.)
    """
    from napari.utils.notifications import notification_manager, show_error

    if isinstance(exc, LesionLocatorError):
        show_error(str(exc))
    else:
        notification_manager.receive_error(type(exc), exc, exc.__traceback__)


class JobRunner(QObject):
    """Runs at most one job at a time for one widget and reports its life cycle as Qt signals.

    Signals (all delivered on the GUI thread)
    ------------------------------------------
    progressed(ProgressEvent)
        Every step the job yields.
    detail(ProgressEvent)
        Progress the engine reports inside a step.
    succeeded(object)
        The job's return value (not emitted when cancelled or failed).
    cancelled()
        The user cancelled; nothing was applied.
    failed(object)
        The exception that ended the job (napari also shows it as a notification).
    done()
        After any of the three above (and after the steps a handler deferred with :meth:`defer`).
    """

    progressed = Signal(object)
    detail = Signal(object)  # the engine's finer progress inside a job step
    succeeded = Signal(object)
    cancelled = Signal()
    failed = Signal(object)
    done = Signal()
    # Internal: engine callbacks from the worker thread, re-emitted on the GUI thread.
    _engine_progress = Signal(object)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.worker = None
        self.token: CancelToken | None = None
        self._engine_progress.connect(self.detail.emit)
        self._finished_state: str | None = None
        self.last_error: BaseException | None = None
        self._deferred: list[Callable[[], object]] = []
        self._draining = False

    @property
    def running(self) -> bool:
        """True from start() until done: while the worker runs and while deferred steps remain."""
        return self.worker is not None or self._draining or bool(self._deferred)

    def defer(self, step: Callable[[], object]) -> None:
        """Run ``step`` on a later event-loop turn, one step per turn, before ``done``.

        For a ``succeeded`` handler whose work on the GUI thread is long (writing results into
        layers, refreshing the other docks): split into steps, the event loop (repaints, clicks)
        runs between them, and the job still counts as running until the last step is done.
        Outside a job's end (no worker), the step runs at once.
        """
        if self.worker is None and not self._draining:
            step()
            return
        self._deferred.append(step)

    def engine_callback(self, event: ProgressEvent) -> None:
        """Thread-safe progress callback to hand to engines (emits a queued signal)."""
        self._engine_progress.emit(event)

    def start(self, make_job: Callable[[CancelToken, Callable], Generator], *, desc: str, total: int) -> None:
        """Start ``make_job(token, on_progress)`` (an api generator) in a napari worker.

        Raises RuntimeError when a job is already running (the widgets disable their buttons, so
        this only guards programming errors).
        """
        from napari.qt.threading import GeneratorWorker

        if self.running:
            raise RuntimeError("a job is already running; cancel it or wait for it to finish")
        self.token = CancelToken()
        self._finished_state = None
        self.last_error = None
        job = make_job(self.token, self.engine_callback)
        # Built directly rather than with create_worker, which re-raises errors on the GUI thread
        # unless "errored" is pre-connected and, with a current viewer, hooks a status callback
        # that itself fails on the errored signal (napari 0.9.2). Errors are shown by _on_errored.
        # No napari ``progress`` bar either: updating it processes events re-entrantly, which
        # delivered later worker signals inside earlier handlers (out of order). The widget's
        # own progress bar shows the progress.
        worker = GeneratorWorker(_guarded, job)
        self.desc, self.total = desc, int(total)
        worker.yielded.connect(self._on_yielded)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        worker.start()

    def cancel(self) -> None:
        """Ask the running job to stop: at its next yield (quit) or inside the engine (token)."""
        if self.token is not None:
            self.token.cancel()
        if self.worker is not None:
            self.worker.quit()

    # ----------------------------------------------------------- worker signals
    def _on_yielded(self, event) -> None:
        if isinstance(event, ProgressEvent):
            self.progressed.emit(event)

    def _on_returned(self, result) -> None:
        if result is CANCELLED or (self.token is not None and self.token.cancelled):
            self._finished_state = "cancelled"
        else:
            self._finished_state = "succeeded"
            self.succeeded.emit(result)

    def _on_errored(self, exc) -> None:
        self._finished_state = "failed"
        self.last_error = exc
        _notify_error(exc)
        self.failed.emit(exc)

    def _on_aborted(self) -> None:
        self._finished_state = "cancelled"

    @property
    def last_state(self) -> str | None:
        """How the last job ended: "succeeded", "cancelled" or "failed" (None while running)."""
        return None if self.running else self._finished_state

    def _on_finished(self) -> None:
        state = self._finished_state = self._finished_state or "cancelled"
        self.worker = None
        if self._deferred:
            self._draining = True
            QTimer.singleShot(0, lambda: self._drain(state))
            return
        self._end(state)

    def _drain(self, state: str) -> None:
        step = self._deferred.pop(0)
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - shown like a job error; the other steps still run
            self.last_error = exc
            _notify_error(exc)
        if self._deferred:
            QTimer.singleShot(0, lambda: self._drain(state))
            return
        self._draining = False
        self._end(state)

    def _end(self, state: str) -> None:
        if state == "cancelled":
            self.cancelled.emit()
        self.done.emit()
