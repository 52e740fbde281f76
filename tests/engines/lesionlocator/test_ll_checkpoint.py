"""Checkpoint folders: validation messages, safe loading, key renames, fold choice, path resolution."""

from __future__ import annotations

import argparse
import json
import logging

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nnunetv2")

import _ll_helpers as H  # noqa: E402

from napari_lesionlocator.core.errors import CheckpointError, EngineError  # noqa: E402
from napari_lesionlocator.engines.lesionlocator import checkpoint as ck  # noqa: E402
from napari_lesionlocator.engines.lesionlocator import config  # noqa: E402
from napari_lesionlocator.engines.lesionlocator.device import resolve_device  # noqa: E402

pytestmark = pytest.mark.torch

SEG = "LesionLocatorSeg/point_optimized"


def _fold_file(root, fold=0, part=SEG):
    return root / part / f"fold_{fold}" / "checkpoint_final.pth"


def _rewrite(path, **changes):
    ckpt = torch.load(path, weights_only=False)
    ckpt.update(changes)
    torch.save(ckpt, path)
    return ckpt


def test_loads_all_folds_by_default_and_says_which():
    m = ck.load_model(H.tiny_checkpoint(), "point")
    assert m.folds == [0, 1]
    assert "fold(s) [0, 1]" in m.notes[0]
    assert m.mirror_axes == (0, 1, 2)
    assert m.trainer_name == "LesionLocatorTrainerSegment"
    assert m.patch_size == H.PATCH
    # image channel + prompt channel in, background/lesion out
    out = m.network(torch.zeros(1, 2, *H.PATCH))
    assert out.shape == (1, 2, *H.PATCH)


def test_folds_argument_chooses_and_missing_fold_is_named():
    assert ck.load_model(H.tiny_checkpoint(), "box", folds=[1]).folds == [1]
    with pytest.raises(CheckpointError, match=r"fold\(s\) \[3\] requested but not present \(found folds \[0, 1\]\)"):
        ck.load_model(H.tiny_checkpoint(), "box", folds=[0, 3])


def test_folds_differ_in_weights():
    m = ck.load_model(H.tiny_checkpoint(), "point")
    k = "encoder.stem.convs.0.conv.weight"
    assert not torch.equal(m.fold_weights[0][k], m.fold_weights[1][k])


def test_accepts_parent_folder_of_checkpoint():
    parent = H.tiny_checkpoint().parent
    assert ck.part_folder(parent, "point") == H.tiny_checkpoint() / SEG


@pytest.mark.parametrize(
    "name, message", [("plans.json", "missing plans.json"), ("dataset.json", "missing dataset.json")]
)
def test_missing_json_is_named(tmp_path, name, message):
    root = H.copy_checkpoint(tmp_path)
    (root / SEG / name).unlink()
    with pytest.raises(CheckpointError, match=message):
        ck.load_model(root, "point")


def test_missing_part_and_not_a_checkpoint(tmp_path):
    root = H.copy_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="lacks LesionLocatorTrack"):
        ck.part_folder(root, "track")
    with pytest.raises(CheckpointError, match="not a LesionLocator checkpoint.*download-weights"):
        ck.part_folder(tmp_path / "LesionLocatorCheckpoint" / "LesionLocatorSeg", "point")


def test_no_folds(tmp_path):
    root = H.copy_checkpoint(tmp_path)
    for f in (0, 1):
        _fold_file(root, f).unlink()
    with pytest.raises(CheckpointError, match="no fold_K/checkpoint_final.pth"):
        ck.load_model(root, "point")


