"""The point and box prompt layers of one CT image layer, and the prompts they hold.

Each prompt row carries features ``lesion_id`` (the lesion it prompts), ``pid`` (a unique key so
the widget can mark exactly the prompts it sent as done, even if the user adds or deletes prompts
while a run is going) and ``done``. Box rows also carry their inclusive slice range ``z0``/``z1``.
The layers get the image's transform, so clicks land on the image's voxels in 2D and 3D views;
prompts are still converted through world coordinates (``data_to_world`` then
``Geometry.world_to_index``), so nothing assumes it.

Thread: GUI thread only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..core.geometry import Geometry
from ..core.prompts import BoxPrompt, PointPrompt, Prompt
from ._box_tool import box_from_rectangle, box_wireframe, default_z_range
from ._layers import META_KEY, geometry_from_layer, lesion_colour

if TYPE_CHECKING:
    import napari

__all__ = ["PromptLayers", "prompt_layer_ids"]

_POINT_COLUMNS = {"lesion_id": "int64", "pid": "int64", "done": "bool"}
_BOX_COLUMNS = {"lesion_id": "int64", "pid": "int64", "done": "bool", "z0": "int64", "z1": "int64"}


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


class PromptLayers:
    """Point and box prompts for one image layer (created on first use, found again afterwards).

    Parameters
    ----------
    viewer : napari.Viewer
    image_layer : napari.layers.Image
        The CT volume the prompts refer to.
    next_id : callable
        Returns the lesion id a new prompt gets when no re-prompt target is set.
    """

    def __init__(self, viewer: napari.Viewer, image_layer, next_id: Callable[[], int]) -> None:
        self.viewer = viewer
        self.image_layer = image_layer
        self.geometry: Geometry = geometry_from_layer(image_layer)
        self.next_id = next_id
        self.target_id: int | None = None
        self._pid = 0
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
            **transform,
        )
        self.wire = _find(viewer, "box_wireframe", uid) or viewer.add_shapes(
            None, ndim=3, name=f"{image_layer.name} boxes 3D", edge_width=0.7, face_color=[0, 0, 0, 0],
            metadata={META_KEY: {"role": "box_wireframe", "image": image_layer.name, "image_id": uid}},
            **transform,
        )
        self.wire.editable = False
        self.points.feature_defaults = {"lesion_id": 0, "pid": 0, "done": False}
        self.boxes.feature_defaults = {"lesion_id": 0, "pid": 0, "done": False, "z0": 0, "z1": 0}
        for layer in (self.points, self.boxes):
            feats = layer.features
            if len(feats) and "pid" in feats:
                self._pid = max(self._pid, int(feats["pid"].max()))
        self.points.events.data.connect(self._on_points_data)
        self.boxes.events.data.connect(self._on_boxes_data)

    def disconnect(self) -> None:
        self.points.events.data.disconnect(self._on_points_data)
        self.boxes.events.data.disconnect(self._on_boxes_data)

    # --------------------------------------------------------------- new rows
    def _new_id(self) -> int:
        return int(self.target_id) if self.target_id else int(self.next_id())

    def _claim_new_rows(self, layer, extra: Callable[[int], dict] | None = None) -> bool:
        """Give rows added since the last call a lesion id and a unique pid.

        napari fills a new row's features from ``feature_defaults``, which it also updates from
        the selected row; so a new row may carry a copy of another prompt's pid. A row is new
        when its pid is unset or repeats one seen in an earlier row.
        """
        feats = layer.features.copy()
        seen: set[int] = set()
        new_rows = []
        for i in range(len(feats)):
            pid = int(feats["pid"].iloc[i])
            if pid <= 0 or pid in seen:
                new_rows.append(i)
            else:
                seen.add(pid)
        if not new_rows:
            return False
        for i in new_rows:
            self._pid += 1
            # Each new prompt is a new lesion unless the user is re-prompting one.
            feats.loc[feats.index[i], "lesion_id"] = self._new_id()
            feats.loc[feats.index[i], "pid"] = self._pid
            feats.loc[feats.index[i], "done"] = False
            for key, value in (extra(i) if extra else {}).items():
                feats.loc[feats.index[i], key] = value
        layer.features = feats
        return True

    def _on_points_data(self, event) -> None:
        if getattr(event, "action", "added") != "added":
            return
        if self._claim_new_rows(self.points):
            self._recolour_points()

    def _on_boxes_data(self, event) -> None:
        action = getattr(event, "action", "added")
        if action == "added":
            def z_extent(i: int) -> dict:
                z0, z1 = default_z_range(self.boxes, self.boxes.data[i], self.geometry)
                return {"z0": z0, "z1": z1}

            self._claim_new_rows(self.boxes, z_extent)
            self._recolour_boxes()
        if action in ("added", "removed", "changed"):
            self.refresh_wireframe()

    def _recolour_points(self) -> None:
        if len(self.points.data):
            self.points.face_color = np.array([lesion_colour(i) for i in self.points.features["lesion_id"]])
            self.points.refresh()

    def _recolour_boxes(self) -> None:
        if len(self.boxes.data):
            self.boxes.edge_color = np.array([lesion_colour(i) for i in self.boxes.features["lesion_id"]])

    # --------------------------------------------------------------- programmatic adds
    def add_point_world(self, world_zyx, lesion_id: int | None = None) -> int:
        """Add a point at a world position (mm, z y x); returns its lesion id (like a click)."""
        data = np.asarray(self.points.world_to_data(np.asarray(world_zyx, dtype=float)), dtype=float)
        previous, self.target_id = self.target_id, lesion_id or self.target_id
        try:
            self.points.add(data.reshape(1, 3))
        finally:
            self.target_id = previous
        return int(self.points.features["lesion_id"].iloc[-1])

    def add_box_world(self, corner_a, corner_b, z_range: tuple[int, int] | None = None) -> int:
        """Add a rectangle (two opposite world corners on one slice); optional inclusive slice range."""
        a = np.asarray(self.boxes.world_to_data(np.asarray(corner_a, dtype=float)), dtype=float)
        b = np.asarray(self.boxes.world_to_data(np.asarray(corner_b, dtype=float)), dtype=float)
        z = a[0]
        rect = np.array([[z, a[1], a[2]], [z, a[1], b[2]], [z, b[1], b[2]], [z, b[1], a[2]]])
        self.boxes.add_rectangles(rect)
        if z_range is not None:
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

    def pending(self) -> list[tuple[Prompt, tuple[str, int]]]:
        """Prompts not segmented yet, one per lesion id (the latest wins), each with its (layer, pid) key.

        Raises PromptError for a prompt outside the image (nothing is run then).
        """
        latest: dict[int, tuple[Prompt, tuple[str, int]]] = {}
        keys: list[tuple[str, int]] = []
        feats = self.points.features
        for i in range(len(self.points.data)):
            if bool(feats["done"].iloc[i]):
                continue
            lid = int(feats["lesion_id"].iloc[i])
            world = self.points.data_to_world(self.points.data[i])
            key = ("points", int(feats["pid"].iloc[i]))
            latest[lid] = (PointPrompt.from_world(lid, world, self.geometry), key)
            keys.append(key)
        feats = self.boxes.features
        for i in range(len(self.boxes.data)):
            if bool(feats["done"].iloc[i]):
                continue
            key = ("boxes", int(feats["pid"].iloc[i]))
            prompt = self.box_prompt(i)
            latest[prompt.lesion_id] = (prompt, key)
            keys.append(key)
        self._superseded = [k for k in keys if k not in {v[1] for v in latest.values()}]
        return [latest[lid] for lid in sorted(latest)]

    def mark_done(self, keys: Iterable[tuple[str, int]]) -> None:
        """Mark prompts (and the older prompts they superseded for the same lesion) as segmented."""
        keys = set(keys) | set(getattr(self, "_superseded", []))
        for name, layer in (("points", self.points), ("boxes", self.boxes)):
            pids = {pid for kind, pid in keys if kind == name}
            if not pids:
                continue
            feats = layer.features.copy()
            feats.loc[feats["pid"].isin(pids), "done"] = True
            layer.features = feats

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
