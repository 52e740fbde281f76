"""LesionLocator checkpoint folders: validation that names what is wrong, safe loading, network building.

Layout (the official download, Zenodo record 15174217)::

    LesionLocatorCheckpoint/
      LesionLocatorSeg/bbox_optimized/   plans.json dataset.json fold_K/checkpoint_final.pth
      LesionLocatorSeg/point_optimized/  (same)
      LesionLocatorTrack/                (same)

Each ``checkpoint_final.pth`` is a ``torch.save``d dict; the keys used are ``trainer_name``,
``init_args['configuration']``, ``inference_allowed_mirroring_axes`` (optional, read from the
first fold) and ``network_weights``. Files are loaded with ``torch.load(weights_only=True)`` and
a small allowlist (numpy scalars, which nnU-Net trainers store in their logs); only when that
fails *and* the caller passed ``allow_unsafe=True`` (a folder the user chose) is the file
unpickled in full, and that is logged as a warning.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ...core.errors import CheckpointError
from .config import no_checkpoint_message

__all__ = [
    "PARTS",
    "TRAINERS",
    "CONFIGURATION",
    "ModelFolder",
    "LoadedModel",
    "part_folder",
    "detect_folds",
    "validate_model_folder",
    "load_checkpoint_file",
    "check_checkpoint_dict",
    "build_segmentation_network",
    "remap_state_dict_keys",
    "match_state_dict",
    "load_model",
]

log = logging.getLogger(__name__)

#: prompt/task kind -> sub-folder of LesionLocatorCheckpoint
PARTS: dict[str, str] = {
    "box": "LesionLocatorSeg/bbox_optimized",
    "point": "LesionLocatorSeg/point_optimized",
    "track": "LesionLocatorTrack",
}
#: trainer names each part may carry
TRAINERS: dict[str, tuple[str, ...]] = {
    "box": ("LesionLocatorTrainerSegment",),
    "point": ("LesionLocatorTrainerSegment",),
    "track": ("LesionLocatorTrainerTrack",),
}
CONFIGURATION = "3d_fullres"
_FOLD_RE = re.compile(r"^fold_(\d+)$")


def part_folder(root: str | Path, part: str) -> Path:
    """Folder of one part. ``root`` may be ``LesionLocatorCheckpoint`` itself or the folder holding it."""
    if part not in PARTS:
        raise CheckpointError(f"unknown checkpoint part {part!r}; choose one of {', '.join(PARTS)}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise CheckpointError(f"checkpoint folder {root} does not exist or is not a folder. {no_checkpoint_message()}")
    if not (root / "LesionLocatorSeg").exists() and not (root / "LesionLocatorTrack").exists():
        nested = root / "LesionLocatorCheckpoint"
        if nested.is_dir():
            root = nested
        else:
            raise CheckpointError(
                f"{root} is not a LesionLocator checkpoint: it has neither LesionLocatorSeg/ nor LesionLocatorTrack/ "
                f"(expected the unpacked LesionLocatorCheckpoint folder). {no_checkpoint_message()}"
            )
    folder = root / PARTS[part]
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint {root} lacks {PARTS[part]}/ (needed for {part} prompts/tracking)")
    return folder


def detect_folds(folder: Path) -> list[int]:
    """Folds K with ``fold_K/checkpoint_final.pth`` present, sorted."""
    folds = []
    for child in folder.iterdir():
        m = _FOLD_RE.match(child.name)
        if m and child.is_dir() and (child / "checkpoint_final.pth").is_file():
            folds.append(int(m.group(1)))
    return sorted(folds)


@dataclass
class ModelFolder:
    """A validated model folder (files present and parseable; weights not yet loaded)."""

    path: Path
    part: str
    plans: dict
    dataset_json: dict
    folds: list[int]

    def fold_file(self, fold: int) -> Path:
        return self.path / f"fold_{fold}" / "checkpoint_final.pth"

    @property
    def num_image_channels(self) -> int:
        return len(self.dataset_json.get("channel_names", self.dataset_json.get("modality", {"0": "CT"})))


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path.parent} is missing {path.name} ({what})")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def validate_model_folder(folder: str | Path, part: str, folds: Sequence[int] | None = None) -> ModelFolder:
    """Check one part folder's files (plans, dataset, folds); CheckpointError says exactly what is wrong."""
    folder = Path(folder)
    plans = _read_json(folder / "plans.json", "the nnU-Net plans")
    dataset_json = _read_json(folder / "dataset.json", "the dataset description")
    configs = plans.get("configurations")
    if not isinstance(configs, dict) or CONFIGURATION not in configs:
        raise CheckpointError(
            f"{folder / 'plans.json'} has no '{CONFIGURATION}' configuration "
            f"(found: {', '.join(configs) if isinstance(configs, dict) else 'none'})"
        )
    conf, seen = configs[CONFIGURATION], set()
    while isinstance(conf, dict) and "architecture" not in conf and "UNet_class_name" not in conf \
            and conf.get("inherits_from") in configs and conf.get("inherits_from") not in seen:
        seen.add(conf["inherits_from"])
        conf = configs[conf["inherits_from"]]
    arch = conf.get("architecture") if isinstance(conf, dict) else None
    if not (isinstance(arch, dict) and "network_class_name" in arch) and \
            not (isinstance(conf, dict) and "UNet_class_name" in conf):
        raise CheckpointError(
            f"{folder / 'plans.json'}: the '{CONFIGURATION}' configuration has no 'architecture' section "
            "(network_class_name, arch_kwargs): the plans file is not in nnU-Net v2's format or is damaged; "
            "use the plans.json that came with the checkpoint"
        )
    if (
        "foreground_intensity_properties_per_channel" not in plans
        and "foreground_intensity_properties_by_modality" not in plans
    ):
        raise CheckpointError(f"{folder / 'plans.json'} lacks foreground_intensity_properties_per_channel")
    found = detect_folds(folder)
    if not found:
        raise CheckpointError(f"{folder} holds no fold_K/checkpoint_final.pth (no trained fold found)")
    if folds is not None:
        missing = [int(f) for f in folds if int(f) not in found]
        if missing:
            raise CheckpointError(
                f"{folder}: fold(s) {missing} requested but not present (found folds {found}); "
                "choose from those or omit folds to use all"
            )
        use = sorted({int(f) for f in folds})
        if not use:
            raise CheckpointError("an empty fold list was given; omit it to use every fold found")
    else:
        use = found
    return ModelFolder(folder, part, plans, dataset_json, use)


