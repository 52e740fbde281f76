"""Write checkpoints in the official LesionLocator layout with seeded random weights.

Used by the tests (a *tiny* plans variant: CPU forwards in milliseconds) and by the benchmark
(the real ResEnc-L plans, so timings are those of the real architecture). The generated files
go through exactly the loading/validation code the downloaded weights take.
"""

from __future__ import annotations

import copy
import functools
import importlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from .checkpoint import CONFIGURATION, PARTS, TRAINERS, build_segmentation_network

__all__ = ["REAL_PLANS", "tiny_plans", "real_plans", "generate_checkpoint", "DATASET_JSON"]

log = logging.getLogger(__name__)

# The real ResEnc-L plans live in the project's shared folder (not redistributed here): $LESIONLOCATOR_SHARED,
# else ../shared beside a source checkout. Only benchmarks and one test need them.
REAL_PLANS = (
    Path(os.environ.get("LESIONLOCATOR_SHARED") or Path(__file__).resolve().parents[5] / "shared")
    / "reference"
    / "lesionlocator_plans_resenc_l.json"
)

DATASET_JSON = {
    "channel_names": {"0": "CT"},
    "labels": {"background": 0, "lesion": 1},
    "numTraining": 0,
    "file_ending": ".nii.gz",
}

_PART_ALIASES = {"bbox": "box", "box": "box", "point": "point", "track": "track"}


def real_plans(plans_path: str | Path | None = None) -> dict:
    """The ResEnc-L plans (``shared/reference/lesionlocator_plans_resenc_l.json`` unless a path is given)."""
    path = Path(plans_path) if plans_path else REAL_PLANS
    return json.loads(path.read_text())


