"""Small Qt building blocks shared by the widgets: engine chooser, image-layer chooser, progress row."""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QStyle,
    QStyledItemDelegate,
    QWidget,
)

from ..core.errors import EngineError
from ..core.progress import ProgressEvent
from ..engines.base import EngineSettings
from ._layers import is_timepoint_layer

if TYPE_CHECKING:
    import napari

__all__ = [
    "EnginePanel",
    "ImageLayerCombo",
    "LesionColourDelegate",
    "ProgressRow",
    "configured_checkpoint",
    "paint_lesion_item",
    "show_end_state",
]


def configured_checkpoint() -> str | None:
    """The LesionLocator checkpoint folder from settings/env/config, or None (never raises)."""
    return _checkpoint_status()[0]


def _checkpoint_status() -> tuple[str | None, str]:
    """(checkpoint folder or None, why not): never raises.

    "Not configured" and "configured but the folder is missing" both mean the engine is not
    offered, but the reason differs and the user needs the exact one (which folder, from where).
    """
    try:
        from ..engines.lesionlocator.config import resolve_checkpoint_path
    except ImportError as exc:
        return None, f"The LesionLocator engine is not installed ({exc})."
    try:
        return str(resolve_checkpoint_path(None)), ""
    except Exception as exc:  # noqa: BLE001 - any config problem: not offered, with its message
        return None, str(exc)


class EnginePanel(QWidget):
    """Engine choice (classical by default) and the LesionLocator options (TTA, folds, device)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QFormLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.engine = QComboBox()
        self.engine.addItem("classical (no weights)", "classical")
        self.checkpoint, reason = _checkpoint_status()
        self.engine.addItem("LesionLocator", "lesionlocator")
        if self.checkpoint is None:
            # Shown but disabled, with the exact reason (not configured, or which configured folder
            # is missing), so users learn how to enable it. Wrapped: a plain-text tooltip never wraps.
            item = self.engine.model().item(1)
            item.setEnabled(False)
            tip = textwrap.fill(f"LesionLocator unavailable: {reason}", 80,
                                break_on_hyphens=False, break_long_words=False)  # keep paths whole
            self.engine.setItemData(1, tip, 3)  # 3 = Qt.ToolTipRole
        self.engine.setToolTip("The engine every dock uses: classical (no weights, any CPU) or the "
                               "LesionLocator model (needs its checkpoint).")
        self.tta = QCheckBox("TTA")
        self.tta.setToolTip("Mirroring test-time augmentation (LesionLocator; slower, a little more accurate).")
        self.folds = QLineEdit()
        self.folds.setPlaceholderText("all folds (e.g. 0,1,2)")
        self.folds.setToolTip("Which folds of the checkpoint to average (empty: all present).")
        self.device = QComboBox()
        self.device.addItems(["cpu", "cuda", "mps"])
        self.device.setToolTip("Where the LesionLocator model runs.")
        # The LesionLocator options beside the engine, shown only when that engine is chosen (in the
        # same row: the docks all open together fit a 1000 px screen with them shown).
        self.options = QWidget()
        row = QHBoxLayout(self.options)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel("Folds"))
        row.addWidget(self.folds, 1)
        row.addWidget(self.device)
        row.addWidget(self.tta)
        engine_row = QHBoxLayout()
        engine_row.setContentsMargins(0, 0, 0, 0)
        engine_row.addWidget(self.engine, 2)
        engine_row.addWidget(self.options, 3)
        layout.addRow("Engine", engine_row)
        self.engine.currentIndexChanged.connect(self._sync)
        self._sync()

    def _sync(self) -> None:
        ll = self.engine_name == "lesionlocator"
        for w in (self.tta, self.folds, self.device):
            w.setEnabled(ll)
        self.options.setVisible(ll)

    @property
    def engine_name(self) -> str:
        return str(self.engine.currentData())

    def settings(self) -> EngineSettings:
        """EngineSettings from the form; EngineError for unreadable folds."""
        if self.engine_name != "lesionlocator":
            return EngineSettings()
        text = self.folds.text().strip()
        folds = None
        if text and text.lower() != "all":
            try:
                folds = tuple(int(t) for t in text.replace(" ", "").split(",") if t)
            except ValueError:
                raise EngineError(f"folds must be comma-separated integers such as 0,1,2 (got {text!r})") from None
        return EngineSettings(checkpoint=self.checkpoint, folds=folds, tta=self.tta.isChecked(),
                              device=self.device.currentText())


class ImageLayerCombo(QComboBox):
    """The viewer's 3D image layers, kept in sync with the layer list (and renames)."""

    def __init__(self, viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self._layers: list = []
        for ev in (viewer.layers.events.inserted, viewer.layers.events.removed, viewer.layers.events.reordered):
            ev.connect(self.refresh)
        self.refresh()

    def refresh(self, event=None) -> None:
        current = self.current_layer()
        layers = [layer for layer in self.viewer.layers if is_timepoint_layer(layer)]
        for layer in layers:
            if layer not in self._layers:
                layer.events.name.connect(self.refresh)
        self._layers = layers
        self.blockSignals(True)
        self.clear()
        for layer in layers:
            self.addItem(layer.name)
        if current in layers:
            self.setCurrentIndex(layers.index(current))
        self.blockSignals(False)
        if current not in layers:
            self.currentIndexChanged.emit(self.currentIndex())

    def current_layer(self):
        i = self.currentIndex()
        return self._layers[i] if 0 <= i < len(self._layers) else None

    def set_layer(self, layer) -> None:
        if layer in self._layers:
            self.setCurrentIndex(self._layers.index(layer))

    def disconnect_viewer(self) -> None:
        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed,
                   self.viewer.layers.events.reordered):
            ev.disconnect(self.refresh)
        for layer in self._layers:
            layer.events.name.disconnect(self.refresh)


