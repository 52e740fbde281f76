"""ReviewWidget ("Lesion review"): a per-lesion volume table and a side-by-side grid of the timepoints.

Selecting a lesion centres *every* timepoint on it. napari's grid shares one camera and one slice
position across its viewboxes, while the same lesion sits at a different world position in each
scan (the patient lies differently). So the review grid shows *review layers*: for each timepoint
an image layer and a labels layer that share the original layers' arrays (no copy; painting in
the grid edits the real labels) but are shifted in world space so that the selected lesion's
centroid lands on the same point at every timepoint. The user's own layers are hidden during the
review (their transforms are never touched) and shown again when it ends.

Volumes come from :func:`napari_lesionlocator.core.measurements.measure_lesions`, computed in a
background worker.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core.errors import LesionLocatorError
from ..core.geometry import Geometry
from ..core.progress import ProgressEvent
from ._gc import freeze_long_lived_objects
from ._layers import META_KEY, geometry_from_layer, label_map_from_layer
from ._panels import LesionColourDelegate, paint_lesion_item
from ._session import session_for
from ._view import camera, centre_view, grid
from ._workers import JobRunner

if TYPE_CHECKING:
    import napari

__all__ = ["ReviewWidget", "measure_study_layers"]


def measure_study_layers(pairs) -> Generator[ProgressEvent, None, dict[int, list[float | None]]]:
    """Volumes (mL) of every lesion at every timepoint; ``pairs`` holds (Image, LabelMap or None).

    Worker-thread safe: works on copies made on the GUI thread. Returns lesion id -> per-timepoint
    volume (None when the timepoint has no labels layer, 0.0 when the lesion is absent there).
    """
    from ..core.measurements import measure_lesions

    ids = sorted({i for _, lab in pairs if lab is not None for i in lab.ids})
    table = {lid: [None] * len(pairs) for lid in ids}
    for t, (image, labels) in enumerate(pairs):
        yield ProgressEvent(t, len(pairs), f"measuring {image.name}")
        if labels is None:
            continue
        for row in measure_lesions(image, labels, timepoint=t, lesion_ids=ids):
            table[row.lesion_id][t] = float(row.volume_ml)
    yield ProgressEvent(len(pairs), len(pairs), "measured")
    return table


class ReviewWidget(QWidget):
    """Per-lesion volume table; a row click centres every timepoint's view on that lesion."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from ._dock_fit import keep_on_screen

        keep_on_screen(self)  # a tab of the other secondary docks when the column would not fit the screen
        self.session = session_for(napari_viewer)
        self.viewer = napari_viewer = self.session.viewer  # the real viewer: its layers compare with ``is``
        self.runner = JobRunner(self)
        freeze_long_lived_objects(napari_viewer)  # short full GCs: see _gc
        self.volumes: dict[int, list[float | None]] = {}
        self._timepoints: list = []
        self._review: list[tuple] = []  # (timepoint image layer, review image layer, review labels layer)
        self._hidden: list = []
        self._links: list[tuple] = []  # (real labels layer, callback refreshing its review copy)
        self.lesion_id: int | None = None

        self.table = QTableWidget()
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.verticalHeader().setDefaultSectionSize(22)
        self.table.verticalHeader().setVisible(False)  # the lesion column names the rows
        self.table.setMinimumHeight(24 + 6 * 22)  # header + at least 6 lesion rows
        self.table.setItemDelegateForColumn(0, LesionColourDelegate(self.table))  # colour kept when selected
        self.measure_button = QPushButton("Measure lesions")
        self.measure_button.setToolTip("Volume (mL) of every lesion at every timepoint, in the timeline's order.")
        self.grid_button = QPushButton("Side-by-side review")
        self.grid_button.setToolTip("Every timepoint side by side, each centred on the selected lesion.")
        self.grid_button.setCheckable(True)
        self.own_window = QCheckBox("own window")
        self.own_window.setToolTip("Open the side-by-side grid in a window of its own (e.g. on a second screen).")
        self._window = None
        self.status = QLabel("")
        self.status.setWordWrap(True)
        buttons = QHBoxLayout()
        buttons.addWidget(self.measure_button)
        buttons.addWidget(self.grid_button)
        buttons.addWidget(self.own_window)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 2, 6, 2)  # all docks together fit a 1000 px screen
        layout.addLayout(buttons)
        layout.setSpacing(4)
        layout.addWidget(QLabel("Volume (mL) per timepoint; click a row to centre on it"))
        layout.addWidget(self.table, 1)
        layout.addWidget(self.status)

        self.measure_button.clicked.connect(self.measure)
        self.grid_button.toggled.connect(self._on_grid_toggled)
        self.table.itemSelectionChanged.connect(self._on_row_selected)
        self.runner.succeeded.connect(self._show_volumes)
        self.runner.failed.connect(lambda exc: self.status.setText(f"Measuring failed: {exc}"))

    # ------------------------------------------------------------------ table
    def measure(self) -> bool:
        """Measure every lesion at every timepoint in a worker; the table fills when done."""
        if self.runner.running:
            return False
        self._timepoints = self.session.timepoints(self.session.order or None)
        pairs = []
        for tp in self._timepoints:
            try:
                image = self.session.image(tp)  # no mL from a voxel size the file did not give
            except LesionLocatorError as exc:
                from napari.utils.notifications import show_error

                show_error(str(exc))
                self.status.setText(f"Not measured: {exc}")
                return False
            labels_layer = self.session.labels_layer_for(tp, create=False)
            labels = label_map_from_layer(labels_layer, image.geometry) if labels_layer is not None else None
            pairs.append((image, labels))
        self.status.setText("Measuring...")
        self.runner.start(lambda token, cb: measure_study_layers(pairs), desc="Measuring lesions",
                          total=len(pairs) + 1)
        return True

    def _show_volumes(self, volumes: dict[int, list[float | None]]) -> None:
        self.volumes = volumes
        names = [tp.name for tp in self._timepoints]
        self.table.blockSignals(True)
        self.table.clear()
        self.table.setRowCount(len(volumes))
        self.table.setColumnCount(1 + len(names))
        self.table.setHorizontalHeaderLabels(["lesion"] + [f"{n} (mL)" for n in names])
        for row, (lid, vols) in enumerate(sorted(volumes.items())):
            item = QTableWidgetItem(f"{lid}")
            item.setData(Qt.ItemDataRole.UserRole, lid)
            paint_lesion_item(item, lid)
            self.table.setItem(row, 0, item)
            for col, vol in enumerate(vols, start=1):
                state = self.session.lesion_state(self._timepoints[col - 1], lid, bool(vol))
                text = "n/a" if vol is None else (f"{vol:.2f}" if vol else
                                                  {"lost": "lost", "not tracked": "not tracked"}.get(state, "absent"))
                if state == "check" and vol:
                    text += " (check)"
                cell = QTableWidgetItem(text)
                cell.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(row, col, cell)
        self.table.blockSignals(False)
        self.status.setText(f"{len(volumes)} lesion(s) at {len(names)} timepoint(s).")

    def _on_row_selected(self) -> None:
        rows = {index.row() for index in self.table.selectedIndexes()}
        if rows:
            item = self.table.item(min(rows), 0)
            if item is not None:
                self.select_lesion(int(item.data(Qt.ItemDataRole.UserRole)))

    # ------------------------------------------------------------------ review grid
    @property
    def reviewing(self) -> bool:
        return bool(self._review)

    def _on_grid_toggled(self, on: bool) -> None:
        if on and not self.reviewing:
            self.start_review()
        elif not on and self.reviewing:
            self.stop_review()

    @property
    def grid_viewer(self):
        """The viewer the review grid is shown in: this one, or its own window."""
        return self._window if self._window is not None else self.viewer

    def start_review(self, *, own_window: bool | None = None) -> None:
        """Show every timepoint side by side (image + lesions per grid cell).

        ``own_window`` (default: the "own window" box) opens the grid in a second napari window,
        so the main view keeps the scan being annotated; the grid's layers share the real arrays.
        """
        if self.reviewing:
            return
        tps = self.session.timepoints(self.session.order or None)
        if not tps:
            self.status.setText("No CT image layers to review.")
            self.grid_button.setChecked(False)
            return
        own = self.own_window.isChecked() if own_window is None else own_window
        self._timepoints = tps
        if own:
            import napari

            self._window = napari.Viewer(title="LesionLocator review", show=True)
            self._window.window._qt_window.destroyed.connect(self._on_window_closed)
            self._window.window._qt_window.installEventFilter(self)
            self._hidden = []
        else:
            self._hidden = [layer for layer in self.viewer.layers if layer.visible]
        target = self.grid_viewer
        self.session._applying = True  # hiding the scans for the grid is not a change of timepoint
        try:
            for layer in self._hidden:
                layer.visible = False
        finally:
            self.session._applying = False
        created = []
        for tp in tps:
            labels = self.session.labels_layer_for(tp)
            geometry = geometry_from_layer(tp)
            meta = {META_KEY: {"role": "review", "timepoint": tp.name}}
            date = tp.metadata.get("acquisition_date") if isinstance(tp.metadata, dict) else None
            title = f"{tp.name} ({date})" if date else f"{tp.name} (review)"
            img = target.add_image(tp.data, name=title, colormap=tp.colormap.name,
                                   contrast_limits=tp.contrast_limits, metadata=meta,
                                   **geometry.napari_transform())
            img.name_overlay.visible = True  # tells the grid cells apart
            # Same array object as the real labels layer: edits in the grid are real edits.
            lab = target.add_labels(labels.data, name=f"{title} lesions", metadata=dict(meta),
                                    colormap=labels.colormap, opacity=labels.opacity,
                                    **geometry.napari_transform())
            # Keep both views of the shared array in step, whichever one is edited.
            to_real, to_review = (lambda _e, t=labels: t.refresh()), (lambda _e, r=lab: r.refresh())
            lab.events.paint.connect(to_real)
            labels.events.paint.connect(to_review)
            self._links.append((labels, to_review))
            created.append((tp, img, lab))
        for i, layer in enumerate(layer for _, img, lab in created for layer in (img, lab)):
            target.layers.move(target.layers.index(layer), i)
        self._review = created
        view_grid = grid(target)
        # Up to three timepoints in one row (they read left to right in time), more in a square-ish grid.
        shape = (1, len(created)) if len(created) <= 3 else (-1, -1)
        view_grid.stride, view_grid.shape, view_grid.spacing, view_grid.enabled = 2, shape, 8, True
        self.grid_button.blockSignals(True)
        self.grid_button.setChecked(True)
        self.grid_button.blockSignals(False)
        if self.lesion_id is not None:
            self.select_lesion(self.lesion_id)
        else:
            target.reset_view()

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt naming
        from qtpy.QtCore import QEvent

        if self._window is not None and event.type() == QEvent.Type.Close:
            self._on_window_closed()
        return False

    def _on_window_closed(self, *_) -> None:
        if self._window is not None:
            self._review = [(tp, None, None) for tp, _, _ in self._review]
            self._window = None
            self.stop_review()

    def stop_review(self) -> None:
        """Remove the review layers (or close the review window) and show the user's layers again."""
        target = self.grid_viewer
        for _, img, lab in self._review:
            for layer in (img, lab):
                if layer is not None and layer in target.layers:
                    target.layers.remove(layer)
        self._review = []
        for layer, callback in self._links:
            layer.events.paint.disconnect(callback)
        self._links = []
        if self._window is not None:
            window, self._window = self._window, None
            window.window._qt_window.removeEventFilter(self)
            window.close()
        else:
            grid(self.viewer).enabled = False
        self.session._applying = True
        try:
            for layer in self._hidden:
                if layer in self.viewer.layers:
                    layer.visible = True
        finally:
            self.session._applying = False
        self._hidden = []
        self.grid_button.blockSignals(True)
        self.grid_button.setChecked(False)
        self.grid_button.blockSignals(False)

    def lesion_centroids(self, lesion_id: int) -> list[np.ndarray | None]:
        """World centroid (mm, z y x) of a lesion at each review timepoint (None where absent)."""
        out: list[np.ndarray | None] = []
        for tp in self._timepoints or self.session.timepoints():
            layer = self.session.labels_layer_for(tp, create=False)
            if layer is None:
                out.append(None)
                continue
            idx = np.argwhere(np.asarray(layer.data) == lesion_id)
            out.append(geometry_from_layer(tp).index_to_world(idx.mean(axis=0)) if len(idx) else None)
        return out

    def select_lesion(self, lesion_id: int) -> None:
        """Centre every timepoint on ``lesion_id`` (review grid) or the main view (no grid)."""
        self.lesion_id = int(lesion_id)
        centroids = self.lesion_centroids(lesion_id)
        present = [i for i, c in enumerate(centroids) if c is not None]
        if not present:
            self.status.setText(f"Lesion {lesion_id} has no voxels at any timepoint.")
            return
        anchor = centroids[present[0]]
        if not self.reviewing:
            centre_view(self.viewer, anchor)
            return
        for t, (tp, img, lab) in enumerate(self._review):
            # Absent here: use the shift of the nearest timepoint where it is present.
            nearest = min(present, key=lambda i: abs(i - t))
            shift = anchor - centroids[nearest]
            g = geometry_from_layer(tp)
            moved = Geometry(g.shape, g.spacing, tuple(np.asarray(g.origin) + shift), g.direction)
            for layer in (img, lab):
                transform = moved.napari_transform()
                layer.scale = transform["scale"]
                layer.translate = transform["translate"]
                if "affine" in transform:
                    layer.affine = transform["affine"]
            lab.selected_label = int(lesion_id)
        target = self.grid_viewer
        target.reset_view()
        centre_view(target, anchor)
        # reset_view fits a whole slice to a grid cell; zoom in to a ~70 mm field around the lesion.
        g0 = geometry_from_layer(self._review[0][0])
        extent = max(g0.extent_mm[1:])
        cam = camera(target)
        cam.zoom = cam.zoom * max(1.0, extent / 70.0)
        self.status.setText(f"Lesion {lesion_id}: centred at every timepoint.")

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt naming
        self.runner.cancel()
        self.stop_review()
        super().closeEvent(event)