def tiny_plans(base: dict | None = None, *, patch=(32, 48, 48), features=(4, 8, 16, 16)) -> dict:
    """A small variant of the real plans: same preprocessing (spacing, normalisation, resampling functions),
    a 4-stage ResidualEncoderUNet with few features and a 32x48x48 patch (divisible by 2**3)."""
    plans = copy.deepcopy(base if base is not None else _fallback_plans())
    conf = plans["configurations"][CONFIGURATION]
    n = len(features)
    arch = conf["architecture"]["arch_kwargs"]
    arch.update(
        n_stages=n,
        features_per_stage=list(features),
        kernel_sizes=[[3, 3, 3]] * n,
        strides=[[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
        n_blocks_per_stage=[1] * n,
        n_conv_per_stage_decoder=[1] * (n - 1),
    )
    conf["patch_size"] = list(patch)
    conf["batch_size"] = 2
    plans["plans_name"] = plans.get("plans_name", "nnUNetResEncUNetLPlans") + "_tiny"
    return plans


def _fallback_plans() -> dict:
    try:
        return real_plans()
    except OSError:
        # A minimal plans file in nnU-Net v2 format, for installs without the shared reference.
        return {
            "dataset_name": "Dataset_LesionLocator",
            "plans_name": "nnUNetResEncUNetLPlans",
            "original_median_spacing_after_transp": [1.0, 0.8, 0.8],
            "original_median_shape_after_transp": [310, 512, 512],
            "image_reader_writer": "SimpleITKIO",
            "transpose_forward": [0, 1, 2],
            "transpose_backward": [0, 1, 2],
            "configurations": {
                CONFIGURATION: {
                    "data_identifier": "nnUNetPlans_3d_fullres",
                    "preprocessor_name": "DefaultPreprocessor",
                    "batch_size": 2,
                    "patch_size": [160, 224, 224],
                    "median_image_size_in_voxels": [310.0, 512.0, 513.0],
                    "spacing": [1.0, 0.8, 0.8],
                    "normalization_schemes": ["CTNormalization"],
                    "use_mask_for_norm": [False],
                    "resampling_fn_data": "resample_torch_fornnunet",
                    "resampling_fn_seg": "resample_torch_fornnunet",
                    "resampling_fn_data_kwargs": {
                        "is_seg": False,
                        "memefficient_seg_resampling": True,
                        "force_separate_z": False,
                    },
                    "resampling_fn_seg_kwargs": {
                        "is_seg": True,
                        "memefficient_seg_resampling": True,
                        "force_separate_z": False,
                    },
                    "resampling_fn_probabilities": "resample_torch_fornnunet",
                    "resampling_fn_probabilities_kwargs": {
                        "is_seg": False,
                        "memefficient_seg_resampling": True,
                        "force_separate_z": False,
                    },
                    "batch_dice": True,
                    "architecture": {
                        "network_class_name": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
                        "arch_kwargs": {
                            "n_stages": 6,
                            "features_per_stage": [32, 64, 128, 256, 320, 320],
                            "conv_op": "torch.nn.modules.conv.Conv3d",
                            "kernel_sizes": [[3, 3, 3]] * 6,
                            "strides": [[1, 1, 1]] + [[2, 2, 2]] * 5,
                            "n_blocks_per_stage": [1, 3, 4, 6, 6, 6],
                            "n_conv_per_stage_decoder": [1, 1, 1, 1, 1],
                            "conv_bias": True,
                            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                            "dropout_op": None,
                            "dropout_op_kwargs": None,
                            "nonlin": "torch.nn.LeakyReLU",
                            "nonlin_kwargs": {"inplace": True},
                        },
                        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
                    },
                }
            },
            "experiment_planner_used": "nnUNetPlannerResEncL",
            "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": {
                "0": {
                    "max": 3071.0,
                    "mean": -63.0,
                    "median": -20.0,
                    "min": -1024.0,
                    "percentile_00_5": -918.0,
                    "percentile_99_5": 723.0,
                    "std": 282.4,
                }
            },
        }


def _track_builder():
    """H7's ``tracking.build_track_network(plans, tiny)`` when that module provides it, else None."""
    try:
        mod = importlib.import_module("napari_lesionlocator.engines.lesionlocator.tracking")
    except ImportError:
        return None
    return getattr(mod, "build_track_network", None)


def _randomize(network, seed: int) -> None:
    """Seeded random weights: the plans' init, plus non-trivial norm affine parameters so outputs vary."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in network.named_parameters():
            if name.endswith("weight") and p.ndim == 1:  # InstanceNorm affine scale
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))


def generate_checkpoint(
    out_folder: str | Path,
    plans_path: str | Path | None = None,
    tiny: bool = True,
    seed: int = 0,
    folds: Sequence[int] = (0,),
    parts: Sequence[str] = ("bbox", "point", "track"),
    mirror_axes: Sequence[int] | None = (0, 1, 2),
) -> Path:
    """Write ``out_folder/LesionLocatorCheckpoint`` with random weights; returns that folder.

    Parameters
    ----------
    out_folder : path
        Parent folder; ``LesionLocatorCheckpoint/`` is created inside it.
    plans_path : path, optional
        Plans to start from (default: the shared ResEnc-L reference plans).
    tiny : bool
        Shrink the network and patch (tests) instead of the real ResEnc-L (benchmarks).
    seed : int
        Weights of fold ``k`` of part ``p`` are seeded from (seed, k, p): reproducible, different per fold.
    folds, parts
        Which folds and parts (``"bbox"``/``"box"``, ``"point"``, ``"track"``) to write.
    mirror_axes : sequence of int or None
        Stored as ``inference_allowed_mirroring_axes`` (None: key omitted, i.e. no TTA).
    """
    import numpy as np
    import torch

    base = real_plans(plans_path) if plans_path else _fallback_plans()
    plans = tiny_plans(base) if tiny else base
    root = Path(out_folder) / "LesionLocatorCheckpoint"
    for pi, raw in enumerate(parts):
        part = _PART_ALIASES.get(raw)
        if part is None:
            raise ValueError(f"unknown part {raw!r}; use bbox, point or track")
        if part == "track":
            builder = _track_builder()
            if builder is None:
                log.warning("tracking.build_track_network is not available: no LesionLocatorTrack part written")
                continue
            make = functools.partial(builder, plans, tiny)
        else:
            make = functools.partial(build_segmentation_network, plans, len(DATASET_JSON["channel_names"]))
        folder = root / PARTS[part]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "plans.json").write_text(json.dumps(plans, indent=2))
        (folder / "dataset.json").write_text(json.dumps(DATASET_JSON, indent=2))
        for fold in folds:
            torch.manual_seed(seed * 1000 + fold * 10 + pi)
            net = make()
            _randomize(net, seed * 1000 + fold * 10 + pi)
            ckpt = {
                "trainer_name": TRAINERS[part][0],
                "init_args": {
                    "plans": plans,
                    "configuration": CONFIGURATION,
                    "fold": int(fold),
                    "dataset_json": DATASET_JSON,
                    "device": torch.device("cpu"),
                },
                "network_weights": {k: v.clone() for k, v in net.state_dict().items()},
                "current_epoch": 0,
                # nnU-Net trainers store numpy scalars in their logs: keeps the allowlist honest.
                "_best_ema": np.float64(0.0),
            }
            if mirror_axes is not None:
                ckpt["inference_allowed_mirroring_axes"] = tuple(int(a) for a in mirror_axes)
            (folder / f"fold_{fold}").mkdir(exist_ok=True)
            torch.save(ckpt, folder / f"fold_{fold}" / "checkpoint_final.pth")
    return root
