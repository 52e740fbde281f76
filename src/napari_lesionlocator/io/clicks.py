"""Click and tracking files of the field, to and from LesionLocator prompts.

Coordinate conventions (the part that goes wrong):

=====================================  ===================  ==============  ==========================
file                                   space                axis order      lesion identity
=====================================  ===================  ==============  ==========================
LesionLocator prompt JSON              voxel index          (z, y, x)       the key (``"1"``, ...)
grand-challenge ``"Multiple points"``  **world mm** (LPS,   (x, y, z)       ``name`` when it is a
(autoPET IV interactive / longitudinal  as SimpleITK's                       number; ``"tumor"`` /
tasks)                                 physical points)                     ``"background"`` clicks
autoPET IV simulated clicks            voxel index          (x, y, z)       none: ``{"tumor": [...],
(``{"tumor": [[x, y, z]], ...}``)                                            "background": [...]}``
LongiSeg ``trackingTr.json``           voxel index of the   (x, y, z)       the key (baseline label
                                       original image                       id); ``merged_lesions``
                                                                            are follow-up ids, ``[0]``
                                                                            = disappeared
=====================================  ===================  ==============  ==========================

``(x, y, z)`` voxel order is the reverse of the numpy array's ``(z, y, x)``; world mm go through
the image's own geometry (origin, spacing and direction), never a unit-spacing guess. Missing
LongiSeg points are ``NaN``. Foreground clicks become one point prompt each (LesionLocator's
prompt is one point per lesion); background clicks have no LesionLocator equivalent and are
returned separately (``negatives``), never dropped silently.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import PromptError
from ..core.geometry import Geometry
from ..core.prompts import PointPrompt

__all__ = [
    "GCClicks",
    "read_gc_points",
    "gc_points_to_prompts",
    "prompts_to_gc_points",
    "write_gc_points",
    "read_autopet_clicks",
    "write_autopet_clicks",
    "TrackedLesion",
    "TrackingPair",
    "read_tracking_json",
    "write_tracking_json",
    "tracking_pair_prompts",
    "tracking_pair_from_results",
    "click_file_prompts",
]

_FOREGROUND = {"tumor", "tumour", "lesion", "foreground", "positive", "fg"}
_BACKGROUND = {"background", "negative", "bg"}


def _load_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise PromptError(f"click file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PromptError(f"{path}: not valid JSON ({exc})") from None


def _write_json(path: Path, data, overwrite: bool) -> Path:
    from .atomic import atomic_write_text

    return atomic_write_text(Path(path), json.dumps(data, indent=2) + "\n", overwrite=overwrite)


def _xyz(value, what: str) -> np.ndarray:
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise PromptError(f"{what}: a point needs 3 numbers (x, y, z), got {value!r}")
    try:
        out = np.asarray([float(v) for v in value])
    except (TypeError, ValueError):
        raise PromptError(f"{what}: non-numeric point {value!r}") from None
    return out


# ----------------------------------------------------------------- grand-challenge
@dataclass
class GCClicks:
    """Points of a grand-challenge "Multiple points" file, on an image's grid."""

    prompts: list[PointPrompt]  # foreground clicks / numbered lesions, as LesionLocator prompts
    negatives: list[tuple[int, int, int]]  # background clicks, voxel (z, y, x)
    outside: list[str]  # points outside the image, described
    names: dict[int, str] = field(default_factory=dict)  # lesion id -> the point's name


def read_gc_points(path: str | os.PathLike) -> list[dict]:
    """The raw points ``[{"name": ..., "point": [x, y, z] (mm)}, ...]`` of a "Multiple points" file."""
    path = Path(path)
    data = _load_json(path)
    if isinstance(data, dict) and data.get("type") == "Point" and "point" in data:
        data = {"type": "Multiple points", "points": [data]}
    if not isinstance(data, dict) or "points" not in data:
        raise PromptError(f"{path.name}: not a grand-challenge 'Multiple points' file (no 'points' list)")
    if data.get("type") not in (None, "Multiple points"):
        raise PromptError(f"{path.name}: type {data.get('type')!r}, expected 'Multiple points'")
    points = data["points"]
    if not isinstance(points, list):
        raise PromptError(f"{path.name}: 'points' must be a list")
    for i, p in enumerate(points):
        if not isinstance(p, dict) or "point" not in p:
            raise PromptError(f"{path.name}: point {i} has no 'point' entry")
        _xyz(p["point"], f"{path.name}: point {i}")
    return points


