"""Keep this plugin's docks on the screen when all of them are open together.

napari stacks every new dock of an area one above the other, and Qt then grows the main window
until each dock has its minimum height: with all six docks of this plugin at 1600x1000 the window
became ~1500 px tall, the lower docks off the screen. The secondary docks (Lesion review, Export,
Rate segmentations) therefore join each other as tabs when the column they land in would not fit
the screen's height; the prompt and Timeline docks, used together during the work, stay apart.
The window is then brought back inside the screen whenever Qt grows it past the screen (a dock
whose content grew, e.g. a status line that appeared) while its docks' minimum sizes still fit.
"""

from __future__ import annotations

import contextlib

from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtWidgets import QDockWidget, QMainWindow, QWidget

__all__ = ["keep_on_screen", "dock_of", "column_height_needed", "fit_secondary_dock"]

_SECONDARY = "_lesionlocator_secondary_dock"
_SEPARATOR = 6  # px between stacked docks (Qt's separator plus margins)


def dock_of(widget: QWidget) -> QDockWidget | None:
    dock = widget.parentWidget()
    while dock is not None and not isinstance(dock, QDockWidget):
        dock = dock.parentWidget()
    return dock


def _is_secondary(dock: QDockWidget) -> bool:
    inner = dock.widget()
    if inner is None:
        return False
    return bool(getattr(inner, _SECONDARY, False)) or any(
        getattr(w, _SECONDARY, False) for w in inner.findChildren(QWidget))


def _column(main: QMainWindow, area) -> list[QDockWidget]:
    return [d for d in main.findChildren(QDockWidget)
            if d.parentWidget() is main and not d.isFloating() and not d.isHidden() and main.dockWidgetArea(d) == area]


def column_height_needed(main: QMainWindow, area) -> int:
    """The height the docks of ``area`` need at their minimum sizes: tabified docks count once
    (the tallest of the group, plus the tab bar), stacked ones add up."""
    docks = _column(main, area)
    seen: set[int] = set()
    total = 0
    for d in docks:
        if id(d) in seen:
            continue
        group = [d, *(t for t in main.tabifiedDockWidgets(d) if t in docks)]
        seen.update(id(g) for g in group)
        total += max(g.minimumSizeHint().height() for g in group) + (28 if len(group) > 1 else 0)
    return total + _SEPARATOR * max(0, len(seen) - 1)


def _room(main: QMainWindow) -> int:
    """Height the dock column can have on this screen: the screen's free height less the window's
    frame, menu bar and status bar."""
    screen = main.screen() if hasattr(main, "screen") else None
    if screen is None:
        return 10**6
    frame = max(0, main.frameGeometry().height() - main.geometry().height())
    chrome = sum(w.sizeHint().height() for w in (main.menuBar(), main.statusBar()) if w is not None and w.isVisible())
    return screen.availableGeometry().height() - frame - chrome


def fit_secondary_dock(widget: QWidget) -> bool:
    """If ``widget``'s dock makes its column taller than the screen, make it a tab of another
    secondary dock of this plugin in that column (and show it). Returns whether it was tabified."""
    dock = dock_of(widget)
    main = dock.parentWidget() if dock is not None else None
    if not isinstance(main, QMainWindow) or dock.isFloating():
        return False
    area = main.dockWidgetArea(dock)
    if area not in (Qt.DockWidgetArea.RightDockWidgetArea, Qt.DockWidgetArea.LeftDockWidgetArea):
        return False
    tabified = False
    if column_height_needed(main, area) > _room(main) and not main.tabifiedDockWidgets(dock):
        hosts = [d for d in _column(main, area) if d is not dock and _is_secondary(d)]
        if hosts:
            main.tabifyDockWidget(hosts[0], dock)
            dock.show()
            dock.raise_()
            tabified = True
    _back_on_screen(main)
    return tabified


def _back_on_screen(main: QMainWindow) -> None:
    screen = main.screen() if hasattr(main, "screen") else None
    if screen is None or main.isMaximized() or main.isFullScreen():
        return
    free = screen.availableGeometry()
    frame = main.frameGeometry()
    if frame.height() <= free.height() and frame.width() <= free.width():
        return
    extra_h = frame.height() - main.geometry().height()
    extra_w = frame.width() - main.geometry().width()
    main.resize(min(main.width(), free.width() - extra_w), min(main.height(), free.height() - extra_h))


class _OnShow(QObject):
    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt naming
        if event.type() == QEvent.Type.Show and not getattr(obj, "_lesionlocator_fitted", False):
            obj._lesionlocator_fitted = True
            QTimer.singleShot(0, lambda: _fit_later(obj))
        return False


class _WindowGuard(QObject):
    """On the main window: a resize past the screen is undone (down to the screen, never below the
    window's minimum), one event-loop turn later."""

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt naming
        if event.type() == QEvent.Type.Resize and not getattr(self, "_pending", False):
            self._pending = True

            def fix() -> None:
                self._pending = False
                with contextlib.suppress(RuntimeError):  # the window is gone
                    _back_on_screen(obj)

            QTimer.singleShot(0, fix)
        return False


def _guard_window(main: QMainWindow) -> None:
    if getattr(main, "_lesionlocator_window_guard", None) is None:
        main._lesionlocator_window_guard = _WindowGuard(main)
        main.installEventFilter(main._lesionlocator_window_guard)


def _fit_later(widget: QWidget) -> None:
    try:
        fit_secondary_dock(widget)
        dock = dock_of(widget)
        main = dock.parentWidget() if dock is not None else None
        if isinstance(main, QMainWindow):
            _guard_window(main)
        QTimer.singleShot(100, lambda: _back_on_screen_of(widget))  # once Qt has laid out the move
    except RuntimeError:  # the widget was deleted before the timer fired
        pass


def _back_on_screen_of(widget: QWidget) -> None:
    try:
        dock = dock_of(widget)
    except RuntimeError:
        return
    main = dock.parentWidget() if dock is not None else None
    if isinstance(main, QMainWindow):
        _back_on_screen(main)


def keep_on_screen(widget: QWidget) -> None:
    """Mark ``widget`` as a secondary dock of this plugin: when its dock first shows, it becomes a
    tab of another secondary dock if the column would not fit the screen otherwise."""
    setattr(widget, _SECONDARY, True)
    widget._lesionlocator_dock_filter = _OnShow(widget)
    widget.installEventFilter(widget._lesionlocator_dock_filter)