def test_bad_plans_json(tmp_path):
    root = H.copy_checkpoint(tmp_path)
    (root / SEG / "plans.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="plans.json is not valid JSON"):
        ck.load_model(root, "point")
    plans = json.loads((H.tiny_checkpoint() / SEG / "plans.json").read_text())
    plans["configurations"] = {"2d": plans["configurations"]["3d_fullres"]}
    (root / SEG / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(CheckpointError, match="no '3d_fullres' configuration"):
        ck.load_model(root, "point")


def test_wrong_trainer(tmp_path):
    root = H.copy_checkpoint(tmp_path)
    _rewrite(_fold_file(root), trainer_name="nnUNetTrainer")
    with pytest.raises(CheckpointError, match="trainer_name 'nnUNetTrainer' is not a LesionLocator point trainer"):
        ck.load_model(root, "point")


def test_wrong_configuration(tmp_path):
    root = H.copy_checkpoint(tmp_path)
    _rewrite(_fold_file(root), init_args={"configuration": "2d"})
    with pytest.raises(CheckpointError, match=r"init_args\['configuration'\] is '2d'"):
        ck.load_model(root, "point")


def test_mismatched_keys_are_named(tmp_path):
    root = H.copy_checkpoint(tmp_path)
    ckpt = torch.load(_fold_file(root), weights_only=False)
    sd = ckpt["network_weights"]
    sd["extra_head.weight"] = torch.zeros(3)
    del sd["decoder.seg_layers.2.bias"]
    torch.save(ckpt, _fold_file(root))
    with pytest.raises(CheckpointError) as info:
        ck.load_model(root, "point")
    msg = str(info.value)
    assert "1 missing key(s): decoder.seg_layers.2.bias" in msg
    assert "1 unexpected key(s): extra_head.weight" in msg


def test_wrong_shape_is_named(tmp_path):
    root = H.copy_checkpoint(tmp_path)
    ckpt = torch.load(_fold_file(root), weights_only=False)
    ckpt["network_weights"]["decoder.seg_layers.2.bias"] = torch.zeros(5)
    torch.save(ckpt, _fold_file(root))
    with pytest.raises(CheckpointError, match=r"decoder.seg_layers.2.bias \(5,\) vs \(2,\)"):
        ck.load_model(root, "point")


def test_corrupt_file(tmp_path):
    root = H.copy_checkpoint(tmp_path)
    data = _fold_file(root).read_bytes()
    _fold_file(root).write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        ck.load_model(root, "point")


def test_weights_only_load_with_numpy_scalars_needs_no_unsafe():
    # The generated checkpoints hold a numpy float64 like nnU-Net trainer logs do.
    ckpt = ck.load_checkpoint_file(_fold_file(H.tiny_checkpoint()))
    assert float(ckpt["_best_ema"]) == 0.0


def test_unsafe_objects_refused_unless_allowed(tmp_path, caplog):
    root = H.copy_checkpoint(tmp_path)
    _rewrite(_fold_file(root), extra=argparse.Namespace(a=1))
    with pytest.raises(CheckpointError, match="argparse.Namespace.*allow_unsafe=True"):
        ck.load_model(root, "point")
    with caplog.at_level(logging.WARNING):
        m = ck.load_model(root, "point", allow_unsafe=True)
    assert m.folds == [0, 1]
    assert "UNSAFE LOAD" in caplog.text and "fold_0" in caplog.text


def test_key_renames_are_mapped():
    net = ck.build_segmentation_network(json.loads((H.tiny_checkpoint() / SEG / "plans.json").read_text()))
    sd = net.state_dict()
    # torch.compile prefix, and a checkpoint saved without the decoder's alias of the encoder
    saved = {"_orig_mod." + k: v for k, v in sd.items() if not k.startswith("decoder.encoder.")}
    mapped, notes = ck.remap_state_dict_keys(saved, list(sd))
    assert set(mapped) == set(sd)
    assert all(torch.equal(mapped[k], sd[k]) for k in sd)
    assert any("_orig_mod." in n for n in notes) and any("aliased" in n for n in notes)
    # already matching: untouched
    same, notes2 = ck.remap_state_dict_keys(sd, list(sd))
    assert same.keys() == sd.keys() and notes2 == []
    assert ck.match_state_dict(net, {"module." + k: v for k, v in sd.items()}, "x").keys() == sd.keys()


def test_checkpoint_path_resolution(tmp_path, monkeypatch):
    cfg = tmp_path / "cfg" / "config.json"
    monkeypatch.setattr(config, "config_file", lambda: cfg)
    monkeypatch.delenv(config.ENV_VAR, raising=False)
    with pytest.raises(CheckpointError) as info:
        config.resolve_checkpoint_path(None)
    msg = str(info.value)
    assert "lesionlocator download-weights" in msg and "15174217" in msg and "classical engine" in msg
    a, b, c = (tmp_path / n for n in "abc")
    for p in (a, b, c):
        p.mkdir()
    config.set_configured_checkpoint(c)
    assert json.loads(cfg.read_text()) == {"checkpoint": str(c.resolve())}
    assert config.get_configured_checkpoint() == str(c.resolve())
    assert config.resolve_checkpoint_path(None) == c.resolve()
    monkeypatch.setenv(config.ENV_VAR, str(b))
    assert config.resolve_checkpoint_path(None) == b
    assert config.resolve_checkpoint_path(a) == a
    with pytest.raises(CheckpointError, match="does not exist"):
        config.resolve_checkpoint_path(tmp_path / "nope")
    config.set_configured_checkpoint(None)
    assert config.get_configured_checkpoint() is None
    cfg.write_text("[")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        config.get_configured_checkpoint()


def test_devices():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(EngineError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(EngineError, match="no CUDA GPU"):
            resolve_device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is None or not mps.is_available():
        with pytest.raises(EngineError, match="mps"):
            resolve_device("mps")


def test_real_plans_network_matches_official_key_set():
    # Reference 6.5: the real ResEnc-L segmenter has 956 state-dict keys (aliases included), 102.35 M parameters.
    from napari_lesionlocator.engines.lesionlocator.generate import REAL_PLANS, real_plans

    if not REAL_PLANS.exists():
        pytest.skip("shared reference plans not available")
    net = ck.build_segmentation_network(real_plans())
    assert len(net.state_dict()) == 956
    assert round(sum(p.numel() for p in net.parameters()) / 1e6, 2) == 102.35
    assert net.encoder.stem.convs[0].conv.in_channels == 2