def gc_points_to_prompts(points: Sequence[dict] | str | os.PathLike, geometry: Geometry) -> GCClicks:
    """Grand-challenge points (world mm, x y z) -> point prompts on ``geometry`` (voxel z y x).

    A point whose ``name`` is a positive integer is that lesion; ``tumor``/``lesion``/unnamed
    points are new lesions numbered after the highest given id; ``background`` points go to
    ``negatives``. Points outside the grid are listed in ``outside``.
    """
    if isinstance(points, str | os.PathLike):
        points = read_gc_points(points)
    fixed: dict[int, tuple[np.ndarray, str]] = {}
    free: list[tuple[np.ndarray, str]] = []
    negatives, outside = [], []
    for i, p in enumerate(points):
        xyz = _xyz(p["point"], f"point {i}")
        name = str(p.get("name", "") or "").strip()
        idx = geometry.world_to_index(xyz[::-1])
        if not geometry.contains_index(idx):
            outside.append(f"point {i} ({name or 'unnamed'}) at {xyz.round(2).tolist()} mm (x, y, z) lies outside "
                           f"the image (voxel {np.round(idx, 1).tolist()} z, y, x)")
            continue
        if name.lower() in _BACKGROUND:
            negatives.append(tuple(int(v) for v in geometry.world_to_nearest_index(xyz[::-1])))
        elif name.isdigit() and int(name) > 0:
            if int(name) in fixed:
                raise PromptError(f"two points name lesion {name}")
            fixed[int(name)] = (idx, name)
        else:
            free.append((idx, name))
    prompts, names = [], {}
    for lid, (idx, name) in fixed.items():
        prompts.append(PointPrompt(lid, tuple(np.floor(idx + 0.5).astype(int))))
        names[lid] = name
    nxt = max(fixed, default=0) + 1
    for idx, name in free:
        prompts.append(PointPrompt(nxt, tuple(np.floor(idx + 0.5).astype(int))))
        names[nxt] = name or "tumor"
        nxt += 1
    return GCClicks(sorted(prompts, key=lambda p: p.lesion_id), negatives, outside, names)


def prompts_to_gc_points(prompts: Iterable[PointPrompt], geometry: Geometry, *,
                         negatives: Iterable[Sequence[int]] = (), name: str = "Lesion clicks") -> dict:
    """Point prompts (voxel z y x) -> a "Multiple points" dict (world mm, x y z; name = lesion id)."""
    pts = []
    for p in prompts:
        w = geometry.index_to_world(np.asarray(p.zyx, dtype=float))[::-1]
        pts.append({"name": str(p.lesion_id), "point": [float(v) for v in w]})
    for n in negatives:
        w = geometry.index_to_world(np.asarray(n, dtype=float))[::-1]
        pts.append({"name": "background", "point": [float(v) for v in w]})
    return {"name": name, "type": "Multiple points", "points": pts, "version": {"major": 1, "minor": 0}}


def write_gc_points(path: str | os.PathLike, prompts: Iterable[PointPrompt], geometry: Geometry, *,
                    negatives: Iterable[Sequence[int]] = (), overwrite: bool = False) -> Path:
    return _write_json(Path(path), prompts_to_gc_points(prompts, geometry, negatives=negatives), overwrite)


# ----------------------------------------------------------------- autoPET IV simulated clicks
def read_autopet_clicks(path: str | os.PathLike, shape: Sequence[int] | None = None) -> GCClicks:
    """``{"tumor": [[x, y, z], ...], "background": [...]}`` (voxel x y z) -> prompts (z y x), one per tumor click."""
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, dict) or not ({"tumor", "background"} & set(data)):
        raise PromptError(f"{path.name}: expected {{'tumor': [[x, y, z], ...], 'background': [...]}}")
    prompts, negatives, outside = [], [], []
    for k, xyz in enumerate(data.get("tumor", []) or []):
        zyx = tuple(int(round(v)) for v in _xyz(xyz, f"{path.name}: tumor click {k}")[::-1])
        if shape is not None and not all(0 <= v < n for v, n in zip(zyx, shape, strict=True)):
            outside.append(f"tumor click {k} at voxel {list(xyz)} (x, y, z) lies outside the image")
            continue
        prompts.append(PointPrompt(len(prompts) + 1, zyx))
    for k, xyz in enumerate(data.get("background", []) or []):
        negatives.append(tuple(int(round(v)) for v in _xyz(xyz, f"{path.name}: background click {k}")[::-1]))
    return GCClicks(prompts, negatives, outside, {p.lesion_id: "tumor" for p in prompts})


