"""The restore-after-crash offer, made when the first LesionLocator widget of a viewer opens.

The Lesion table dock shows its own bar when it opens; any other first widget (prompts, timeline,
review, export) gets a napari notification with *Restore* (opens the Lesion table dock and restores
the autosave there) and *Discard*. Once per viewer. Thread: GUI thread.
"""

from __future__ import annotations

import weakref

__all__ = ["offer_recovery_soon", "offer_recovery", "RECOVERY_MESSAGE"]

RECOVERY_MESSAGE = "An autosaved LesionLocator review was found"


def offer_recovery_soon(session) -> None:
    """Offer the newest recovery once the widget being opened is built (next event-loop turn)."""
    from qtpy.QtCore import QTimer

    ref = weakref.ref(session)
    QTimer.singleShot(0, lambda: _offer(ref))


def _offer(ref) -> None:
    session = ref()
    if session is not None:
        offer_recovery(session)


def _table_of(viewer):
    from .lesion_table_widget import LesionTableWidget

    try:
        window = viewer.window._qt_window
    except (AttributeError, RuntimeError):
        return None
    found = window.findChildren(LesionTableWidget)
    return found[0] if found else None


def offer_recovery(session, root=None):
    """Notify the newest autosave of another review (returns it, or None when there is none or the
    Lesion table dock, which has its own offer, is open)."""
    from napari.utils.notifications import Notification, NotificationSeverity, notification_manager

    from ..io.session import discard_recovery, latest_recovery

    viewer = session.viewer
    if getattr(session, "_recovery_offered", False) or _table_of(viewer) is not None:
        return None
    session._recovery_offered = True
    from ._table_study import _MODELS

    model = _MODELS.get(id(session))
    exclude = [model._study.session_id] if model is not None and model._study is not None else []
    try:
        rec = latest_recovery(root, exclude=exclude)
    except OSError:
        rec = None
    if rec is None:
        return None

    def restore(_notification=None) -> None:
        table = open_table(viewer)
        if table is None:
            return
        if session.image_layers():
            from qtpy.QtWidgets import QMessageBox

            answer = QMessageBox.question(
                table, "Restore the autosaved review", "The scans and lesions shown now are closed and replaced "
                "by the autosaved review. Continue?")
            if answer != QMessageBox.StandardButton.Yes:
                return
        table.recovery = rec
        table.restore_recovery()

    def discard(_notification=None) -> None:
        discard_recovery(rec.session_id, root)
        table = _table_of(viewer)
        if table is not None:
            table.recovery = None
            table.recovery_bar.setVisible(False)

    session.recovery_offer = rec
    notification_manager.dispatch(Notification(
        f"{RECOVERY_MESSAGE} ({rec.describe()}). Restore it?", severity=NotificationSeverity.INFO,
        actions=[("Restore", restore), ("Discard", discard)]))
    session.recovery_actions = {"Restore": restore, "Discard": discard}
    return rec


def open_table(viewer):
    """The viewer's Lesion table dock widget (opened when it is not)."""
    table = _table_of(viewer)
    if table is not None:
        return table
    _, table = viewer.window.add_plugin_dock_widget("napari-lesionlocator", "Lesion table")
    return table