class ProgressRow(QWidget):
    """Progress bar, status line and a Cancel button.

    One scale for the whole job: the job's own steps (a lesion, a follow-up) divide the bar, and
    the engine's finer progress inside a step moves it within that step's share. The bar only
    moves forward.
    """

    _RESOLUTION = 1000

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        self.bar = QProgressBar()
        self.bar.setRange(0, self._RESOLUTION)
        self.bar.setValue(0)
        self.cancel = QPushButton("Cancel")
        self.cancel.setToolTip("Stop the running job; nothing is written.")
        self.cancel.setEnabled(False)
        row.addWidget(self.bar, 1)
        row.addWidget(self.cancel)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self._step = (0.0, 1.0)  # (start, width) of the current job step, as fractions of the bar
        self.values: list[int] = []  # every value the bar took during the current job (for tests)

    def start_job(self, total: int | None = None) -> None:
        self._step = (0.0, 1.0)
        self.values = []
        self.bar.setRange(0, self._RESOLUTION)
        self.bar.setValue(0)

    def _advance(self, fraction: float) -> None:
        value = int(round(min(max(fraction, 0.0), 1.0) * self._RESOLUTION))
        if value > self.bar.value():
            self.bar.setValue(value)
            self.values.append(value)

    def show_event(self, event: ProgressEvent) -> None:
        """A step of the job itself (e.g. ``lesion 2 of 3``)."""
        total = max(int(event.total), 1)
        step = min(max(int(event.step), 0), total)
        self._step = (step / total, 1.0 / total)
        self._advance(step / total)
        if event.message:
            self.status.setText(event.message)

    def show_detail(self, event: ProgressEvent) -> None:
        """The engine's progress inside the current step (moves the bar within that step's share)."""
        total = int(event.total)
        if total > 0:
            start, width = self._step
            self._advance(start + width * min(max(int(event.step), 0), total) / total)

    def set_running(self, running: bool) -> None:
        self.cancel.setEnabled(running)
        if running:
            self.start_job()

    def finish(self) -> None:
        """The job's results are written: the bar is full."""
        self._advance(1.0)


def show_end_state(runner, row: ProgressRow) -> None:
    """Status line after a job: the error or the cancellation (success messages come from the widget)."""
    if runner.last_state == "failed":
        row.status.setText(f"Failed: {runner.last_error}")
    elif runner.last_state == "cancelled":
        row.status.setText("Cancelled: nothing was changed.")


def paint_lesion_item(item, lesion_id: int) -> None:
    """Give a table item the lesion's colour as background with readable (black/white) text."""
    from qtpy.QtGui import QBrush, QColor

    from ._layers import lesion_colour

    r, g, b = (float(c) for c in lesion_colour(lesion_id)[:3])
    item.setBackground(QBrush(QColor.fromRgbF(r, g, b)))
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    item.setForeground(QBrush(QColor("black" if luminance > 0.5 else "white")))


class LesionColourDelegate(QStyledItemDelegate):
    """Draws a lesion-coloured cell (see :func:`paint_lesion_item`) in its colour even when its row
    is selected: the selection shows as a frame in the highlight colour around the cell instead of
    the highlight replacing the colour (the colour is how the reader finds the lesion in the layers)."""

    def paint(self, painter, option, index) -> None:
        from qtpy.QtCore import Qt
        from qtpy.QtGui import QPen
        from qtpy.QtWidgets import QStyleOptionViewItem

        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        if index.data(Qt.ItemDataRole.BackgroundRole) is None or not selected:
            super().paint(painter, option, index)
            return
        opt = QStyleOptionViewItem(option)
        opt.state &= ~QStyle.StateFlag.State_Selected  # the lesion colour and its readable text
        opt.state &= ~QStyle.StateFlag.State_HasFocus
        super().paint(painter, opt, index)
        painter.save()
        pen = QPen(option.palette.highlight().color())
        pen.setWidth(2)
        painter.setPen(pen)
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.drawRect(option.rect.adjusted(1, 1, -1, -1))
        painter.restore()
