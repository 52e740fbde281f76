"""PromptWidget ("Lesion prompts"): click or box lesions on the scan you look at and segment them in the background.

Workflow: open the scans, pick Point (Alt+P) or Box (Alt+B), click a lesion or drag a rectangle on
a slice (then set its slice range), press Segment (Alt+S). Prompts go to the **active timepoint**,
the scan shown in the viewer (see :class:`~._session.StudySession`); the combo box follows it and
choosing another scan there shows that one.

* A click inside an existing lesion refines it (the point is added to its prompts and the lesion is
  segmented again, one undo step). Shift+click, or "new lesion", starts a new lesion there.
* Ctrl+click, or "exclude", marks a region to take out of the lesion under the click (classical
  engine; the LesionLocator model takes one point or one box per lesion, so there a new point or
  box replaces the lesion's prompt, and the status line says so).
* Only prompts not segmented yet run; a prompt outside the volume is reported and skipped while the
  others segment ("Remove invalid" deletes such prompts).
* The result lands in the scan's Labels layer as one undo step: Ctrl+Z (whatever layer is active)
  or "Undo" takes it back. "Delete lesion" asks first, removes the lesion at every timepoint, and
  its undo brings back its masks and prompts.

The engine block here is the study's one engine choice; the Timeline uses it too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QLabeledRangeSlider

from .. import api
from ..core.errors import LesionLocatorError
from ..core.results import compose_label_map
from ..engines.base import SegmentationResult
from ._display import WINDOW_NAMES, apply_window, set_outline, window_for_click
from ._gc import freeze_long_lived_objects
from ._layers import apply_lesion_labels, is_lesion_layer, lesion_ids_in, remove_lesions
from ._panels import ImageLayerCombo, ProgressRow, show_end_state
from ._process import helper_available, run_in_helper
from ._refine import iter_segment_refined
from ._session import preload_engine_modules, session_for
from ._view import centre_view
from ._workers import JobRunner

if TYPE_CHECKING:
    import napari

__all__ = ["PromptWidget", "SHORTCUTS", "centre_view", "confirm"]

# Viewer-wide shortcuts (Alt+letter: napari's defaults use none of these).
SHORTCUTS = {
    "Alt-P": "point mode (click a lesion)",
    "Alt-B": "box mode (draw a rectangle, then set its slice range)",
    "Alt-V": "view mode (pan/zoom, no prompts)",
    "Alt-S": "segment the new prompts",
    "Alt-N": "next lesion (select it and centre the view)",
    "Control-Z": "undo the last result or deletion (whatever layer is active)",
}
_CLICK_HELP = "Shift+click: new lesion here; Ctrl+click: exclude a region from the lesion under the click"


def _key(k: str) -> str:
    return k.replace("Control", "Ctrl").replace("-", "+")


def _notify(kind: str, message: str) -> None:
    from napari.utils import notifications

    {"info": notifications.show_info, "warning": notifications.show_warning,
     "error": notifications.show_error}[kind](message)


def confirm(parent, title: str, text: str) -> bool:
    """Ask yes/no (tests replace this function)."""
    answer = QMessageBox.question(parent, title, text, QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                  QMessageBox.StandardButton.No)
    return answer == QMessageBox.StandardButton.Yes


class PromptWidget(QWidget):
    """Dock widget for point/box prompts, segmentation, lesion selection and deletion.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        Injected by napari (npe2 widget contribution).
    """

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session_for(napari_viewer)
        self.viewer = napari_viewer = self.session.viewer  # the real viewer: its layers compare with ``is``
        self.runner = JobRunner(self)
        freeze_long_lived_objects(napari_viewer)  # short full GCs: see _gc
        preload_engine_modules()  # engine imports off the first run: see _session
        self._running_image = None
        self._job = None
        self._window_chosen = False  # the reader picked a window: no automatic choice any more
        # Engine notes already shown: an engine may repeat its standing notes (e.g. the
        # LesionLocator engine's "using fold(s) ... from ..." with every prompt of every run).
        self._shown_messages: set[str] = set()

        self.image_combo = ImageLayerCombo(napari_viewer)
        self.image_combo.setToolTip("The scan you prompt on: the active timepoint (choosing one here shows it).")
        self.engine_panel = self.session.shared_engine_panel()  # the study's one engine block, shown here
        self.point_mode = QPushButton("Point")
        self.box_mode = QPushButton("Box")
        self.view_mode = QPushButton("View")
        self._modes = QButtonGroup(self)
        for b, tip in ((self.point_mode, f"Point mode (Alt+P): click a lesion. {_CLICK_HELP}."),
                       (self.box_mode, ("Box mode (Alt+B): drag a rectangle around a lesion on a slice, then set "
                                        "its slice range. Shift while drawing: a new lesion.")),
                       (self.view_mode, "View mode (Alt+V): pan and zoom, clicks add nothing.")):
            b.setCheckable(True)
            b.setToolTip(tip)
            self._modes.addButton(b)
        self.view_mode.setChecked(True)  # nothing is armed until the reader arms it
        self.new_lesion = QCheckBox("new lesion")
        self.new_lesion.setToolTip("The next clicks/boxes start new lesions even inside an existing one "
                                   "(same as Shift).")
        self.exclude = QCheckBox("exclude")
        self.exclude.setToolTip("The next clicks mark regions to take out of the lesion under them (same as Ctrl); "
                                "classical engine only.")
        self.z_range = QLabeledRangeSlider(Qt.Orientation.Horizontal)
        self.z_range.setEnabled(False)
        self.z_range.setToolTip("Slice range (z) of the selected box prompt.")
        self.z_label = QLabel("Box slices: draw a box first")
        self.segment_button = QPushButton("Segment new prompts")
        self.segment_button.setToolTip("Segment every prompt not segmented yet (Alt+S).")
        self.invalid_button = QPushButton("Remove invalid")
        self.invalid_button.setToolTip("Delete the prompts that lie outside their scan (they are skipped otherwise).")
        self.invalid_button.setEnabled(False)
        self.undo_button = QPushButton("Undo")
        self.undo_button.setToolTip("Undo the last result or deletion (Ctrl+Z, whatever layer is active).")
        self.undo_button.setEnabled(False)
        self.lesion_spin = QSpinBox()
        self.lesion_spin.setRange(0, 2**31 - 1)
        self.lesion_spin.setSpecialValueText("none")
        self.lesion_spin.setToolTip("The current lesion (Next lesion: Alt+N).")
        self.reprompt = QCheckBox("re-prompt")
        self.reprompt.setToolTip("The next prompt replaces this lesion's mask (wherever it is clicked).")
        self.next_button = QPushButton("Next")
        self.next_button.setToolTip("Select the next lesion and centre the view on it (Alt+N).")
        self.delete_button = QPushButton("Delete")
        self.delete_button.setToolTip("Delete this lesion at every timepoint (asks first; Undo brings it back).")
        self.window_combo = QComboBox()
        self.window_combo.addItem("auto", None)
        for name in WINDOW_NAMES:
            self.window_combo.addItem(name, name)
        self.window_combo.setToolTip("CT window. auto: lung window for a click in lung, soft tissue otherwise.")
        self.outline = QCheckBox("outline")
        self.outline.setToolTip("Draw lesions as outlines instead of filled.")
        self.progress = ProgressRow()

        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Scan", self.image_combo)
        modes = QHBoxLayout()
        for w in (self.point_mode, self.box_mode, self.view_mode, self.new_lesion, self.exclude):
            modes.addWidget(w)
        form.addRow("Prompt", modes)
        zrow = QHBoxLayout()
        zrow.addWidget(self.z_label)
        zrow.addWidget(self.z_range, 1)
        form.addRow(zrow)
        run = QHBoxLayout()
        run.addWidget(self.segment_button, 1)
        run.addWidget(self.invalid_button)
        run.addWidget(self.undo_button)
        lesion = QGridLayout()
        lesion.addWidget(QLabel("Lesion"), 0, 0)
        lesion.addWidget(self.lesion_spin, 0, 1)
        lesion.addWidget(self.reprompt, 0, 2)
        lesion.addWidget(self.next_button, 0, 3)
        lesion.addWidget(self.delete_button, 0, 4)
        display = QHBoxLayout()
        display.addWidget(QLabel("Window"))
        display.addWidget(self.window_combo, 1)
        display.addWidget(self.outline)
        layout = QVBoxLayout(self)
        layout.setSpacing(4)
        layout.setContentsMargins(6, 2, 6, 2)  # all docks together fit a 1000 px screen
        layout.addLayout(form)
        layout.addWidget(self.engine_panel)
        layout.addLayout(run)
        layout.addWidget(self.progress)
        layout.addWidget(self.progress.status)
        layout.addLayout(lesion)
        layout.addLayout(display)
        layout.addStretch(1)
        self.setToolTip("Shortcuts:\n" + "\n".join(f"{_key(k)}: {v}" for k, v in SHORTCUTS.items()))

        self.point_mode.clicked.connect(lambda: self.activate_mode("point"))
        self.box_mode.clicked.connect(lambda: self.activate_mode("box"))
        self.view_mode.clicked.connect(lambda: self.activate_mode("view"))
        self.new_lesion.toggled.connect(self._sync_intent)
        self.exclude.toggled.connect(self._sync_intent)
        self.segment_button.clicked.connect(self.segment)
        self.invalid_button.clicked.connect(self.remove_invalid_prompts)
        self.undo_button.clicked.connect(self.undo)
        self.progress.cancel.clicked.connect(self.cancel)
        self.next_button.clicked.connect(self.next_lesion)
        self.delete_button.clicked.connect(self.delete_current_lesion)
        self.reprompt.toggled.connect(self._sync_target)
        self.lesion_spin.valueChanged.connect(self._sync_target)
        self.z_range.valueChanged.connect(self._on_z_range)
        self.window_combo.activated.connect(self._on_window_chosen)
        self.outline.toggled.connect(lambda on: set_outline(self.session.lesion_layers(), on))
        self.image_combo.currentIndexChanged.connect(self._on_combo)
        self.runner.progressed.connect(self.progress.show_event)
        self.runner.detail.connect(self.progress.show_detail)
        self.runner.succeeded.connect(self._apply_result)
        self.runner.done.connect(self._on_done)
        self._mode_before_switch = "view"
        self.session.activating.connect(lambda _layer: setattr(self, "_mode_before_switch", self.armed_mode()))
        self.session.active_changed.connect(self._on_active_changed)
        self.session.note.connect(self._on_note)
        self.session.results_changed.connect(self._sync_undo)
        napari_viewer.layers.selection.events.active.connect(self._sync_mode_buttons)
        napari_viewer.layers.events.inserted.connect(self._on_layer_inserted)
        self._bind_keys()
        self._on_active_changed(self.session.active_image())

    # ------------------------------------------------------------------ keys
    def _bind_keys(self) -> None:
        actions = {"Alt-P": lambda v: self.activate_mode("point"),
                   "Alt-B": lambda v: self.activate_mode("box"),
                   "Alt-V": lambda v: self.activate_mode("view"),
                   "Alt-S": lambda v: self.segment(),
                   "Alt-N": lambda v: self.next_lesion(),
                   "Control-Z": lambda v: self.undo()}
        for key, func in actions.items():
            self.viewer.bind_key(key, func, overwrite=True)
        for layer in self.session.lesion_layers():
            self._bind_layer_undo(layer)

    def _bind_layer_undo(self, layer) -> None:
        """Ctrl+Z in a lesion layer: napari's own undo, kept in step with the session's undo stack."""
        def undo(lyr, session=self.session):
            session.undo_in_layer(lyr)

        layer.bind_key("Control-Z", undo, overwrite=True)

    def _on_layer_inserted(self, event) -> None:
        if is_lesion_layer(event.value):
            self._bind_layer_undo(event.value)
            if self.outline.isChecked():
                set_outline([event.value], True)

    # ------------------------------------------------------------------ active timepoint
    def _on_active_changed(self, image_layer) -> None:
        if image_layer is not None and image_layer is not self.image_combo.current_layer():
            self.image_combo.blockSignals(True)
            self.image_combo.set_layer(image_layer)
            self.image_combo.blockSignals(False)
        armed, self._mode_before_switch = self._mode_before_switch, "view"
        if armed in ("point", "box") and image_layer is not None:
            self.activate_mode(armed)  # keep prompting, now on the scan in view
        self._sync_z_range()

    def _on_combo(self, *_) -> None:
        layer = self.image_combo.current_layer()
        if layer is not None and layer is not self.session.active_image():
            self.session.set_active(layer)

    # ------------------------------------------------------------------ prompt layers
    @property
    def _prompt_layers(self) -> dict:
        return {str(pl.image_layer.unique_id): pl for pl in self.session.all_prompt_layers()}

    def prompt_layers(self, image_layer=None):
        """Prompt layers of the active (or given) timepoint, created on first use."""
        image_layer = image_layer or self.session.active_image()
        if image_layer is None:
            return None
        new = self.session.prompt_layers(image_layer, create=False) is None
        pl = self.session.prompt_layers(image_layer)
        if new:
            pl.boxes.events.highlight.connect(self._sync_z_range)
            pl.boxes.events.data.connect(self._sync_z_range)
            for layer in (pl.points, pl.boxes):
                layer.events.mode.connect(self._sync_mode_buttons)
            pl.points.events.data.connect(
                lambda e: self._maybe_auto_window("points") if getattr(e, "action", None) == "added" else None)
            pl.boxes.events.data.connect(
                lambda e: self._maybe_auto_window("boxes") if getattr(e, "action", None) == "added" else None)
        return pl

    def next_lesion_id(self) -> int:
        """A fresh id: never one in use at any timepoint or prompt, nor a deleted one."""
        return self.session.next_lesion_id()

    def armed_mode(self) -> str:
        """"point"/"box" when that tool is really armed on the active scan's prompt layer, else "view"."""
        pl = self.session.prompt_layers(create=False)
        active = self.viewer.layers.selection.active
        if pl is not None and active is pl.points and str(pl.points.mode) == "add":
            return "point"
        if pl is not None and active is pl.boxes and str(pl.boxes.mode) == "add_rectangle":
            return "box"
        return "view"

    def _sync_mode_buttons(self, *_) -> None:
        """The mode buttons show what is armed (a checked Point button always means clicks add points)."""
        button = {"point": self.point_mode, "box": self.box_mode}.get(self.armed_mode(), self.view_mode)
        if not button.isChecked():
            button.setChecked(True)

    def activate_mode(self, mode: str) -> None:
        """Arm the point tool, the box tool, or neither (view) on the active scan's prompt layers."""
        if mode == "view":
            pl = self.session.prompt_layers(create=False)
            if pl is not None:
                for layer in (pl.points, pl.boxes):
                    layer.mode = "pan_zoom"
            self._sync_mode_buttons()
            return
        try:
            pl = self.prompt_layers()
        except LesionLocatorError as exc:
            _notify("error", str(exc))
            self._sync_mode_buttons()
            return
        if pl is None:
            _notify("warning", "Open a CT image first (File > Open, or File > Open Sample).")
            self._sync_mode_buttons()
            return
        layer = pl.points if mode == "point" else pl.boxes
        layer.visible = True
        self.session._applying = True  # selecting our own prompt layer is not a change of timepoint
        try:
            self.viewer.layers.selection.active = layer
        finally:
            self.session._applying = False
        layer.mode = "add" if mode == "point" else "add_rectangle"
        self._sync_mode_buttons()

    def _sync_intent(self, *_) -> None:
        self.session.force_new = self.new_lesion.isChecked()
        self.session.exclude = self.exclude.isChecked()

    def _sync_target(self, *_) -> None:
        self.session.current_lesion = int(self.lesion_spin.value())
        pl = self.session.prompt_layers(create=False)
        if pl is not None:
            value = self.lesion_spin.value()
            pl.target_id = value if (self.reprompt.isChecked() and value > 0) else None

    def _on_note(self, text: str) -> None:
        if not self.busy:
            self.progress.status.setText(text)

    # ------------------------------------------------------------------ display
    def _on_window_chosen(self, index: int) -> None:
        name = self.window_combo.itemData(index)
        self._window_chosen = name is not None
        if name is not None:
            self._apply_window(name)

    def _apply_window(self, name: str) -> None:
        """The same window on every timepoint (the reader compares them side by side)."""
        for image in self.session.image_layers():
            meta = image.metadata if isinstance(image.metadata, dict) else {}
            if meta.get("modality") in (None, "CT"):
                apply_window(image, name)

    def _maybe_auto_window(self, kind: str = "points") -> None:
        """auto window: after a click (or a box), the window that suits what was prompted."""
        if self._window_chosen:
            return
        pl = self.session.prompt_layers(create=False)
        layer = pl.points if kind == "points" or pl is None else pl.boxes
        if pl is None or not len(layer.data):
            return
        last = np.asarray(layer.data[-1], dtype=float)
        world = layer.data_to_world(last if last.ndim == 1 else last.mean(axis=0))
        name = window_for_click(pl.image_layer, world)
        self._apply_window(name)
        self.window_combo.setItemText(0, f"auto ({name})")

    # ------------------------------------------------------------------ box z-extent
    def _selected_box_row(self, pl) -> int | None:
        n = len(pl.boxes.data)
        if n == 0:
            return None
        sel = sorted(i for i in pl.boxes.selected_data if i < n)
        row = sel[-1] if sel else n - 1
        return row if int(pl.boxes.features["lesion_id"].iloc[row]) > 0 else None

    def _sync_z_range(self, *_) -> None:
        pl = self.session.prompt_layers(create=False)
        row = self._selected_box_row(pl) if pl else None
        if row is None or row >= len(pl.boxes.features):
            self.z_range.setEnabled(False)
            self.z_label.setText("Box slices: draw a box first")
            return
        feats = pl.boxes.features
        self.z_range.blockSignals(True)
        self.z_range.setRange(0, pl.geometry.shape[0] - 1)
        self.z_range.setValue((int(feats["z0"].iloc[row]), int(feats["z1"].iloc[row])))
        self.z_range.blockSignals(False)
        self.z_range.setEnabled(True)
        self.z_label.setText(f"Box slices, lesion {int(feats['lesion_id'].iloc[row])}")

    def _on_z_range(self, value) -> None:
        pl = self.session.prompt_layers(create=False)
        row = self._selected_box_row(pl) if pl else None
        if row is not None:
            pl.set_z_range(row, int(value[0]), int(value[1]))

    # ------------------------------------------------------------------ segmentation
    @property
    def busy(self) -> bool:
        return self.runner.running

    def segment(self) -> bool:
        """Segment every prompt of the active scan not segmented yet, in a background worker.

        Prompts outside the volume are reported and skipped; returns whether a run started.
        """
        if self.runner.running:
            _notify("info", "A segmentation is already running; cancel it or wait.")
            return False
        image_layer = self.session.active_image()
        try:
            pl = self.prompt_layers(image_layer)
        except LesionLocatorError as exc:
            _notify("error", str(exc))
            return False
        if pl is None:
            _notify("warning", "Open a CT image first (File > Open, or File > Open Sample).")
            return False
        try:
            engine_name, settings = self.session.engine_choice()
            accumulate = engine_name == "classical"
            jobs, problems = pl.pending_lesions(accumulate=accumulate)
            image = self.session_image(image_layer)
        except LesionLocatorError as exc:
            _notify("error", str(exc))
            return False
        self.invalid_button.setEnabled(bool(pl.invalid_keys()))
        for problem in problems:
            _notify("warning", f"Skipped: {problem}")
        runnable = [job for job in jobs if job.prompts]
        skipped_keys = [k for job in jobs if not job.prompts for k in job.keys]
        if skipped_keys:
            pl.mark_done(skipped_keys)
        if not runnable:
            msg = ("No new prompts: click a lesion (point mode) or draw a box first." if not problems else
                   f"Nothing segmented: {len(problems)} prompt(s) cannot run (see the notifications; "
                   "'Remove invalid' deletes those outside the scan).")
            self.progress.status.setText(msg)
            _notify("info", msg)
            return False
        notes = []
        if not accumulate:
            notes = [f"lesion {job.lesion_id}: the LesionLocator model takes one prompt per lesion, so the new "
                     f"{job.prompt.kind} replaces its earlier prompt" for job in runnable if job.refine]
        self.session.labels_layer_for(image_layer)  # exists before the run, so nothing is created after it
        self._job = (image_layer, pl, [k for job in runnable for k in job.keys], [j.lesion_id for j in runnable],
                     problems, notes)
        self._set_running(True)
        n_calls = sum(len(j.prompts) + len(j.negatives) for j in runnable) if accumulate else len(runnable)
        self.progress.status.setText(
            f"Segmenting {len(runnable)} lesion(s) with the {engine_name} engine..."
            + (f" ({len(problems)} prompt(s) skipped)" if problems else ""))
        session = self.session
        prompts = [job.prompt for job in runnable]

        use_helper = engine_name == "classical" and helper_available()

        def segments(ps, token, callback):
            # Worker thread. The classical engine runs in the helper process (its SimpleITK calls
            # hold the GIL, which froze the GUI); other engines here, created once per viewer
            # session (imports, weights) off the GUI thread.
            if use_helper:
                return (yield from run_in_helper("segment", [image], {"prompts": list(ps)}, token, callback))
            engine = session.engine(engine_name, settings)
            return (yield from api.iter_segment(engine, image, ps, cancel=token, on_progress=callback))

        def job(token, callback):
            if not accumulate:
                return (yield from segments(prompts, token, callback))
            lesions = yield from iter_segment_refined(lambda ps: segments(ps, token, callback), image, runnable)
            out = SegmentationResult(compose_label_map(lesions, image.geometry, f"{image.name}_lesions"))
            out.lesions = lesions
            out.empty_ids = [lid for lid, r in lesions.items() if r.status == "empty"]
            out.messages = [m for r in lesions.values() for m in r.messages]
            return out

        self.runner.start(job, desc="Segmenting lesions", total=n_calls + 1)
        return True

    def session_image(self, image_layer):
        return self.session.image(image_layer)

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
        """GUI thread: write the new masks into the scan's Labels layer as one undo step."""
        image_layer, pl, keys, ids, problems, notes = self._job
        if image_layer not in self.viewer.layers:
            self.progress.status.setText(f"{image_layer.name} was closed during the run: nothing was written.")
            _notify("warning", f"{image_layer.name} was closed during the run; its results were dropped.")
            return
        labels_layer = self.session.labels_layer_for(image_layer)
        lesions = dict(getattr(result, "lesions", {}) or {})
        empty = {lid for lid in ids if lid in set(result.empty_ids)
                 or (lid in lesions and lesions[lid].status == "empty")}
        written = [lid for lid in ids if lid not in empty]
        history = self.session.history_length(labels_layer)
        changed = apply_lesion_labels(labels_layer, result.labels.array, written) if written else 0
        if changed:
            self.session.push_undo({"what": f"segmentation of lesion(s) {written}", "layers": [labels_layer],
                                    "history": {id(labels_layer): history + 1}})
        # The rest runs over the next event-loop turns (the job counts as running until it is done):
        # each step updates napari layers or the other docks, and together they froze the GUI.
        self.runner.defer(lambda: pl.mark_done(keys))
        self.runner.defer(lambda: self.session.record_results(
            image_layer, {lid: lesions[lid] for lid in ids if lid in lesions}))
        self.runner.defer(lambda: self._finish_result(result, labels_layer, written, empty, lesions, changed,
                                                      problems, notes))

    def _finish_result(self, result, labels_layer, written, empty, lesions, changed, problems, notes) -> None:
        """The last step of applying a result: messages, the current lesion, the status line."""
        for message in dict.fromkeys(list(result.messages) + notes):  # distinct, in order
            if message not in self._shown_messages:
                self._shown_messages.add(message)
                _notify("warning", message)
        if written:
            self.lesion_spin.setValue(max(written))
            labels_layer.selected_label = max(written)
        self.reprompt.setChecked(False)
        self.progress.finish()
        check = [lid for lid in written if lid in lesions and lesions[lid].status == "check"]
        overlaps = result.overlaps() if hasattr(result, "overlaps") else []
        self.progress.status.setText(
            f"Segmented {len(written)} lesion(s) ({changed} voxels changed)"
            + (f"; no lesion found for id(s) {sorted(empty)}" if empty else "")
            + (f"; check lesion(s) {check} (the engine doubts the mask)" if check else "")
            + (f"; overlapping: {', '.join(f'{a}/{b}' for a, b, _ in overlaps)}" if overlaps else "")
            + (f"; {len(problems)} prompt(s) skipped" if problems else "")
            + (". Ctrl+Z undoes it." if changed else ".")
            + (" " + notes[-1] + "." if notes else "")
        )

    def remove_invalid_prompts(self) -> int:
        """Delete the active scan's prompts that lie outside it."""
        pl = self.session.prompt_layers(create=False)
        n = pl.remove_keys(pl.invalid_keys()) if pl is not None else 0
        self.invalid_button.setEnabled(False)
        self.progress.status.setText(f"Removed {n} prompt(s) outside the scan.")
        return n

    # ------------------------------------------------------------------ undo
    def undo(self) -> str | None:
        what = self.session.undo_last()
        self.progress.status.setText(f"Undone: {what}." if what else "Nothing to undo.")
        return what

    def _sync_undo(self) -> None:
        self.undo_button.setEnabled(self.session.can_undo)

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
        """Centre the view on a lesion at the active scan (or the first scan that has it, made active)."""
        order = [self.session.active_image()] + self.session.timepoints()
        for image_layer in order:
            if image_layer is None:
                continue
            layer = self.session.labels_layer_for(image_layer, create=False)
            if layer is None or lesion_id not in lesion_ids_in(layer):
                continue
            if image_layer is not self.session.active_image():
                self.session.set_active(image_layer)
            layer.selected_label = lesion_id
            idx = np.argwhere(np.asarray(layer.data) == lesion_id).mean(axis=0)
            world = np.asarray(layer.data_to_world(idx), dtype=float)
            centre_view(self.viewer, world)
            return

    def delete_current_lesion(self) -> None:
        lid = self.lesion_spin.value()
        if lid <= 0:
            _notify("info", "Choose a lesion id first.")
            return
        n_tp = sum(lid in lesion_ids_in(layer) for layer in self.session.lesion_layers())
        if not confirm(self, "Delete lesion", f"Delete lesion {lid} at all {n_tp} timepoint(s) where it exists, "
                                              "with its prompts? (Undo brings it back.)"):
            self.progress.status.setText("Delete cancelled: nothing was changed.")
            return
        self.delete_lesion(lid)

    def delete_lesion(self, lesion_id: int) -> int:
        """Remove a lesion from every timepoint (masks and prompts) as one undoable step."""
        erased = 0
        layers, history = [], {}
        for layer in self.session.lesion_layers():
            before = self.session.history_length(layer)
            n = remove_lesions(layer, [lesion_id])
            if n:
                erased += n
                layers.append(layer)
                history[id(layer)] = before + 1
        saved = [(pl, pl.rows_of([lesion_id])) for pl in self.session.all_prompt_layers()]
        for pl, _ in saved:
            pl.remove_ids([lesion_id])
        results = self.session.results_of(lesion_id)
        self.session.forget_lesion(lesion_id)

        def restore() -> None:
            for pl, rows in saved:
                if pl.image_layer in self.viewer.layers:
                    pl.restore_rows(rows)
            self.session.restore_results(results)

        self.session.push_undo({"what": f"deletion of lesion {lesion_id}", "layers": layers, "history": history,
                                "restore": restore})
        self.progress.status.setText(f"Deleted lesion {lesion_id} ({erased} voxels) at every timepoint. "
                                     "Undo brings it back.")
        return erased

    # ------------------------------------------------------------------ cleanup
    def closeEvent(self, event) -> None:  # noqa: N802 - Qt naming
        self.runner.cancel()
        for key in SHORTCUTS:
            self.viewer.bind_key(key, None)
        self.engine_panel.setParent(None)  # the engine block outlives this dock (the timeline may show it)
        self.image_combo.disconnect_viewer()
        super().closeEvent(event)