# ------------------------------------------------------------------ loading
def _safe_globals() -> list:
    """Types allowed in a weights-only load besides torch's defaults (numpy scalars in trainer logs)."""
    import numpy as np

    out: list = [np.dtype]
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    out.append(scalar)
    for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType"):
        t = getattr(getattr(np, "dtypes", None), name, None)
        if t is not None:
            out.append(t)
    return out


def load_checkpoint_file(path: str | Path, *, allow_unsafe: bool = False, map_location="cpu") -> dict:
    """``torch.load`` a checkpoint, weights-only with a small allowlist; full unpickling only if ``allow_unsafe``."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
        text = str(exc)
        kind = _file_kind(path)
        if kind == "other":
            raise CheckpointError(
                f"{path} is not a checkpoint: PyTorch checkpoints are zip archives (or, in the old format, "
                "pickles) and this file is neither (random or damaged bytes); download or copy it again"
            ) from None
        if "Weights only load failed" not in text:
            raise CheckpointError(
                f"{path} cannot be read: corrupt or truncated file ({type(exc).__name__}: {text[:200]})"
            ) from None
        unsafe = re.findall(r"GLOBAL ([\w.]+)", text)
        if not unsafe and kind == "zip":
            raise CheckpointError(
                f"{path} is a damaged PyTorch checkpoint (its weights cannot be read: "
                f"{_weights_error(text)}); download or copy it again"
            ) from None
        if not allow_unsafe:
            if not unsafe:
                raise CheckpointError(
                    f"{path} is a Python pickle that a safe (weights-only) load cannot read "
                    f"({_weights_error(text)}). If it is a checkpoint you trust (e.g. saved by an old tool), "
                    "allow a full load with allow_unsafe=True (CLI: --allow-unsafe-checkpoint); it can execute "
                    "code stored in the file."
                ) from None
            raise CheckpointError(
                f"{path} holds Python objects that a safe (weights-only) load refuses "
                f"({', '.join(unsafe) or 'unknown'}). "
                "If you trust this folder (e.g. the official download), allow a full load with allow_unsafe=True "
                "(CLI: --allow-unsafe-checkpoint); it can execute code stored in the file."
            ) from None
        log.warning(
            "UNSAFE LOAD: %s needs full unpickling (weights-only refused %s); loading it because allow_unsafe "
            "was given for this user-chosen folder",
            path,
            ", ".join(unsafe) or "it",
        )
        try:
            ckpt = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as exc2:  # noqa: BLE001
            raise CheckpointError(
                f"{path} cannot be read even with a full load ({type(exc2).__name__}: {exc2})"
            ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} does not hold a checkpoint dict (got {type(ckpt).__name__})")
    return ckpt


def _file_kind(path: Path) -> str:
    """``"zip"`` (torch.save's format), ``"pickle"`` (the legacy format, a pickle stream) or ``"other"``."""
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
    except OSError:
        return "other"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    return "other"


def _weights_error(text: str) -> str:
    """The informative part of torch's weights-only error (one line)."""
    m = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", text, re.S)
    return (m.group(1) if m else text).strip().splitlines()[0][:160]


def check_checkpoint_dict(ckpt: dict, part: str, path: str | Path) -> None:
    """The keys and values the engine relies on; CheckpointError names the first problem."""
    missing = [k for k in ("trainer_name", "init_args", "network_weights") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} lacks the key(s) {missing} (not a LesionLocator/nnU-Net checkpoint?)")
    trainer = ckpt["trainer_name"]
    if trainer not in TRAINERS[part]:
        raise CheckpointError(
            f"{path}: trainer_name {trainer!r} is not a LesionLocator {part} trainer "
            f"(expected {' or '.join(TRAINERS[part])}); is the file in the right folder?"
        )
    init_args = ckpt["init_args"]
    conf = init_args.get("configuration") if isinstance(init_args, dict) else None
    if conf != CONFIGURATION:
        raise CheckpointError(f"{path}: init_args['configuration'] is {conf!r}, expected {CONFIGURATION!r}")
    if not isinstance(ckpt["network_weights"], dict):
        raise CheckpointError(f"{path}: network_weights is not a state dict")


def build_segmentation_network(plans: dict, num_image_channels: int = 1, *, seed: int | None = None):
    """The plans' network: ``num_image_channels + 1`` inputs (image + dense prompt), 2 outputs, no deep supervision."""
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    try:
        cm = PlansManager(plans).get_configuration(CONFIGURATION)
        arch = plans["configurations"][CONFIGURATION].get("architecture") or cm.configuration["architecture"]
        arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"]  # noqa: B018 - presence
    except (KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            f"plans.json: the '{CONFIGURATION}' configuration has no complete 'architecture' section "
            f"(missing {exc}; it needs network_class_name, arch_kwargs and _kw_requires_import, as nnU-Net v2.4+ "
            "writes them): the plans file is not in the format this engine reads, or it is damaged"
        ) from None
    if seed is not None:
        torch.manual_seed(seed)
    try:
        return get_network_from_plans(
            arch["network_class_name"],
            arch["arch_kwargs"],
            arch["_kw_requires_import"],
            num_image_channels + 1,
            2,
            allow_init=True,
            deep_supervision=False,
        )
    except Exception as exc:  # noqa: BLE001 - plans errors surface as many types
        raise CheckpointError(
            f"cannot build the network described by plans.json ({type(exc).__name__}: {exc})"
        ) from None


# Prefix renames between how checkpoints may have been saved and how the network names its
# parameters (old -> new). torch.compile and DistributedDataParallel wrap the module.
KEY_PREFIX_RENAMES: tuple[tuple[str, str], ...] = (("_orig_mod.", ""), ("module.", ""))
# Aliased sub-modules: the ResidualEncoderUNet decoder keeps a reference to the encoder, so the
# state dict lists the encoder twice; a checkpoint written without the alias can fill it.
KEY_ALIASES: tuple[tuple[str, str], ...] = (("decoder.encoder.", "encoder."),)


def remap_state_dict_keys(state_dict: dict, expected_keys: Sequence[str]) -> tuple[dict, list[str]]:
    """Apply the known key renames so ``state_dict`` matches ``expected_keys``; returns (new dict, notes)."""
    expected = set(expected_keys)
    notes: list[str] = []
    out = dict(state_dict)
    for old, new in KEY_PREFIX_RENAMES:
        if any(k.startswith(old) for k in out) and not any(k.startswith(old) for k in expected):
            out = {(new + k[len(old) :] if k.startswith(old) else k): v for k, v in out.items()}
            notes.append(f"stripped key prefix {old!r}")
    for alias, target in KEY_ALIASES:
        wanted = [k for k in expected if k.startswith(alias) and k not in out]
        if wanted and all(target + k[len(alias) :] in out for k in wanted):
            for k in wanted:
                out[k] = out[target + k[len(alias) :]]
            notes.append(f"filled {len(wanted)} aliased keys {alias}* from {target}*")
    return out, notes


def _fmt_keys(keys: Sequence[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def match_state_dict(network, state_dict: dict, path: str | Path) -> dict:
    """The weights renamed to the network's keys; CheckpointError naming missing/unexpected/mis-shaped keys."""
    expected = network.state_dict()
    sd, notes = remap_state_dict_keys(state_dict, list(expected))
    for n in notes:
        log.info("%s: %s", path, n)
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_fmt_keys(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_fmt_keys(unexpected)}")
        raise CheckpointError(
            f"{path}: the weights do not match the network built from plans.json ({'; '.join(parts)}). "
            "The plans.json and the fold files must come from the same training run "
            "(or dynamic-network-architectures renamed modules)."
        )
    bad = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if tuple(sd[k].shape) != tuple(v.shape)
    ]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} weight(s) have the wrong shape for plans.json: {_fmt_keys(bad, 4)}")
    return sd


@dataclass
class LoadedModel:
    """One part loaded once and kept: the network on its device and each fold's weights.

    Folds share one network; ``use_fold(k)`` swaps the weights in (as nnU-Net's predictor does),
    which keeps memory at one network plus the state dicts.
    """

    folder: ModelFolder
    plans_manager: object
    configuration_manager: object
    network: object
    fold_weights: dict[int, dict]
    mirror_axes: tuple[int, ...]
    trainer_name: str
    device: object
    notes: list[str] = field(default_factory=list)
    _active: int | None = None

    @property
    def folds(self) -> list[int]:
        return list(self.fold_weights)

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.configuration_manager.patch_size)

    def use_fold(self, fold: int) -> None:
        if self._active != fold:
            self.network.load_state_dict(self.fold_weights[fold])
            self._active = fold