def write_autopet_clicks(path: str | os.PathLike, prompts: Iterable[PointPrompt], *,
                         negatives: Iterable[Sequence[int]] = (), overwrite: bool = False) -> Path:
    data = {"tumor": [[int(v) for v in p.zyx[::-1]] for p in prompts],
            "background": [[int(v) for v in n[::-1]] for n in negatives]}
    return _write_json(Path(path), data, overwrite)


# ----------------------------------------------------------------- LongiSeg tracking
@dataclass
class TrackedLesion:
    """One baseline lesion of a LongiSeg pair. Points are voxel (x, y, z) floats; None = NaN (absent)."""

    lesion_id: int
    bl_point: tuple[float, float, float] | None
    fu_point_prop: tuple[float, float, float] | None
    fu_point: tuple[float, float, float] | None
    merged_lesions: list[int]

    @property
    def disappeared(self) -> bool:
        return self.merged_lesions == [0]


@dataclass
class TrackingPair:
    img_bl: str
    img_fu: str
    lesions: dict[int, TrackedLesion]


def _point_or_none(value, what: str) -> tuple[float, float, float] | None:
    if value is None:
        return None
    xyz = _xyz(value, what)
    if np.any(~np.isfinite(xyz)):
        return None
    return tuple(float(v) for v in xyz)


def _parse_pair(mapping: Mapping, where: str) -> TrackingPair:
    lesions: dict[int, TrackedLesion] = {}
    img_bl = img_fu = None
    for key, entry in mapping.items():
        try:
            lid = int(str(key))
        except ValueError:
            raise PromptError(f"{where}: key {key!r} is not a lesion id") from None
        if not isinstance(entry, dict):
            raise PromptError(f"{where}: lesion {key} must be an object")
        bl, fu = str(entry.get("img_bl", "")), str(entry.get("img_fu", ""))
        if img_bl is None:
            img_bl, img_fu = bl, fu
        elif (bl, fu) != (img_bl, img_fu):
            raise PromptError(f"{where}: lesion {key} pairs {bl} -> {fu}, the others {img_bl} -> {img_fu}; "
                              "store one mapping per scan pair (a list)")
        merged = entry.get("merged_lesions", [lid])
        lesions[lid] = TrackedLesion(
            lid,
            _point_or_none(entry.get("bl_point"), f"{where}: lesion {key} bl_point"),
            _point_or_none(entry.get("fu_point_prop"), f"{where}: lesion {key} fu_point_prop"),
            _point_or_none(entry.get("fu_point"), f"{where}: lesion {key} fu_point"),
            [int(v) for v in (merged if isinstance(merged, list) else [merged])],
        )
    return TrackingPair(img_bl or "", img_fu or "", lesions)


def read_tracking_json(path: str | os.PathLike) -> dict[str, list[TrackingPair]]:
    """LongiSeg ``trackingTr.json``: patient -> scan pairs (one mapping, or a list for > 2 timepoints)."""
    path = Path(path)
    data = _load_json(path)  # json accepts the NaN LongiSeg writes for missing points
    if not isinstance(data, dict):
        raise PromptError(f"{path.name}: expected an object patient -> lesions")
    out = {}
    for patient, value in data.items():
        pairs = value if isinstance(value, list) else [value]
        out[str(patient)] = [_parse_pair(p, f"{path.name}: {patient}") for p in pairs]
    return out


