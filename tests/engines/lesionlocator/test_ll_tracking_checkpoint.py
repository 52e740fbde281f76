"""LesionLocator tracking through checkpoint files: generated tiny checkpoint -> load -> track."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("unigradicon")

import _track_helpers as H  # noqa: E402

from napari_lesionlocator.core.errors import CheckpointError  # noqa: E402
from napari_lesionlocator.core.geometry import Geometry  # noqa: E402
from napari_lesionlocator.core.image import Image, LabelMap  # noqa: E402
from napari_lesionlocator.engines.base import EngineSettings  # noqa: E402
from napari_lesionlocator.engines.lesionlocator import checkpoint  # noqa: E402
from napari_lesionlocator.engines.lesionlocator import registration as reg  # noqa: E402
from napari_lesionlocator.engines.lesionlocator.tracking import load_track_model, track_lesions  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def track_checkpoint(tmp_path_factory):
    from napari_lesionlocator.engines.lesionlocator.generate import generate_checkpoint

    return generate_checkpoint(tmp_path_factory.mktemp("llck"), tiny=True, seed=1, folds=(0,), parts=("track",))


def _pair():
    g0 = Geometry((30, 40, 40), (2.0, 1.6, 1.6), (0.0, 0.0, 0.0))
    g1 = Geometry((26, 36, 44), (2.3, 1.8, 1.45), (3.0, -2.0, 1.0))
    labels = np.zeros(g0.shape, np.uint8)
    labels[H.ball(g0.shape, (15, 20, 20), 4)] = 9
    return (
        Image((H.smooth_volume(g0.shape, 1) * 200).astype(np.float32), g0, "b"),
        LabelMap(labels, g0),
        Image((H.smooth_volume(g1.shape, 2) * 200).astype(np.float32), g1, "f"),
    )


def test_generated_checkpoint_loads_with_its_grid_and_tracks(track_checkpoint):
    model = load_track_model(track_checkpoint)
    assert model.folds == [0]
    assert model.network.grid == 65  # recorded by the tiny checkpoint; real ones use 175
    assert model.network.patch_size == (32, 48, 48)  # from the unet_patch_size buffer
    assert model.mirror_axes == (0, 1, 2)
    base, labels, fu = _pair()
    torch.set_num_threads(1)
    result = track_lesions(model, base, labels, fu, tta=False, device="cpu")
    assert result.labels.geometry == fu.geometry
    assert set(result.labels.ids) | set(result.lost_ids) == {9}  # id kept, never renumbered
    assert set(result.labels.ids).isdisjoint(result.lost_ids)


def test_engine_track_uses_this_module(track_checkpoint):
    from napari_lesionlocator.engines.lesionlocator import LesionLocatorEngine

    engine = LesionLocatorEngine(EngineSettings(checkpoint=str(track_checkpoint), threads=1, tta=False))
    base, labels, fu = _pair()
    first = engine.track(base, labels, fu)
    again = engine.track(base, labels, fu)  # same pair: registration field served from the cache
    assert first.labels.geometry == fu.geometry
    np.testing.assert_array_equal(first.labels.array, again.labels.array)
    assert engine._field_cache is not None and engine._field_cache.computed == 1


def _fake_track_folder(tmp_path):
    folder = tmp_path / "LesionLocatorCheckpoint" / "LesionLocatorTrack"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(H.plans()))
    dataset = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "lesion": 1}}
    (folder / "dataset.json").write_text(json.dumps(dataset))
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"x")
    return tmp_path / "LesionLocatorCheckpoint"


def test_missing_patch_size_buffer_is_a_clear_error(tmp_path, monkeypatch):
    root = _fake_track_folder(tmp_path)
    sd = {k: v for k, v in H.echo_net().state_dict().items() if k != "unet_patch_size"}
    fake = {"trainer_name": "LesionLocatorTrainerTrack", "init_args": {"configuration": "3d_fullres"}}
    fake["network_weights"] = sd
    monkeypatch.setattr(checkpoint, "load_checkpoint_file", lambda path, **kw: fake)
    with pytest.raises(CheckpointError, match="unet_patch_size"):
        load_track_model(root)


def test_segmentation_weights_in_track_folder_are_refused(tmp_path, monkeypatch):
    root = _fake_track_folder(tmp_path)
    fake = {"trainer_name": "LesionLocatorTrainerSegment", "init_args": {"configuration": "3d_fullres"}}
    fake["network_weights"] = {}
    monkeypatch.setattr(checkpoint, "load_checkpoint_file", lambda path, **kw: fake)
    with pytest.raises(CheckpointError, match="not a LesionLocator track trainer"):
        load_track_model(root)


def test_field_cache_is_bounded_by_bytes():
    cache = reg.FieldCache(max_bytes=3 * 4 * 10)  # room for three 10-float fields
    for k in range(5):
        cache.get(k, lambda: torch.zeros(10))
    assert cache.computed == 5 and len(cache) == 3
    cache.get(4, lambda: pytest.fail("cached"))  # newest kept
    cache.get(0, lambda: torch.zeros(10))  # oldest evicted
    assert cache.computed == 6


def test_field_cache_cleared_for_another_model():
    cache = reg.FieldCache()
    a, b = H.model(H.echo_net()), H.model(H.echo_net())
    cache.bind(a)
    cache.get("k", lambda: torch.zeros(3))
    cache.bind(a)
    assert len(cache) == 1
    cache.bind(b)  # other weights: nothing of a's may be served
    assert len(cache) == 0
