"""Point and box prompts in voxel indices, their JSON format and their derivation from label maps.

Formats follow LesionLocator's prompt JSON::

    {"1": {"point": [z, y, x]}, "2": {"point": [z, y, x]}}
    {"1": {"box": [zmin, zmax, ymin, ymax, xmin, xmax]}}      # half-open (max exclusive)

Numbers given as strings are accepted on reading. Keys are lesion ids (integers in
``1 .. MAX_LESION_ID``, gaps allowed). Reading and writing the files is
:mod:`napari_lesionlocator.io.prompt_files` (this module stays pure).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from .errors import PromptError
from .geometry import Geometry

__all__ = [
    "PointPrompt",
    "BoxPrompt",
    "Prompt",
    "PromptKind",
    "MAX_LESION_ID",
    "read_prompt_json",
    "prompts_to_json_dict",
    "prompts_from_json_dict",
    "prompts_from_label_map",
    "instance_map_from_labels",
]

PromptKind = Literal["point", "box"]


MAX_LESION_ID = 2**32 - 1  # label maps are written as unsigned 32-bit integers at most


def _check_id(lesion_id: int) -> int:
    try:
        lid = int(lesion_id)
    except (TypeError, ValueError, OverflowError):
        raise PromptError(f"lesion id {lesion_id!r} is not an integer (allowed: 1 to {MAX_LESION_ID})") from None
    if isinstance(lesion_id, float) and lesion_id != lid:
        raise PromptError(f"lesion id {lesion_id!r} is not a whole number (allowed: 1 to {MAX_LESION_ID})")
    if not 1 <= lid <= MAX_LESION_ID:
        shown = str(lesion_id) if len(str(lesion_id)) <= 24 else f"{str(lesion_id)[:20]}... ({len(str(lid))} digits)"
        raise PromptError(f"lesion id {shown} is out of range: ids must be positive integers from 1 to {MAX_LESION_ID} "
                          "(2^32 - 1, the largest id a label map can hold)")
    return lid


@dataclass(frozen=True)
class PointPrompt:
    """A click on a lesion: voxel index (z, y, x) in the image's array."""

    lesion_id: int
    zyx: tuple[int, int, int]
    kind: PromptKind = "point"

    def __post_init__(self) -> None:
        object.__setattr__(self, "lesion_id", _check_id(self.lesion_id))
        if len(self.zyx) != 3:
            raise PromptError(f"lesion {self.lesion_id}: a point needs 3 coordinates (z, y, x), got {self.zyx}")
        object.__setattr__(self, "zyx", tuple(int(round(float(v))) for v in self.zyx))

    def validate(self, shape: Sequence[int]) -> None:
        """Raise PromptError when the point lies outside an array of ``shape``."""
        for axis, (v, n) in enumerate(zip(self.zyx, shape, strict=True)):
            if not 0 <= v < n:
                raise PromptError(
                    f"lesion {self.lesion_id}: point {list(self.zyx)} is outside the volume "
                    f"(axis {'zyx'[axis]} must be in [0, {n - 1}], volume shape {tuple(shape)})"
                )

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(start, stop) half-open voxel bounds of the prompt."""
        p = np.asarray(self.zyx)
        return p, p + 1

    def to_world(self, geometry: Geometry) -> np.ndarray:
        return geometry.index_to_world(np.asarray(self.zyx, dtype=float))

    @classmethod
    def from_world(cls, lesion_id: int, world_zyx: Sequence[float], geometry: Geometry) -> PointPrompt:
        idx = geometry.world_to_nearest_index(world_zyx)
        prompt = cls(lesion_id, tuple(int(v) for v in idx))
        prompt.validate(geometry.shape)
        return prompt


@dataclass(frozen=True)
class BoxPrompt:
    """A 3D box around a lesion: ``[zmin, zmax, ymin, ymax, xmin, xmax]``, max exclusive."""

    lesion_id: int
    box: tuple[int, int, int, int, int, int]
    kind: PromptKind = "box"

    def __post_init__(self) -> None:
        object.__setattr__(self, "lesion_id", _check_id(self.lesion_id))
        if len(self.box) != 6:
            raise PromptError(
                f"lesion {self.lesion_id}: a box needs 6 numbers [zmin, zmax, ymin, ymax, xmin, xmax], got {self.box}"
            )
        vals = tuple(int(round(float(v))) for v in self.box)
        object.__setattr__(self, "box", vals)
        for axis in range(3):
            lo, hi = vals[2 * axis], vals[2 * axis + 1]
            if hi <= lo:
                raise PromptError(
                    f"lesion {self.lesion_id}: the box is empty along {'zyx'[axis]} "
                    f"([{lo}, {hi}) holds no voxel; boxes are half-open, max exclusive)"
                )

    @property
    def start(self) -> np.ndarray:
        return np.asarray(self.box[0::2])

    @property
    def stop(self) -> np.ndarray:
        return np.asarray(self.box[1::2])

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.start, self.stop

    @property
    def center(self) -> np.ndarray:
        """Continuous voxel index of the box centre."""
        return (self.start + self.stop - 1) / 2.0

    def validate(self, shape: Sequence[int]) -> None:
        """Raise PromptError when the box does not overlap an array of ``shape`` at all, or sticks out."""
        shape = np.asarray(shape)
        if np.any(self.start < 0) or np.any(self.stop > shape):
            raise PromptError(
                f"lesion {self.lesion_id}: box {list(self.box)} reaches outside the volume of shape "
                f"{tuple(int(s) for s in shape)} (z, y, x); clip it to the image"
            )

    def clipped(self, shape: Sequence[int]) -> BoxPrompt:
        """The box clipped to the volume; PromptError if nothing is left."""
        start = np.clip(self.start, 0, np.asarray(shape))
        stop = np.clip(self.stop, 0, np.asarray(shape))
        box = (start[0], stop[0], start[1], stop[1], start[2], stop[2])
        return BoxPrompt(self.lesion_id, tuple(int(v) for v in box))

    def corners_world(self, geometry: Geometry) -> np.ndarray:
        """The 8 outer corners (voxel edges) of the box in world mm (z, y, x), shape (8, 3)."""
        lo = self.start - 0.5
        hi = self.stop - 0.5
        corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
        return geometry.index_to_world(corners)


Prompt = PointPrompt | BoxPrompt


# ---------------------------------------------------------------------- JSON
def prompts_to_json_dict(prompts: Iterable[Prompt]) -> dict[str, dict[str, list[int]]]:
    out: dict[str, dict[str, list[int]]] = {}
    for p in prompts:
        key = str(p.lesion_id)
        if key in out:
            raise PromptError(f"two prompts share lesion id {p.lesion_id}")
        out[key] = {"point": list(p.zyx)} if isinstance(p, PointPrompt) else {"box": list(p.box)}
    return out


def prompts_from_json_dict(data: object, source: str = "prompt JSON") -> list[Prompt]:
    if not isinstance(data, dict):
        raise PromptError(f"{source}: expected an object {{'1': {{'point': [z, y, x]}}}}, got {type(data).__name__}")
    prompts: list[Prompt] = []
    seen: dict[int, str] = {}
    for key, entry in data.items():
        try:
            lesion_id = int(str(key).strip())
        except ValueError:
            raise PromptError(f"{source}: key {key!r} is not a lesion id (an integer from 1 to {MAX_LESION_ID})") \
                from None
        try:
            _check_id(lesion_id)
        except PromptError as exc:
            raise PromptError(f"{source}: {exc}") from None
        if lesion_id in seen:
            # "1" and "01" are the same lesion; silently keeping one would drop a prompt.
            raise PromptError(f"{source}: keys {seen[lesion_id]!r} and {key!r} both name lesion {lesion_id}")
        seen[lesion_id] = str(key)
        if not isinstance(entry, dict) or not ({"point", "box"} & set(entry)):
            raise PromptError(f"{source}: lesion {key!r} needs a 'point' or a 'box' entry, got {entry!r}")
        kind = "box" if "box" in entry else "point"
        coords = entry[kind]
        # A string is iterable: "123" must not become the point (1, 2, 3).
        if not isinstance(coords, list | tuple):
            raise PromptError(f"{source}: lesion {key!r}: '{kind}' must be a list of numbers, got {coords!r}")
        try:
            values = tuple(_number(v) for v in coords)
            if kind == "box":
                prompts.append(BoxPrompt(lesion_id, values))
            else:
                prompts.append(PointPrompt(lesion_id, values))
        except PromptError as exc:
            raise PromptError(f"{source}: {exc}") from None
        except (TypeError, ValueError, OverflowError):
            raise PromptError(f"{source}: lesion {key!r} has non-numeric coordinates: {entry!r}") from None
    return sorted(prompts, key=lambda p: p.lesion_id)


def _number(value: object) -> float:
    """A finite coordinate from a JSON number or numeric string (the official files use both)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"not a number: {value!r}")
    out = float(value)
    if not np.isfinite(out):
        raise ValueError(f"not a finite number: {value!r}")
    return out


