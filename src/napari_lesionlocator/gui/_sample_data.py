"""npe2 sample data: the seeded synthetic longitudinal CT study (no download, deterministic)."""

from __future__ import annotations

from functools import lru_cache
from types import SimpleNamespace

from ._layers import labels_layer_data
from ._reader import layer_data_for_images

__all__ = ["synthetic_study", "synthetic_study_with_truth", "GROUND_TRUTH_ROLE"]

GROUND_TRUTH_ROLE = "ground_truth"


@lru_cache(maxsize=1)
def _cached_study():
    from ..sample.synthetic import make_synthetic_study

    return make_synthetic_study(seed=0, size="small")


def _study():
    """The study with fresh arrays (the cached one is built once per process: it takes seconds)."""
    study = _cached_study()
    images = [im.with_array(im.array.copy()) for im in study.images]
    labels = [lb.copy() for lb in study.labels]
    return SimpleNamespace(images=images, labels=labels, lesions=study.lesions)


def synthetic_study() -> list[tuple]:
    """All timepoints as CT image layers (in acquisition order), nothing annotated yet."""
    return layer_data_for_images(_study().images, first_visible_only=True)


def synthetic_study_with_truth() -> list[tuple]:
    """The same timepoints plus each timepoint's ground-truth lesion map (hidden; for comparison)."""
    study = _study()
    layers = layer_data_for_images(study.images, first_visible_only=True)
    for image_data, truth in zip(list(layers), study.labels, strict=True):
        image_name = image_data[1]["name"]
        layers.append(
            labels_layer_data(truth, name=f"{image_name} ground truth", image_name=image_name,
                              role=GROUND_TRUTH_ROLE, visible=False)
        )
    return layers