def write_tracking_json(path: str | os.PathLike, data: Mapping[str, Sequence[TrackingPair]], *,
                        overwrite: bool = False) -> Path:
    """Write ``trackingTr.json`` (a single pair as one mapping, several as a list; absent points NaN)."""
    def pt(p):
        return [float("nan")] * 3 if p is None else [float(v) for v in p]

    out = {}
    for patient, pairs in data.items():
        mapped = [{str(lid): {"img_bl": pair.img_bl, "img_fu": pair.img_fu, "bl_point": pt(les.bl_point),
                              "fu_point_prop": pt(les.fu_point_prop), "fu_point": pt(les.fu_point),
                              "merged_lesions": list(les.merged_lesions)}
                   for lid, les in sorted(pair.lesions.items())} for pair in pairs]
        out[str(patient)] = mapped[0] if len(mapped) == 1 else mapped
    return _write_json(Path(path), out, overwrite)


def _prompt(lid: int, xyz) -> PointPrompt | None:
    if xyz is None:
        return None
    return PointPrompt(lid, tuple(int(math.floor(v + 0.5)) for v in xyz[::-1]))


def tracking_pair_prompts(pair: TrackingPair, *, mode: str = "manual") -> tuple[list[PointPrompt], list[PointPrompt]]:
    """(baseline prompts, follow-up prompts) in LesionLocator's voxel (z, y, x), ids = baseline label ids.

    ``mode="manual"`` takes the verified ``fu_point`` (LongiSeg's ``--mode manual``), falling back to
    ``fu_point_prop``; ``"automatic"`` takes ``fu_point_prop`` only. Lesions without a point are left
    out of that list.
    """
    if mode not in ("manual", "automatic"):
        raise ValueError("mode must be 'manual' or 'automatic'")
    bl, fu = [], []
    for lid, les in sorted(pair.lesions.items()):
        p = _prompt(lid, les.bl_point)
        if p is not None:
            bl.append(p)
        point = les.fu_point_prop if mode == "automatic" else (les.fu_point or les.fu_point_prop)
        q = _prompt(lid, point)
        if q is not None:
            fu.append(q)
    return bl, fu


def tracking_pair_from_results(img_bl: str, img_fu: str, baseline_points: Mapping[int, Sequence[float]],
                               followup_points: Mapping[int, Sequence[float] | None], *,
                               propagated_points: Mapping[int, Sequence[float] | None] | None = None) -> TrackingPair:
    """A LongiSeg pair from our results: points are voxel (z, y, x) of each image (e.g. lesion centroids).

    A follow-up point of None (lesion lost) writes ``merged_lesions: [0]`` and NaN points.
    """
    def xyz(p):
        return None if p is None else tuple(float(v) for v in list(p)[::-1])

    propagated_points = propagated_points or {}
    lesions = {}
    for lid, bl in baseline_points.items():
        fu = followup_points.get(lid)
        prop = propagated_points.get(lid, fu)
        lesions[int(lid)] = TrackedLesion(int(lid), xyz(bl), xyz(prop), xyz(fu), [0] if fu is None else [int(lid)])
    return TrackingPair(img_bl, img_fu, lesions)


def click_file_prompts(path: str | os.PathLike, geometry: Geometry) -> tuple[list[PointPrompt], list[str]] | None:
    """Point prompts from a grand-challenge "Multiple points" or autoPET IV click JSON, with notes
    (background clicks and points outside the image are reported, not used); None for any other JSON
    (e.g. LesionLocator's own prompt JSON, read elsewhere)."""
    path = Path(path)
    try:
        if path.stat().st_size > 64 * 2**20:
            return None  # far too large for a click file: read_prompt_json says so
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return None  # not a click file; read_prompt_json reports what is wrong with it
    if isinstance(data, dict) and (data.get("type") in ("Multiple points", "Point") or
                                   ("points" in data and isinstance(data.get("points"), list))):
        res = gc_points_to_prompts(path, geometry)
        what = "grand-challenge points (world mm, x y z)"
    elif isinstance(data, dict) and set(data) <= {"tumor", "background"} and data:
        res = read_autopet_clicks(path, geometry.shape)
        what = "autoPET clicks (voxel x y z)"
    else:
        return None
    notes = list(res.outside)
    if res.negatives:
        notes.append(f"{path.name}: {len(res.negatives)} background click(s) are not LesionLocator prompts; not used")
    if not res.prompts:
        raise PromptError(f"{path.name}: no foreground click inside the image ({what})")
    return res.prompts, [f"{path.name}: read as {what}"] + notes