def load_model(
    root: str | Path,
    part: str,
    *,
    folds: Sequence[int] | None = None,
    device=None,
    allow_unsafe: bool = False,
    network_builder: Callable[[dict, int], object] | None = None,
    onednn_weights: bool = False,
) -> LoadedModel:
    """Validate and load one part of a checkpoint (every fold found by default, or ``folds``).

    ``network_builder(plans, num_image_channels)`` builds the module for non-segmentation parts
    (the tracking module passes its TrackNet builder); segmentation parts use the plans' network.
    ``onednn_weights``: on the CPU, run the Conv3d layers with their weights kept in oneDNN's layout
    (:mod:`.onednn`, opt-in: the same masks, not measurably faster where we measured).
    """
    import torch
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    device = device or torch.device("cpu")
    mf = validate_model_folder(part_folder(root, part), part, folds)
    pm = PlansManager(mf.plans)
    cm = pm.get_configuration(CONFIGURATION)
    builder = network_builder or build_segmentation_network
    network = builder(mf.plans, mf.num_image_channels)
    weights: dict[int, dict] = {}
    mirror: tuple[int, ...] = ()
    trainer = ""
    for i, fold in enumerate(mf.folds):
        path = mf.fold_file(fold)
        ckpt = load_checkpoint_file(path, allow_unsafe=allow_unsafe)
        check_checkpoint_dict(ckpt, part, path)
        sd = match_state_dict(network, ckpt["network_weights"], path)
        weights[fold] = {k: v.to(device) for k, v in sd.items()}
        if i == 0:
            trainer = ckpt["trainer_name"]
            mirror = tuple(int(a) for a in (ckpt.get("inference_allowed_mirroring_axes") or ()))
    network.to(device)
    network.eval()
    notes = [f"{part}: using fold(s) {mf.folds} from {mf.path}"]
    log.info(notes[0])
    if onednn_weights:
        from .onednn import enable_for

        enable_for(network, device, part, notes)
    model = LoadedModel(mf, pm, cm, network, weights, mirror, trainer, device, notes)
    model.use_fold(mf.folds[0])
    return model
