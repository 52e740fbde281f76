"""The point and box prompt layers of one CT image layer (one timepoint), and the prompts they hold.

Each prompt row carries features ``lesion_id`` (the lesion it prompts), ``pid`` (a unique key so
the widget can mark exactly the prompts it sent as done, even if the user adds or deletes prompts
while a run is going) and ``done``. Point rows also carry ``sign`` (1 include, 2 include that
replaces the lesion's earlier prompts (re-prompt), -1 exclude); box
rows their inclusive slice range ``z0``/``z1``.

What a click means (decided here, when the row is added):

* on the timepoint that is not the active one: refused (removed again, with a notification);
* inside an existing lesion: it **refines** that lesion (the point is added to its prompts and the
  lesion is segmented again as one undo step); with Shift held, or "new lesion" ticked, it starts
  a new lesion there on purpose;
* with Ctrl held, or "exclude" ticked: a negative click, on the lesion under it (or the chosen
  lesion): the region it marks is taken out of that lesion;
* elsewhere: a new lesion id (ids are never reused, see :class:`StudySession`).

Coordinates: the point layer and the 3D-box outline carry the image's transform. The box layer
does not: its z axis sits on the viewer's slice grid (scale = the slider step, planes exactly on
the slider's positions) and its in-plane axes are world mm. napari's Shapes layer only shows (and
lets you draw) a rectangle whose plane is within half a unit of the slice, truncating the plane
index, so a box layer with a follow-up's own transform, whose planes are off the grid the slider
moves on, raised a TypeError while drawing. Every prompt is converted through world coordinates
(``data_to_world`` then ``Geometry.world_to_index``), so no layer's transform is assumed.

Thread: GUI thread only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..core.errors import PromptError
from ..core.geometry import Geometry
from ..core.prompts import BoxPrompt, PointPrompt, Prompt
from ._box_tool import box_from_rectangle, box_wireframe, default_z_range, rectangle_indices
from ._layers import META_KEY, geometry_from_layer, lesion_colour

if TYPE_CHECKING:
    import napari

    from ._session import StudySession

__all__ = ["PromptLayers", "prompt_layer_ids", "PendingLesion", "MIN_BOX_VOXELS"]

_POINT_COLUMNS = {"lesion_id": "int64", "pid": "int64", "done": "bool", "sign": "int64"}
_BOX_COLUMNS = {"lesion_id": "int64", "pid": "int64", "done": "bool", "z0": "int64", "z1": "int64"}
# A drawn rectangle narrower than this (voxels, in y or x) is a slip of the mouse, not a box.
MIN_BOX_VOXELS = 2.0
# The box layer's planes sit this fraction of a slice above the slider's planes: napari truncates
# a rectangle's plane index (int()), so an index of k - 1e-9 would land on plane k - 1.
_PLANE_EPS = 1e-3


def _empty_features(columns: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame({k: pd.Series(dtype=v) for k, v in columns.items()})


def _find(viewer, role: str, uid: str):
    for layer in viewer.layers:
        meta = layer.metadata.get(META_KEY) if isinstance(layer.metadata, dict) else None
        if isinstance(meta, dict) and meta.get("role") == role and meta.get("image_id") == uid:
            return layer
    return None


def prompt_layer_ids(viewer) -> set[int]:
    """Lesion ids used by any prompt layer in the viewer (so new ids never collide)."""
    ids: set[int] = set()
    for layer in viewer.layers:
        meta = layer.metadata.get(META_KEY) if isinstance(layer.metadata, dict) else None
        if isinstance(meta, dict) and meta.get("role") in ("point_prompts", "box_prompts"):
            feats = layer.features
            if "lesion_id" in feats:
                ids.update(int(v) for v in feats["lesion_id"] if int(v) > 0)
    return ids


class PendingLesion:
    """Everything to (re-)segment one lesion: its prompts (include first, then exclude) and their keys.

    ``prompts`` are the positive prompts (a box, and/or points); ``negatives`` the exclude clicks;
    ``keys`` the (layer, pid) of every row that is sent (marked done after the run).
    """

    def __init__(self, lesion_id: int) -> None:
        self.lesion_id = int(lesion_id)
        self.prompts: list[Prompt] = []
        self.negatives: list[PointPrompt] = []
        self.keys: list[tuple[str, int]] = []
        self.refine = False  # it had been segmented before (done rows are part of it)

    @property
    def prompt(self) -> Prompt:
        """The latest positive prompt (what a one-prompt-per-lesion engine gets)."""
        return self.prompts[-1]

    def __repr__(self) -> str:
        return f"PendingLesion({self.lesion_id}, prompts={self.prompts}, negatives={self.negatives})"


class PromptLayers:
    """Point and box prompts for one image layer (created on first use, found again afterwards).

    Parameters
    ----------
    viewer : napari.Viewer
    image_layer : napari.layers.Image
        The CT volume the prompts refer to.
    session : StudySession or callable
        The viewer's session (active timepoint, lesion under a click, fresh ids, notes); a plain
        callable returning fresh ids also works (no refinement, no active-timepoint check).
    """

    def __init__(self, viewer: napari.Viewer, image_layer, session) -> None:
        self.viewer = viewer
        self.image_layer = image_layer
        self.geometry: Geometry = geometry_from_layer(image_layer)
        self.session: StudySession | None = None if callable(session) and not hasattr(session, "next_lesion_id") \
            else session
        self._next_id = session if self.session is None else self.session.next_lesion_id
        self.target_id: int | None = None
        self._pid = 0
        self._press_modifiers: set[str] = set()
        self.refused: list[str] = []  # why the last refused rows were refused (newest last)
        uid = str(image_layer.unique_id)
        transform = self.geometry.napari_transform()
        self.points = _find(viewer, "point_prompts", uid) or viewer.add_points(
            np.empty((0, 3)), ndim=3, name=f"{image_layer.name} point prompts",
            features=_empty_features(_POINT_COLUMNS), size=max(4.0, 6.0 / min(self.geometry.spacing)),
            border_color="white", border_width=0.15,
            text={"string": "{lesion_id}", "color": "white", "anchor": "upper_left", "size": 9},
            metadata={META_KEY: {"role": "point_prompts", "image": image_layer.name, "image_id": uid}},
            **transform,
        )
        self.boxes = _find(viewer, "box_prompts", uid) or viewer.add_shapes(
            None, ndim=3, name=f"{image_layer.name} box prompts", features=_empty_features(_BOX_COLUMNS),
            edge_width=1.0, face_color=[0, 0, 0, 0], edge_color="yellow",
            metadata={META_KEY: {"role": "box_prompts", "image": image_layer.name, "image_id": uid}},
            **self._grid_frame(),
        )
        self.wire = _find(viewer, "box_wireframe", uid) or viewer.add_shapes(
            None, ndim=3, name=f"{image_layer.name} boxes 3D", edge_width=0.7, face_color=[0, 0, 0, 0],
            metadata={META_KEY: {"role": "box_wireframe", "image": image_layer.name, "image_id": uid}},
            **transform,
        )
        self.wire.editable = False
        self.points.feature_defaults = {"lesion_id": 0, "pid": 0, "done": False, "sign": 1}
        self.boxes.feature_defaults = {"lesion_id": 0, "pid": 0, "done": False, "z0": 0, "z1": 0}
        # The pids of each layer's rows after the last event we handled: a row whose pid is not
        # among them is new, even when napari gave it a deleted row's features.
        self._live: dict[int, set[int]] = {}
        for layer in (self.points, self.boxes):
            feats = layer.features
            self._live[id(layer)] = {int(v) for v in feats["pid"]} if "pid" in feats else set()
            if len(feats) and "pid" in feats:
                self._pid = max(self._pid, int(feats["pid"].max()))
        self.points.events.data.connect(self._on_points_data)
        self.boxes.events.data.connect(self._on_boxes_data)
        for layer in (self.points, self.boxes):
            layer.mouse_drag_callbacks.insert(0, self._remember_modifiers)
        viewer.dims.events.range.connect(self._on_dims_range)

    def disconnect(self) -> None:
        self.points.events.data.disconnect(self._on_points_data)
        self.boxes.events.data.disconnect(self._on_boxes_data)
        self.viewer.dims.events.range.disconnect(self._on_dims_range)
        for layer in (self.points, self.boxes):
            if self._remember_modifiers in layer.mouse_drag_callbacks:
                layer.mouse_drag_callbacks.remove(self._remember_modifiers)

    def layers(self) -> list:
        return [self.points, self.boxes, self.wire]

    # --------------------------------------------------------------- box layer frame
    def _grid_frame(self) -> dict:
        """scale/translate putting the box layer's z planes exactly on the viewer's slider positions."""
        rng = self.viewer.dims.range[0] if self.viewer.dims.ndim == 3 else None
        step = float(rng.step) if rng is not None and rng.step > 0 else float(self.geometry.spacing[0])
        start = float(rng.start) if rng is not None and np.isfinite(rng.start) else float(self.geometry.origin[0])
        return {"scale": (step, float(self.geometry.spacing[1]), float(self.geometry.spacing[2])),
                "translate": (start - _PLANE_EPS * step, 0.0, 0.0)}

    def _frame_valid(self) -> bool:
        rng = self.viewer.dims.range[0]
        step = float(self.boxes.scale[0])
        if not np.isclose(step, float(rng.step), rtol=1e-6):
            return False
        k = (float(rng.start) - (float(self.boxes.translate[0]) + _PLANE_EPS * step)) / step
        return abs(k - round(k)) < 1e-4

    def _on_dims_range(self, event=None) -> None:
        """The slice grid changed (a scan was opened or closed): move the box layer onto the new grid,
        keeping every box where it is in world space."""
        if self.viewer.dims.ndim != 3 or self._frame_valid():
            return
        world = [np.array([self.boxes.data_to_world(v) for v in shape]) for shape in self.boxes.data]
        feats = self.boxes.features.copy()
        frame = self._grid_frame()
        self.boxes.events.data.disconnect(self._on_boxes_data)
        try:
            self.boxes.scale = frame["scale"]
            self.boxes.translate = frame["translate"]
            if world:
                self.boxes.data = [np.array([self.boxes.world_to_data(w) for w in shape]) for shape in world]
                self.boxes.features = feats
                self._remember_rows(self.boxes)
        finally:
            self.boxes.events.data.connect(self._on_boxes_data)
        self._recolour_boxes()

    # --------------------------------------------------------------- new rows
    def _remember_modifiers(self, layer, event) -> None:
        """Runs before napari's own add tool: which modifiers the reader held while clicking."""
        self._press_modifiers = {str(getattr(m, "name", m)) for m in (event.modifiers or ())}

    def _intent(self) -> tuple[bool, bool]:
        """(new lesion on purpose, exclude) for the row being added."""
        mods, self._press_modifiers = self._press_modifiers, set()
        session = self.session
        new = "Shift" in mods or bool(session is not None and session.force_new)
        negative = "Control" in mods or bool(session is not None and session.exclude)
        return new, negative

    def _refuse(self, layer, rows: list[int], why: str) -> None:
        """Take rows out again (after napari's own handler of the add has finished) and say why."""
        from qtpy.QtCore import QTimer

        self.refused.append(why)
        pids = {int(layer.features["pid"].iloc[i]) for i in rows}

        def remove() -> None:
            keep = [i for i, v in enumerate(layer.features["pid"]) if int(v) in pids]
            if keep:
                layer.selected_data = set(keep)
                layer.remove_selected()
            if layer is self.boxes:
                self.refresh_wireframe()

        QTimer.singleShot(0, remove)
        _notify("warning", why)

    def _check_active(self) -> str | None:
        session = self.session
        if session is None:
            return None
        active = session.active_image()
        if active is not self.image_layer:
            other = active.name if active is not None else "no scan"
            return (f"Prompt refused: {self.image_layer.name} is not the scan you are looking at ({other}). "
                    f"Select {self.image_layer.name} in the layer list (or the Timeline) to prompt on it.")
        return None

    def _new_rows(self, layer) -> tuple[pd.DataFrame, list[int]]:
        """Rows added since the last call: a pid never handed out, or repeated (napari copies the
        selected row's features, even a deleted one's, into ``feature_defaults``, so a new row may
        carry another prompt's pid)."""
        feats = layer.features.copy()
        seen: set[int] = set()
        new_rows = []
        for i in range(len(feats)):
            pid = int(feats["pid"].iloc[i])
            if pid <= 0 or pid in seen or pid not in self._live[id(layer)]:
                new_rows.append(i)
            else:
                seen.add(pid)
        return feats, new_rows

    def _claim(self, feats: pd.DataFrame, i: int, lesion_id: int, **extra) -> None:
        self._pid += 1
        feats.loc[feats.index[i], "lesion_id"] = int(lesion_id)
        feats.loc[feats.index[i], "pid"] = self._pid
        feats.loc[feats.index[i], "done"] = False
        for key, value in extra.items():
            feats.loc[feats.index[i], key] = value

    def _remember_rows(self, layer) -> None:
        self._live[id(layer)] = {int(v) for v in layer.features["pid"]}

    def _on_points_data(self, event) -> None:
        action = getattr(event, "action", "added")
        if action in ("removed", "changed"):
            self._remember_rows(self.points)
        if action != "added":
            return
        feats, rows = self._new_rows(self.points)
        if not rows:
            return
        new, negative = self._intent()
        refused: list[int] = []
        why = self._check_active()
        notes = []
        for i in rows:
            self._claim(feats, i, 0, sign=1)  # a pid first, so even a refused row can be found again
            if why is not None:
                refused.append(i)
                continue
            world = np.asarray(self.points.data_to_world(self.points.data[i]), dtype=float)
            under = self.session.lesion_at(self.image_layer, world) if self.session is not None else 0
            if negative:
                lid = under or (self.session.current_lesion if self.session is not None else 0)
                if not lid:
                    refused.append(i)
                    why = "Exclude click refused: click inside the lesion to correct (or choose its id first)."
                    continue
                feats.loc[feats.index[i], ["lesion_id", "sign"]] = [int(lid), -1]
                notes.append(f"Exclude click on lesion {lid}: Segment takes the marked region out of it.")
            elif self.target_id:  # re-prompt: this point replaces the lesion's earlier prompts
                feats.loc[feats.index[i], ["lesion_id", "sign"]] = [int(self.target_id), 2]
            elif under and not new:
                feats.loc[feats.index[i], "lesion_id"] = int(under)
                notes.append(f"Click inside lesion {under}: it refines lesion {under} (Shift+click for a new lesion).")
            else:
                feats.loc[feats.index[i], "lesion_id"] = int(self._next_id())
                if self.session is not None:
                    self.session.note_ids([int(feats["lesion_id"].iloc[i])])
        self.points.features = feats
        self._remember_rows(self.points)
        if refused:
            self._refuse(self.points, refused, why)
        self._recolour_points()
        if notes and self.session is not None:
            self.session.note.emit(notes[-1])

    def _on_boxes_data(self, event) -> None:
        action = getattr(event, "action", "added")
        if action in ("removed", "changed"):
            self._remember_rows(self.boxes)
        if action == "added":
            self._claim_boxes()
        if action in ("added", "removed", "changed"):
            self.refresh_wireframe()

    def _claim_boxes(self) -> None:
        feats, rows = self._new_rows(self.boxes)
        if not rows:
            return
        new, _ = self._intent()
        why = self._check_active()
        refused: list[int] = []
        notes = []
        for i in rows:
            self._claim(feats, i, 0)
            if why is not None:
                refused.append(i)
                continue
            idx = rectangle_indices(self.boxes, self.boxes.data[i], self.geometry)
            size = np.ptp(idx[:, 1:], axis=0)
            if np.any(size < MIN_BOX_VOXELS):
                refused.append(i)
                why = (f"Box dropped: {size[0]:.1f} x {size[1]:.1f} voxels is too small to be a box "
                       "(drag a rectangle around the lesion).")
                continue
            z0, z1 = default_z_range(self.boxes, self.boxes.data[i], self.geometry)
            centre = np.asarray(self.boxes.data_to_world(np.mean(self.boxes.data[i], axis=0)), dtype=float)
            under = self.session.lesion_at(self.image_layer, centre) if self.session is not None else 0
            if self.target_id:
                lid = int(self.target_id)
            elif under and not new:
                lid = int(under)
                notes.append(f"Box around lesion {under}: it replaces lesion {under}'s prompt "
                             "(Shift while drawing for a new lesion).")
            else:
                lid = int(self._next_id())
                if self.session is not None:
                    self.session.note_ids([lid])
            feats.loc[feats.index[i], ["lesion_id", "z0", "z1"]] = [lid, z0, z1]
        self.boxes.features = feats
        self._remember_rows(self.boxes)
        if refused:
            self._refuse(self.boxes, refused, why)
        self._recolour_boxes()
        if notes and self.session is not None:
            self.session.note.emit(notes[-1])

    def _recolour_points(self) -> None:
        if len(self.points.data):
            feats = self.points.features
            self.points.face_color = np.array([lesion_colour(i) if int(i) > 0 else (1, 1, 1, 1)
                                               for i in feats["lesion_id"]])
            if "sign" in feats:
                self.points.symbol = ["x" if int(s) < 0 else "disc" for s in feats["sign"]]
            self.points.refresh()

    def _recolour_boxes(self) -> None:
        if len(self.boxes.data):
            self.boxes.edge_color = np.array([lesion_colour(i) if int(i) > 0 else (1, 1, 1, 1)
                                              for i in self.boxes.features["lesion_id"]])

    # --------------------------------------------------------------- programmatic adds
    def add_point_world(self, world_zyx, lesion_id: int | None = None, *, negative: bool = False,
                        new: bool = False) -> int:
        """Add a point at a world position (mm, z y x) as a click would; returns its lesion id (0: refused)."""
        data = np.asarray(self.points.world_to_data(np.asarray(world_zyx, dtype=float)), dtype=float)
        previous, self.target_id = self.target_id, lesion_id or self.target_id
        self._press_modifiers = ({"Control"} if negative else set()) | ({"Shift"} if new else set())
        try:
            self.points.add(data.reshape(1, 3))
        finally:
            self.target_id = previous
        return int(self.points.features["lesion_id"].iloc[-1])

    def add_box_world(self, corner_a, corner_b, z_range: tuple[int, int] | None = None, *, new: bool = False) -> int:
        """Add a rectangle (two opposite world corners on one slice); optional inclusive slice range."""
        a = np.asarray(self.boxes.world_to_data(np.asarray(corner_a, dtype=float)), dtype=float)
        b = np.asarray(self.boxes.world_to_data(np.asarray(corner_b, dtype=float)), dtype=float)
        z = float(np.floor(a[0] + 0.5)) + _PLANE_EPS  # on a slider plane, as a drawn box is
        rect = np.array([[z, a[1], a[2]], [z, a[1], b[2]], [z, b[1], b[2]], [z, b[1], a[2]]])
        self._press_modifiers = {"Shift"} if new else set()
        self.boxes.add_rectangles(rect)
        if z_range is not None and int(self.boxes.features["lesion_id"].iloc[-1]) > 0:
            self.set_z_range(len(self.boxes.data) - 1, *z_range)
        return int(self.boxes.features["lesion_id"].iloc[-1])

    def set_z_range(self, row: int, z0: int, z1: int) -> None:
        """Set the inclusive slice range of box ``row`` (clipped into the volume)."""
        n = self.geometry.shape[0]
        z0, z1 = sorted((int(np.clip(z0, 0, n - 1)), int(np.clip(z1, 0, n - 1))))
        feats = self.boxes.features.copy()
        feats.loc[feats.index[row], ["z0", "z1"]] = [z0, z1]
        feats.loc[feats.index[row], "done"] = False  # a changed box is a new prompt for its lesion
        self.boxes.features = feats
        self.refresh_wireframe()

    # --------------------------------------------------------------- prompts
    def box_prompt(self, row: int) -> BoxPrompt:
        feats = self.boxes.features
        return box_from_rectangle(int(feats["lesion_id"].iloc[row]), self.boxes, self.boxes.data[row],
                                  (int(feats["z0"].iloc[row]), int(feats["z1"].iloc[row])), self.geometry)

    def _rows(self) -> list[tuple[str, int, int, bool, object]]:
        """Every claimed prompt row as (kind, pid, lesion id, done, prompt or PromptError), in the order made."""
        out = []
        feats = self.points.features
        for i in range(len(self.points.data)):
            lid = int(feats["lesion_id"].iloc[i])
            if lid <= 0:
                continue
            world = self.points.data_to_world(self.points.data[i])
            sign = int(feats["sign"].iloc[i]) if "sign" in feats else 1
            try:
                prompt: object = PointPrompt.from_world(lid, world, self.geometry)
            except PromptError as exc:
                prompt = exc
            kind = {1: "points", 2: "restart"}.get(sign, "negative")
            out.append((kind, int(feats["pid"].iloc[i]), lid,
                        bool(feats["done"].iloc[i]), prompt))
        feats = self.boxes.features
        for i in range(len(self.boxes.data)):
            lid = int(feats["lesion_id"].iloc[i])
            if lid <= 0:
                continue
            try:
                prompt = self.box_prompt(i)
            except PromptError as exc:
                prompt = exc
            out.append(("boxes", int(feats["pid"].iloc[i]), lid, bool(feats["done"].iloc[i]), prompt))
        return sorted(out, key=lambda r: r[1])

    def pending_lesions(self, *, accumulate: bool = True) -> tuple[list[PendingLesion], list[str]]:
        """The lesions with prompts not segmented yet, and the problems of prompts that cannot run.

        With ``accumulate`` (engines that combine several prompts, i.e. the classical engine in
        this GUI): a lesion's prompts are its latest box and every include/exclude point made
        after it, done or not. Without: only its latest include prompt (a new point or box
        replaces the lesion's prompt, as the LesionLocator model takes one per lesion); exclude
        clicks are reported as unsupported. A prompt outside the volume is reported and skipped.
        """
        rows = self._rows()
        problems: list[str] = []
        pending_ids = {lid for kind, pid, lid, done, p in rows if not done}
        out: list[PendingLesion] = []
        for lid in sorted(pending_ids):
            mine = [r for r in rows if r[2] == lid]
            valid = []
            for kind, pid, _, done, prompt in mine:
                if isinstance(prompt, PromptError):
                    if not done:
                        problems.append(f"{self.image_layer.name}: {prompt}")
                    continue
                valid.append((kind, pid, done, prompt))
            job = PendingLesion(lid)
            if not accumulate:
                negatives = [v for v in valid if v[0] == "negative" and not v[2]]
                if negatives:
                    problems.append(f"lesion {lid}: this engine takes no exclude clicks (one point or one box "
                                    "per lesion); draw a tighter box instead")
                    job.keys.extend(("points", v[1]) for v in negatives)
                positives = [v for v in valid if v[0] != "negative"]
                if positives:
                    kind, pid, done, prompt = positives[-1]
                    job.prompts.append(prompt)
                    job.keys.extend(("points" if k != "boxes" else "boxes", p) for k, p, d, _ in positives if not d)
                    job.refine = any(d for _, _, d, _ in positives[:-1])
            else:
                # a box, or a re-prompt point, replaces what came before it
                boxes = [i for i, v in enumerate(valid) if v[0] in ("boxes", "restart")]
                start = boxes[-1] if boxes else 0
                used = valid[start:]
                job.refine = any(d for _, _, d, _ in used)
                for kind, pid, _done, prompt in used:
                    (job.negatives if kind == "negative" else job.prompts).append(prompt)
                    job.keys.append(("boxes" if kind == "boxes" else "points", pid))
                # prompts before the latest box are superseded by it
                job.keys.extend(("boxes" if k == "boxes" else "points", p) for k, p, d, _ in valid[:start] if not d)
            if job.prompts:
                out.append(job)
            elif job.keys and not accumulate:
                out.append(job)  # only unsupported negatives: they are marked done, nothing runs
            elif job.negatives:
                problems.append(f"lesion {lid}: an exclude click needs the lesion's own prompt; prompt it first")
        return out, problems

    def pending(self) -> list[tuple[Prompt, tuple[str, int]]]:
        """The latest include prompt of each lesion not segmented yet, with its (layer, pid) key.

        Raises PromptError for a prompt outside the image (see :meth:`pending_lesions` for the
        form that skips and reports them instead).
        """
        jobs, problems = self.pending_lesions(accumulate=False)
        if problems:
            raise PromptError("; ".join(problems))
        return [(job.prompt, job.keys[-1]) for job in jobs if job.prompts]

    def invalid_keys(self) -> list[tuple[str, int]]:
        """Prompts that cannot run (outside the volume), to remove them."""
        return [("boxes" if kind == "boxes" else "points", pid) for kind, pid, _, _done, prompt in self._rows()
                if isinstance(prompt, PromptError)]

    def remove_keys(self, keys: Iterable[tuple[str, int]]) -> int:
        keys = {("boxes" if k == "boxes" else "points", p) for k, p in keys}
        n = 0
        for name, layer in (("points", self.points), ("boxes", self.boxes)):
            pids = {pid for kind, pid in keys if kind == name}
            rows = {i for i, v in enumerate(layer.features["pid"]) if int(v) in pids}
            if rows:
                layer.selected_data = rows
                layer.remove_selected()
                n += len(rows)
        self.refresh_wireframe()
        return n

    def mark_done(self, keys: Iterable[tuple[str, int]]) -> None:
        """Mark prompts as segmented."""
        keys = set(keys)
        for name, layer in (("points", self.points), ("boxes", self.boxes)):
            pids = {pid for kind, pid in keys if kind == name}
            if not pids:
                continue
            feats = layer.features.copy()
            feats.loc[feats["pid"].isin(pids), "done"] = True
            layer.features = feats

    def rows_of(self, ids: Iterable[int]) -> dict:
        """The prompt rows of some lesions (data in layer coordinates and features), to restore them later."""
        ids = {int(i) for i in ids}
        out = {}
        for name, layer in (("points", self.points), ("boxes", self.boxes)):
            rows = [i for i, v in enumerate(layer.features["lesion_id"]) if int(v) in ids]
            out[name] = ([np.asarray(layer.data[i]).copy() for i in rows], layer.features.iloc[rows].copy())
        return out

    def restore_rows(self, saved: dict) -> None:
        """Put back rows saved by :meth:`rows_of` (the undo of a deletion)."""
        for name, layer in (("points", self.points), ("boxes", self.boxes)):
            data, feats = saved.get(name, ([], None))
            if not data:
                continue
            handler = self._on_points_data if name == "points" else self._on_boxes_data
            layer.events.data.disconnect(handler)
            try:
                old = layer.features.copy()
                if name == "points":
                    layer.add(np.asarray(data))
                else:
                    layer.add_rectangles(list(data))
                layer.features = pd.concat([old, feats], ignore_index=True)
                self._remember_rows(layer)
            finally:
                layer.events.data.connect(handler)
        self._recolour_points()
        self._recolour_boxes()
        self.refresh_wireframe()

    def remove_ids(self, ids: Iterable[int]) -> None:
        ids = {int(i) for i in ids}
        for layer in (self.points, self.boxes):
            rows = {i for i, v in enumerate(layer.features["lesion_id"]) if int(v) in ids}
            if rows:
                layer.selected_data = rows
                layer.remove_selected()
        self.refresh_wireframe()

    def ids(self) -> set[int]:
        out: set[int] = set()
        for layer in (self.points, self.boxes):
            out.update(int(v) for v in layer.features["lesion_id"] if int(v) > 0)
        return out

    # --------------------------------------------------------------- 3D boxes
    def refresh_wireframe(self) -> None:
        """Redraw the 3D outline of every box prompt (data in the image's voxel indices)."""
        shapes, kinds, colours = [], [], []
        for row in range(len(self.boxes.data)):
            try:
                if int(self.boxes.features["lesion_id"].iloc[row]) <= 0:
                    continue
                box = self.box_prompt(row)
            except Exception:  # noqa: BLE001 - an unfinished/outside box is simply not drawn
                continue
            for data, kind in box_wireframe(box):
                shapes.append(data)
                kinds.append(kind)
                colours.append(lesion_colour(box.lesion_id))
        self.wire.data = []
        if shapes:
            self.wire.add(shapes, shape_type=kinds, edge_color=np.array(colours), face_color=[0, 0, 0, 0])
        self.wire.visible = bool(shapes) and self.boxes.visible


def _notify(kind: str, message: str) -> None:
    from napari.utils import notifications

    {"info": notifications.show_info, "warning": notifications.show_warning,
     "error": notifications.show_error}[kind](message)
