"""LesionLocatorEngine through the Engine protocol: geometry, ids, caching, progress, cancel, errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nnunetv2")

import _ll_helpers as H  # noqa: E402

from napari_lesionlocator.core.errors import Cancelled, CheckpointError, EngineError, PromptError  # noqa: E402
from napari_lesionlocator.core.geometry import Geometry  # noqa: E402
from napari_lesionlocator.core.image import Image, LabelMap  # noqa: E402
from napari_lesionlocator.core.progress import CancelToken  # noqa: E402
from napari_lesionlocator.core.prompts import BoxPrompt, PointPrompt  # noqa: E402
from napari_lesionlocator.engines.base import Engine, EngineSettings, create_engine  # noqa: E402
from napari_lesionlocator.engines.lesionlocator import LesionLocatorEngine, config  # noqa: E402
from napari_lesionlocator.engines.lesionlocator import segmentation as S  # noqa: E402

pytestmark = pytest.mark.torch

# 30 degrees about the world z axis, written (z, y, x) row-major
_C, _S = np.cos(np.pi / 6), np.sin(np.pi / 6)
ROTATED = (1.0, 0.0, 0.0, 0.0, _C, -_S, 0.0, _S, _C)


from _ll_helpers import one_torch_thread  # noqa: E402,F401 - autouse: one torch thread per test


def _engine(**kw) -> LesionLocatorEngine:
    settings = EngineSettings(checkpoint=str(H.tiny_checkpoint()), folds=kw.pop("folds", [0]), **kw)
    return create_engine("lesionlocator", settings)


@pytest.fixture(scope="module")
def engine():
    return _engine()


@pytest.fixture(scope="module")
def image():
    arr = H.ct_volume((20, 64, 60), seed=11)
    geo = Geometry(arr.shape, spacing=(2.0, 0.7, 0.9), origin=(-50.0, 12.5, 30.0), direction=ROTATED)
    return Image(arr, geo, name="case")


def test_is_an_engine_and_segments_on_the_source_grid(engine, image):
    assert isinstance(engine, Engine) and engine.name == "lesionlocator"
    res = engine.segment(image, [PointPrompt(5, (10, 30, 30)), BoxPrompt(1000, (2, 8, 4, 20, 40, 58))])
    lab = res.labels
    assert lab.geometry == image.geometry  # spacing, origin and rotated direction kept
    assert set(lab.ids) | set(res.empty_ids) == {5, 1000}
    assert lab.array.dtype.kind == "u" and lab.array.max() <= 1000
    # the engine's masks are those of the plain full-volume pipeline, pasted in prompt order
    m = engine.model("point")
    ref = S.segment_full_volume_reference(
        image.array, image.geometry.spacing, PointPrompt(5, (10, 30, 30)), m, tta=False
    )
    assert np.array_equal(lab.array == 5, ref & (lab.array != 1000))
    assert any("fold(s) [0]" in msg for msg in res.messages)


def test_deterministic_and_cached(image):
    e1, e2 = _engine(), _engine()
    p = [PointPrompt(1, (10, 20, 20))]
    a = e1.segment(image, p).labels.array
    pre = e1.preprocessed(image)
    assert e1.preprocessed(image) is pre  # cached per image object
    other = Image(image.array.copy(), image.geometry, name="copy")
    assert e1.preprocessed(other) is not pre
    assert np.array_equal(a, e1.segment(image, p).labels.array)
    assert np.array_equal(a, e2.segment(image, p).labels.array)


def test_box_minimum_at_zero_is_not_dropped(engine, image):
    res = engine.segment(image, [BoxPrompt(3, (0, 2, 0, 3, 0, 2))])
    assert 3 in res.labels.ids or res.empty_ids == [3]


def test_prompt_outside_volume(engine, image):
    with pytest.raises(PromptError, match="outside the volume"):
        engine.segment(image, [PointPrompt(1, (20, 0, 0))])
    with pytest.raises(PromptError, match="outside the volume"):
        engine.segment(image, [BoxPrompt(1, (0, 5, 64, 70, 0, 5))])


def test_label_map_prompts_with_gaps_and_large_ids(engine, image):
    lab = np.zeros(image.shape, np.int64)
    lab[8:12, 20:30, 20:30] = 300
    lab[3:5, 40:50, 40:52] = 7
    lab[14:17, 5:9, 5:9] = 70000
    for kind in ("box", "point"):
        res = engine.segment_label_prompts(image, LabelMap(lab, image.geometry), kind)
        assert set(res.labels.ids) | set(res.empty_ids) == {7, 300, 70000}
        assert res.labels.array.max() <= 70000


def test_binary_label_map_gives_components(engine, image):
    lab = np.zeros(image.shape, np.uint8)
    lab[8:12, 20:30, 20:30] = 1
    lab[3:5, 40:50, 40:52] = 1
    res = engine.segment_label_prompts(image, lab, "point")
    assert set(res.labels.ids) | set(res.empty_ids) == {1, 2}


def test_progress_and_estimate(engine, image):
    events = []
    prompts = [PointPrompt(1, (10, 20, 20)), PointPrompt(2, (10, 40, 40))]
    assert engine.estimate_forwards(image, prompts) == 2
    engine.segment(image, prompts, on_progress=events.append)
    assert [e.step for e in events] == [0, 1, 2, 2]
    assert all(e.total == 2 for e in events)
    assert "left" in events[1].message and "lesion 1" in events[1].message
    tta = _engine(tta=True)
    assert tta.estimate_forwards(image, prompts[:1]) == 8


def test_cancel_between_forwards(image):
    eng = _engine(tta=True)
    token = CancelToken()
    seen = []

    def on_progress(ev):
        seen.append(ev.step)
        if ev.step == 2:
            token.cancel()

    with pytest.raises(Cancelled):
        eng.segment(image, [PointPrompt(1, (10, 20, 20))], on_progress=on_progress, cancel=token)
    assert max(seen) == 2  # stopped right after the forward during which it was cancelled


def test_engine_errors(image, monkeypatch, tmp_path):
    monkeypatch.setattr(config, "config_file", lambda: tmp_path / "none.json")
    monkeypatch.delenv(config.ENV_VAR, raising=False)
    with pytest.raises(CheckpointError, match="download-weights"):
        LesionLocatorEngine(EngineSettings()).segment(image, [PointPrompt(1, (1, 1, 1))])
    monkeypatch.setenv(config.ENV_VAR, str(H.tiny_checkpoint()))
    assert LesionLocatorEngine(EngineSettings(folds=[1])).model("box").folds == [1]
    with pytest.raises(EngineError, match="unknown precision"):
        LesionLocatorEngine(EngineSettings(extra={"precision": "int8"}))
    if not torch.cuda.is_available():
        with pytest.raises(EngineError, match="cuda"):
            _engine(device="cuda").segment(image, [PointPrompt(1, (1, 1, 1))])


def test_float32_option_runs(image):
    eng = _engine(extra={"precision": "float32"})
    res = eng.segment(image, [PointPrompt(1, (10, 30, 30))])
    assert eng.precision == "float32" and res.labels.geometry == image.geometry


def test_package_imports_without_torch():
    code = (
        "import sys, napari_lesionlocator.engines.base, napari_lesionlocator.engines.lesionlocator, "
        "napari_lesionlocator.engines.lesionlocator.config; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cold_region_path_equals_prepared_path(image):
    cold, warm = _engine(), _engine()
    warm.prepare(image)
    prompts = [PointPrompt(1, (10, 30, 30)), BoxPrompt(2, (1, 6, 2, 12, 40, 55))]
    a = cold.segment(image, prompts).labels.array
    b = warm.segment(image, prompts).labels.array
    assert np.array_equal(a, b)
    regions = [r for per_key in cold._region_cache[image].values() for r in per_key]
    assert regions and all(not r.is_whole for r in regions)  # really only a region was preprocessed
    assert image not in cold._pre_cache or not cold._pre_cache[image]


def test_prepare_loads_no_weights_and_notes_are_reported_once(image):
    """Preparing an image reads plans only (a point-only session never loads the box model), and a
    model's notes ("using fold(s) ...") reach the first result only, not every later one."""
    e = _engine()
    e.prepare(image)
    assert e._models == {}
    first = e.segment(image, [PointPrompt(1, (10, 20, 20))])
    assert set(e._models) == {"point"}
    assert any("fold(s) [0]" in msg for msg in first.messages)
    again = e.segment(image, [PointPrompt(2, (12, 30, 30))])
    assert not any("fold(s)" in msg for msg in again.messages)
    # the preprocessing cache key from plans.json equals the one from the loaded model's plans
    fresh = _engine()
    assert fresh._preprocessing_key("point") == e._preprocessing_key("point") and fresh._models == {}
