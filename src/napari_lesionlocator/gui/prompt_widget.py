"""PromptWidget ("Lesion prompts"): click or box lesions on a CT image and segment them in the background.

Workflow: choose the CT image layer and the engine, pick point or box mode, click lesions (each
click is a new lesion id) or draw rectangles on a slice and set their slice range, press Segment.
Only prompts not segmented yet are sent; each becomes one lesion id in the image's Labels layer
(one undo step per run, Ctrl+Z in the Labels layer undoes it). Prompting an existing lesion again
(select it, tick "re-prompt") replaces its mask. "Delete lesion" removes it at every timepoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QLabeledRangeSlider

from .. import api
from ..core.errors import LesionLocatorError
from ._gc import freeze_long_lived_objects
from ._layers import apply_lesion_labels, lesion_ids_in, remove_lesions
from ._panels import EnginePanel, ImageLayerCombo, ProgressRow, show_end_state
from ._prompt_layers import PromptLayers, prompt_layer_ids
from ._session import AnnotationSession, preload_engine_modules
from ._view import centre_view
from ._workers import JobRunner

if TYPE_CHECKING:
    import napari

__all__ = ["PromptWidget", "SHORTCUTS", "centre_view"]

# Viewer-wide shortcuts (Alt+letter: napari's defaults use none of these).
SHORTCUTS = {
    "Alt-P": "point mode (click a lesion)",
    "Alt-B": "box mode (draw a rectangle, then set its slice range)",
    "Alt-S": "segment the new prompts",
    "Alt-N": "next lesion (select it and centre the view)",
}


def _notify(kind: str, message: str) -> None:
    from napari.utils import notifications

    {"info": notifications.show_info, "warning": notifications.show_warning,
     "error": notifications.show_error}[kind](message)


class PromptWidget(QWidget):
    """Dock widget for point/box prompts, segmentation, lesion selection and deletion.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        Injected by napari (npe2 widget contribution).
    """

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = AnnotationSession(napari_viewer)
        self.runner = JobRunner(self)
        freeze_long_lived_objects(napari_viewer)  # short full GCs: see _gc
        preload_engine_modules()  # engine imports off the first run: see _session
        self._prompt_layers: dict[str, PromptLayers] = {}
        self._running_image = None
        # Engine notes already shown by this widget: an engine may repeat its standing notes (e.g.
        # the LesionLocator engine's "using fold(s) ... from ..." with every prompt of every run);
        # each distinct note is shown once, lesion-specific ones stay in the status line too.
        self._shown_messages: set[str] = set()

        self.image_combo = ImageLayerCombo(napari_viewer)
        self.engine_panel = EnginePanel()
        self.point_mode = QRadioButton("Point")
        self.box_mode = QRadioButton("Box")
        self.point_mode.setChecked(True)
        self._modes = QButtonGroup(self)
        self._modes.addButton(self.point_mode)
        self._modes.addButton(self.box_mode)
        self.z_range = QLabeledRangeSlider(Qt.Orientation.Horizontal)
        self.z_range.setEnabled(False)
        self.z_range.setVisible(False)  # shown once a box exists
        self.z_label = QLabel("Box slices (z): draw a rectangle first")
        self.segment_button = QPushButton("Segment new prompts")
        self.lesion_spin = QSpinBox()
        self.lesion_spin.setRange(0, 2**31 - 1)
        self.lesion_spin.setSpecialValueText("none")
        self.reprompt = QCheckBox("re-prompt this lesion (next prompt replaces its mask)")
        self.next_button = QPushButton("Next lesion")
        self.delete_button = QPushButton("Delete lesion (all timepoints)")
        self.progress = ProgressRow()

        form = QFormLayout()
        form.addRow("CT image", self.image_combo)
        modes = QHBoxLayout()
        modes.addWidget(self.point_mode)
        modes.addWidget(self.box_mode)
        form.addRow("Prompt", modes)
        box_group = QGroupBox("Box z-extent")
        box_layout = QVBoxLayout(box_group)
        box_layout.addWidget(self.z_label)
        box_layout.addWidget(self.z_range)
        lesion_group = QGroupBox("Lesion")
        lesion_form = QFormLayout(lesion_group)
        lesion_form.addRow("Current id", self.lesion_spin)
        lesion_form.addRow(self.reprompt)
        buttons = QHBoxLayout()
        buttons.addWidget(self.next_button)
        buttons.addWidget(self.delete_button)
        lesion_form.addRow(buttons)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.engine_panel)
        layout.addWidget(box_group)
        layout.addWidget(self.segment_button)
        layout.addWidget(self.progress)
        layout.addWidget(self.progress.status)
        layout.addWidget(lesion_group)
        layout.addStretch(1)
        self.setToolTip("Shortcuts:\n" + "\n".join(f"{k.replace('-', '+')}: {v}" for k, v in SHORTCUTS.items()))

        self.point_mode.toggled.connect(lambda on: on and self.activate_mode("point"))
        self.box_mode.toggled.connect(lambda on: on and self.activate_mode("box"))
        self.segment_button.clicked.connect(self.segment)
        self.progress.cancel.clicked.connect(self.cancel)
        self.next_button.clicked.connect(self.next_lesion)
        self.delete_button.clicked.connect(self.delete_current_lesion)
        self.reprompt.toggled.connect(self._sync_target)
        self.lesion_spin.valueChanged.connect(self._sync_target)
        self.z_range.valueChanged.connect(self._on_z_range)
        self.runner.progressed.connect(self.progress.show_event)
        self.runner.succeeded.connect(self._apply_result)
        self.runner.done.connect(self._on_done)
        self._bind_keys()

    # ------------------------------------------------------------------ keys
    def _bind_keys(self) -> None:
        actions = {"Alt-P": lambda v: self.point_mode.setChecked(True) or self.activate_mode("point"),
                   "Alt-B": lambda v: self.box_mode.setChecked(True) or self.activate_mode("box"),
                   "Alt-S": lambda v: self.segment(),
                   "Alt-N": lambda v: self.next_lesion()}
        for key, func in actions.items():
            self.viewer.bind_key(key, func, overwrite=True)

    # ------------------------------------------------------------------ prompt layers
    def prompt_layers(self, image_layer=None) -> PromptLayers | None:
        """Prompt layers of the chosen (or given) image layer, created on first use."""
        image_layer = image_layer or self.image_combo.current_layer()
        if image_layer is None:
            return None
        key = str(image_layer.unique_id)
        if key not in self._prompt_layers:
            pl = PromptLayers(self.viewer, image_layer, self.next_lesion_id)
            pl.boxes.events.highlight.connect(self._sync_z_range)
            pl.boxes.events.data.connect(self._sync_z_range)
            self._prompt_layers[key] = pl
            self.session.labels_layer_for(image_layer)
        return self._prompt_layers[key]

    def next_lesion_id(self) -> int:
        """One more than every id in use (labels at any timepoint and any prompt layer)."""
        used = set(self.session.all_lesion_ids()) | prompt_layer_ids(self.viewer)
        return max(used, default=0) + 1

    def activate_mode(self, mode: str) -> None:
        """Select the points (point mode) or shapes (box mode) layer in its add mode."""
        pl = self.prompt_layers()
        if pl is None:
            _notify("warning", "Open a CT image first (File > Open, or File > Open Sample).")
            return
        layer = pl.points if mode == "point" else pl.boxes
        layer.visible = True
        self.viewer.layers.selection.active = layer
        layer.mode = "add" if mode == "point" else "add_rectangle"

    def _sync_target(self, *_) -> None:
        pl = self.prompt_layers() if self.image_combo.current_layer() is not None else None
        if pl is not None:
            value = self.lesion_spin.value()
            pl.target_id = value if (self.reprompt.isChecked() and value > 0) else None

    # ------------------------------------------------------------------ box z-extent
    def _selected_box_row(self, pl: PromptLayers) -> int | None:
        n = len(pl.boxes.data)
        if n == 0:
            return None
        sel = sorted(pl.boxes.selected_data)
        return sel[-1] if sel else n - 1

    def _sync_z_range(self, *_) -> None:
        pl = self.prompt_layers()
        row = self._selected_box_row(pl) if pl else None
        if row is None or row >= len(pl.boxes.features):
            self.z_range.setEnabled(False)
            self.z_range.setVisible(False)
            self.z_label.setText("Box slices (z): draw a rectangle first")
            return
        feats = pl.boxes.features
        self.z_range.blockSignals(True)
        self.z_range.setRange(0, pl.geometry.shape[0] - 1)
        self.z_range.setValue((int(feats["z0"].iloc[row]), int(feats["z1"].iloc[row])))
        self.z_range.blockSignals(False)
        self.z_range.setEnabled(True)
        self.z_range.setVisible(True)
        self.z_label.setText(f"Box slices (z) of lesion {int(feats['lesion_id'].iloc[row])}")

    def _on_z_range(self, value) -> None:
        pl = self.prompt_layers()
        row = self._selected_box_row(pl) if pl else None
        if row is not None:
            pl.set_z_range(row, int(value[0]), int(value[1]))

    # ------------------------------------------------------------------ segmentation
    def segment(self) -> None:
        """Segment every prompt not segmented yet, in a background worker."""
        if self.runner.running:
            _notify("info", "A segmentation is already running; cancel it or wait.")
            return
        image_layer = self.image_combo.current_layer()
        pl = self.prompt_layers(image_layer)
        if pl is None:
            _notify("warning", "Open a CT image first (File > Open, or File > Open Sample).")
            return
        try:
            pending = pl.pending()
            if not pending:
                _notify("info", "No new prompts: click a lesion (point mode) or draw a box first.")
                return
            engine_name, settings = self.engine_panel.engine_name, self.engine_panel.settings()
            image = self.session_image(image_layer)
        except LesionLocatorError as exc:
            _notify("error", str(exc))
            return
        self.session.labels_layer_for(image_layer)  # exists before the run, so nothing is created after it
        prompts = [p for p, _ in pending]
        self._job = (image_layer, pl, [k for _, k in pending], [p.lesion_id for p in prompts])
        self._set_running(True)
        self.progress.status.setText(f"Segmenting {len(prompts)} lesion(s) with the {engine_name} engine...")
        session = self.session

        def job(token, callback):
            # Runs in the worker thread: the engine is created (imports, weights) there too, once
            # per widget session, so the GUI never waits for it.
            engine = session.engine(engine_name, settings)
            return (yield from api.iter_segment(engine, image, prompts, cancel=token, on_progress=callback))

        self.runner.start(job, desc="Segmenting lesions", total=len(prompts) + 2)

    def session_image(self, image_layer):
        from ._layers import image_from_layer

        return image_from_layer(image_layer)

    def cancel(self) -> None:
        self.runner.cancel()

    def _set_running(self, running: bool) -> None:
        self.progress.set_running(running)
        self.segment_button.setEnabled(not running)
        self.delete_button.setEnabled(not running)

    def _on_done(self) -> None:
        self._set_running(False)
        show_end_state(self.runner, self.progress)

    def _apply_result(self, result) -> None:
        """GUI thread: write the new masks into the image's Labels layer as one undo step."""
        image_layer, pl, keys, ids = self._job
        if image_layer not in self.viewer.layers:
            _notify("warning", f"{image_layer.name} was closed during the run; its results were dropped.")
            return
        labels_layer = self.session.labels_layer_for(image_layer)
        empty = set(result.empty_ids)
        written = [lid for lid in ids if lid not in empty]
        changed = apply_lesion_labels(labels_layer, result.labels.array, written)
        pl.mark_done(keys)
        for message in dict.fromkeys(result.messages):  # distinct, in order
            if message not in self._shown_messages:
                self._shown_messages.add(message)
                _notify("warning", message)
        if written:
            self.lesion_spin.setValue(max(written))
            labels_layer.selected_label = max(written)
        self.reprompt.setChecked(False)
        self.progress.status.setText(
            f"Segmented {len(written)} lesion(s) ({changed} voxels changed)"
            + (f"; no lesion found for id(s) {sorted(empty)}" if empty else "")
            + ". Ctrl+Z in the labels layer undoes it."
        )

    # ------------------------------------------------------------------ lesions
    def next_lesion(self) -> int | None:
        """Select the next existing lesion id (wrapping) and centre the view on it."""
        ids = self.session.all_lesion_ids()
        if not ids:
            return None
        current = self.lesion_spin.value()
        later = [i for i in ids if i > current]
        lid = later[0] if later else ids[0]
        self.lesion_spin.setValue(lid)
        self.centre_on(lid)
        return lid

    def centre_on(self, lesion_id: int) -> None:
        image_layer = self.image_combo.current_layer()
        if image_layer is None:
            return
        layer = self.session.labels_layer_for(image_layer, create=False)
        if layer is None or lesion_id not in lesion_ids_in(layer):
            return
        layer.selected_label = lesion_id
        idx = np.argwhere(np.asarray(layer.data) == lesion_id).mean(axis=0)
        world = np.asarray(layer.data_to_world(idx), dtype=float)
        centre_view(self.viewer, world)

    def delete_current_lesion(self) -> None:
        lid = self.lesion_spin.value()
        if lid <= 0:
            _notify("info", "Choose a lesion id first.")
            return
        self.delete_lesion(lid)

    def delete_lesion(self, lesion_id: int) -> int:
        """Remove a lesion from every timepoint's Labels layer (undoable per layer) and its prompts."""
        erased = 0
        for layer in self.session.lesion_layers():
            erased += remove_lesions(layer, [lesion_id])
        for pl in self._prompt_layers.values():
            pl.remove_ids([lesion_id])
        self.progress.status.setText(f"Deleted lesion {lesion_id} ({erased} voxels) at every timepoint.")
        return erased

    # ------------------------------------------------------------------ cleanup
    def closeEvent(self, event) -> None:  # noqa: N802 - Qt naming
        self.runner.cancel()
        for key in SHORTCUTS:
            self.viewer.bind_key(key, None)
        for pl in self._prompt_layers.values():
            pl.disconnect()
        self.image_combo.disconnect_viewer()
        super().closeEvent(event)

