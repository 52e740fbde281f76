"""GUI test helpers (used by tests/gui/conftest.py and the tests): real mouse and key events on the canvas.

``Mouse`` sends Qt mouse events (press, move with the button held, release) to the canvas widget,
at the canvas pixel where a world point (mm, z y x) is drawn in the current 2D view, so the events
travel through vispy and napari's own mouse bindings exactly as a reader's would.
"""

from __future__ import annotations

import numpy as np

PLUGIN = "napari-lesionlocator"
DOCKS = ("Lesion prompts", "Timeline", "Lesion review")


class Mouse:
    def __init__(self, viewer, qtbot) -> None:
        self.viewer = viewer
        self.qtbot = qtbot
        self.canvas = viewer.window._qt_viewer.canvas
        self.native = self.canvas.native

    def pixel(self, world_zyx) -> tuple[float, float]:
        """Canvas pixel (x, y) of a world point in the 2D view (displayed axes y, x)."""
        from napari_lesionlocator.gui._view import camera

        cam = camera(self.viewer)
        displayed = list(self.viewer.dims.displayed)
        world = np.asarray(world_zyx, dtype=float)
        centre = np.asarray(cam.center, dtype=float)[-2:]
        wy, wx = world[displayed[0]], world[displayed[1]]
        w, h = self.native.width(), self.native.height()
        return (wx - centre[1]) * cam.zoom + w / 2.0, (wy - centre[0]) * cam.zoom + h / 2.0

    def _send(self, kind: str, x: float, y: float, modifiers=None) -> None:
        from qtpy.QtCore import QEvent, QPointF, Qt
        from qtpy.QtGui import QMouseEvent
        from qtpy.QtWidgets import QApplication

        mods = modifiers if modifiers is not None else Qt.KeyboardModifier.NoModifier
        ev_type = {"press": QEvent.Type.MouseButtonPress, "move": QEvent.Type.MouseMove,
                   "release": QEvent.Type.MouseButtonRelease}[kind]
        button = Qt.MouseButton.LeftButton if kind != "move" else Qt.MouseButton.NoButton
        buttons = Qt.MouseButton.NoButton if kind == "release" else Qt.MouseButton.LeftButton
        p = QPointF(float(x), float(y))
        QApplication.sendEvent(self.native, QMouseEvent(ev_type, p, self.native.mapToGlobal(p), button, buttons,
                                                         mods))
        QApplication.processEvents()

    def click(self, world_zyx, modifiers=None) -> None:
        x, y = self.pixel(world_zyx)
        self._send("press", x, y, modifiers)
        self._send("release", x, y, modifiers)
        self.qtbot.wait(20)

    def drag(self, world_a, world_b, modifiers=None, steps: int = 6) -> None:
        """Press at ``world_a``, move with the button held, release at ``world_b``."""
        (xa, ya), (xb, yb) = self.pixel(world_a), self.pixel(world_b)
        self._send("press", xa, ya, modifiers)
        for t in np.linspace(0, 1, steps + 1)[1:]:
            self._send("move", xa + t * (xb - xa), ya + t * (yb - ya), modifiers)
        self._send("release", xb, yb, modifiers)
        self.qtbot.wait(20)

    def key(self, key, modifiers=None) -> None:
        """A real key press on the canvas (napari's keymaps: active layer, then viewer)."""
        from qtpy.QtCore import Qt

        self.qtbot.keyClick(self.native, key, modifiers if modifiers is not None else Qt.KeyboardModifier.NoModifier)
        self.qtbot.wait(20)


def wait_idle(qtbot, widget, timeout: int = 120_000) -> None:
    busy = (lambda: widget.busy) if hasattr(widget, "busy") else (lambda: widget.runner.running)
    qtbot.waitUntil(lambda: not busy(), timeout=timeout)


def notifications_since(n: int) -> list[str]:
    from napari.utils.notifications import notification_manager

    return [str(r.message) for r in notification_manager.records[n:]]


def n_notifications() -> int:
    from napari.utils.notifications import notification_manager

    return len(notification_manager.records)