MAX_PROMPT_FILE_BYTES = 64 * 2**20  # 10,000 boxes take about 1 MB


def read_prompt_json(path: str | os.PathLike) -> list[Prompt]:
    """Read a LesionLocator prompt JSON; PromptError with the file name on any problem.

    (Writing is :func:`napari_lesionlocator.io.prompt_files.write_prompt_json`, atomic.)
    """
    path = Path(path)
    try:
        if path.is_dir():
            raise PromptError(f"{path} is a folder, not a prompt JSON file")
        size = path.stat().st_size
        if size > MAX_PROMPT_FILE_BYTES:
            raise PromptError(f"{path}: {size / 2**20:.0f} MB is far too large for a prompt file (a prompt "
                              "file with 10,000 lesions takes about 1 MB); is it the right file?")
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PromptError(f"prompt file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PromptError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise PromptError(f"{path}: the JSON is nested too deeply to be a prompt file") from None
    return prompts_from_json_dict(data, source=str(path))


# ---------------------------------------------------------------- label maps
def instance_map_from_labels(labels: np.ndarray) -> np.ndarray:
    """Instance map from a label map, as LesionLocator interprets label prompts.

    A *binary* map (only non-zero value is 1) is split into 26-connected components,
    numbered 1..n in scan order; any other map keeps its ids as they are (no renumbering,
    gaps allowed, ids > 255 kept).
    """
    from scipy import ndimage

    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise PromptError(f"a label prompt must be 3D, got shape {labels.shape}")
    if labels.dtype.kind == "b":
        labels = labels.astype(np.uint8)
    elif labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise PromptError("a label prompt must hold whole-number lesion ids, found fractional values")
    elif labels.dtype.kind not in "iu":
        raise PromptError(f"a label prompt must hold integer lesion ids, got dtype {labels.dtype}")
    nonzero = np.unique(labels[labels != 0])
    if nonzero.size == 0:
        raise PromptError("the label map is empty: no lesion to prompt")
    if nonzero.size == 1 and nonzero[0] == 1:
        comps, _ = ndimage.label(labels != 0, structure=np.ones((3, 3, 3), dtype=bool))
        return comps.astype(np.uint32)
    if np.any(nonzero < 0):
        raise PromptError("label maps must not hold negative ids")
    return labels.astype(np.uint32) if labels.dtype.kind not in "u" else labels


def prompts_from_label_map(labels: np.ndarray, kind: PromptKind) -> list[Prompt]:
    """One prompt per lesion of a label map (see ``instance_map_from_labels``).

    Points are centroids (mean voxel index, rounded half to even); boxes are the
    bounding boxes ``[min, max + 1)`` per axis.
    """
    from scipy import ndimage

    if kind not in ("point", "box"):
        raise PromptError(f"unknown prompt kind {kind!r}: use 'point' or 'box'")
    inst = instance_map_from_labels(labels)
    ids = [int(v) for v in np.unique(inst) if v != 0]
    slices = ndimage.find_objects(inst) if inst.max() < 2**20 else None
    prompts: list[Prompt] = []
    for lid in ids:
        if slices is not None and slices[lid - 1] is not None:
            sl = slices[lid - 1]
            offset = np.array([s.start for s in sl])
            idx = np.argwhere(inst[sl] == lid) + offset
        else:
            idx = np.argwhere(inst == lid)
        if kind == "point":
            prompts.append(PointPrompt(lid, tuple(int(v) for v in np.round(idx.mean(axis=0)))))
        elif kind == "box":
            lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
            prompts.append(BoxPrompt(lid, (lo[0], hi[0], lo[1], hi[1], lo[2], hi[2])))
    return prompts
