"""The engine interface every segmentation/tracking backend implements, and the engine table.

No torch import here: the LesionLocator engine imports torch lazily in its own module.

Life cycle (shaped for promptable networks): an engine is built once with its settings
(models load lazily on first use and stay loaded); ``prepare(image)`` may cache per-image work
(preprocessing) keyed by the image object, reused by later prompts on the same image.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ..core.errors import EngineError
from ..core.image import Image, LabelMap
from ..core.progress import CancelToken, ProgressCallback
from ..core.prompts import Prompt
from ..core.results import LesionMask, LesionResult, overlaps, results_from_label_map

__all__ = [
    "EngineSettings",
    "LesionMasks",
    "as_lesion_masks",
    "SegmentationResult",
    "TrackingResult",
    "Engine",
    "ENGINE_TABLE",
    "available_engines",
    "create_engine",
]


@dataclass
class EngineSettings:
    """Settings common to all engines. Engine-specific ones go in ``extra``.

    Parameters
    ----------
    threads : int or None
        CPU threads for the engine's numeric work (None: library default).
    device : str
        ``"cpu"``, ``"cuda"`` or ``"mps"`` (engines without a GPU path ignore it).
    checkpoint : str or None
        Model folder for engines with weights.
    folds : sequence of int or None
        Folds to ensemble (None: every fold found).
    tta : bool
        Mirroring test-time augmentation.
    """

    threads: int | None = None
    device: str = "cpu"
    checkpoint: str | None = None
    folds: Sequence[int] | None = None
    tta: bool = False
    extra: dict = field(default_factory=dict)


@dataclass
class SegmentationResult:
    """Per-lesion results plus the display instance map (one id per prompt, ids as given).

    ``lesions`` maps each lesion id to its :class:`~..core.results.LesionResult`: its own whole
    mask (never cut from ``labels``: masks of two lesions may overlap), a status and notes.
    ``labels`` is the display product, later lesion wins where masks overlap.
    ``empty_ids`` lists prompts whose mask came out empty: they are reported, never silently dropped.
    """

    labels: LabelMap
    empty_ids: list[int] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    lesions: dict[int, LesionResult] = field(default_factory=dict)

    def overlaps(self) -> list[tuple[int, int, int]]:
        """``(id_a, id_b, shared voxels)`` for lesions whose own masks overlap."""
        return overlaps(self.lesions)


@dataclass
class TrackingResult:
    """Follow-up results with the baseline's ids; ``lost_ids`` were not found in the follow-up.

    ``lesions`` holds each tracked lesion's own whole mask at the follow-up (status ``lost`` for a
    lesion not found); ``labels`` is the display instance map.
    """

    labels: LabelMap
    lost_ids: list[int] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    lesions: dict[int, LesionResult] = field(default_factory=dict)
    #: proposed new lesions at the follow-up, never added on their own:
    #: ``{"centroid_mm": [z, y, x], "box": [zmin, zmax, ymin, ymax, xmin, xmax], "score": s}``
    #: (box in the follow-up's voxel indices, max exclusive), best first.
    new_candidates: list[dict] = field(default_factory=list)

    def overlaps(self) -> list[tuple[int, int, int]]:
        return overlaps(self.lesions)


LesionMasks = Mapping[int, LesionMask]


def as_lesion_masks(source: LesionMasks | LabelMap) -> dict[int, LesionMask]:
    """Tracking prompts as each lesion's own whole mask.

    A mapping ``{id: LesionMask}`` is taken as is (masks may overlap; each is its own lesion's
    prompt). A :class:`LabelMap` (e.g. one ``-t prev_mask`` instance map) gives one mask per id.
    """
    if isinstance(source, LabelMap):
        return {lid: r.mask for lid, r in results_from_label_map(source).items()}
    return {int(k): v for k, v in source.items()}


@runtime_checkable
class Engine(Protocol):
    name: str

    def prepare(self, image: Image) -> None:
        """Optional per-image precomputation (cached); safe to call repeatedly."""

    def segment(
        self,
        image: Image,
        prompts: Sequence[Prompt],
        *,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> SegmentationResult:
        """One lesion per prompt on ``image``'s grid: ``lesions[prompt.lesion_id]`` is its own whole
        mask with a status (``ok``/``check``/``empty``) and reasons; ``labels`` the display map."""

    def track(
        self,
        baseline: Image,
        baseline_labels: LesionMasks | LabelMap,
        followup: Image,
        *,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> TrackingResult:
        """Map every baseline lesion into ``followup``'s grid, keeping ids.

        ``baseline_labels`` is each lesion's own whole mask (``{id: LesionMask}``, see
        :func:`as_lesion_masks`) or an instance map. The result's ``lesions`` holds each lesion's
        own whole mask at the follow-up, with status ``lost`` where it was not found.
        """


# Explicit, lazy table: name -> "module:Class". Nothing is imported until asked for.
ENGINE_TABLE: dict[str, str] = {
    "classical": "napari_lesionlocator.engines.classical:ClassicalEngine",
    "lesionlocator": "napari_lesionlocator.engines.lesionlocator:LesionLocatorEngine",
}


def available_engines() -> list[str]:
    return list(ENGINE_TABLE)


def create_engine(name: str, settings: EngineSettings | None = None) -> Engine:
    """Instantiate an engine by name; EngineError names the choices or the missing dependency."""
    try:
        target = ENGINE_TABLE[name]
    except KeyError:
        raise EngineError(f"unknown engine {name!r}; choose one of: {', '.join(ENGINE_TABLE)}") from None
    module_name, _, cls_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EngineError(
            f"engine {name!r} needs an optional dependency that is not installed ({exc.name or exc}). "
            f"Install it with: pip install 'napari-lesionlocator[{name}]'"
        ) from exc
    return getattr(module, cls_name)(settings or EngineSettings())
