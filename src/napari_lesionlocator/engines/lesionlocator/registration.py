"""uniGradICON registration for LesionLocator tracking: the A-to-B field only, z-search, warping.

Facts this module relies on (measured here with unigradicon / icon_registration as installed):

* ``unigradicon.make_network([1, 1, g, g, g], include_last_step=True)`` has the same state dict
  (188 keys, same shapes, 70.68 M parameters) for every grid size ``g``: the identity maps that
  depend on the grid are *non-persistent* buffers, so a checkpoint does not record its grid.
  Real LesionLocator checkpoints use ``g = 175``. Tiny test checkpoints store the grid in an
  extra ``reg_grid_size`` buffer of the TrackNet (see ``tracking.build_track_network``).
* The smallest grid the network accepts is 65: the innermost of its three nested U-Nets sees
  ``ceil(ceil(g / 2) / 2)`` voxels and average-pools five times, which needs at least 17.
  At 65^3 one A-to-B forward takes about 1.2 s on one CPU thread (vs ~23 s at 175^3 on 2 threads).
* The network's training forward (``GradientICONSparse.forward``) computes the A-to-B and the
  B-to-A transforms, warps both images and evaluates the similarity and inverse-consistency losses.
  Inference needs only ``regis_net(A, B)`` evaluated on the tagged identity map, which is the exact
  computation the training forward performs for its ``phi_AB_vectorfield`` (bit-identical, tested).

All arrays here are torch tensors shaped (N, C, Z, Y, X); the registration grid is cubic.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...core.errors import CheckpointError

__all__ = [
    "REG_GRID_DEFAULT",
    "REG_GRID_MIN",
    "Z_SEARCH_THRESHOLD",
    "make_registration_network",
    "registration_grid_size",
    "compute_field_a_to_b",
    "full_forward_field",
    "warp_prompt",
    "resize_image",
    "resize_mask",
    "ZSearch",
    "z_search",
    "FieldCache",
    "CONFIGURATION",
    "REG_GRID_PLANS_KEY",
    "TrackNet",
    "build_track_network",
    "load_track_model",
]

CONFIGURATION = "3d_fullres"
#: optional key of plans["configurations"]["3d_fullres"] giving the registration grid (tiny plans)
REG_GRID_PLANS_KEY = "lesionlocator_registration_grid"

REG_GRID_DEFAULT = 175
REG_GRID_MIN = 65
# The z-search runs when the two preprocessed volumes' z-sizes differ by more than this (slices).
Z_SEARCH_THRESHOLD = 20


def make_registration_network(grid: int = REG_GRID_DEFAULT):
    """Build uniGradICON exactly as LesionLocator does, on a ``grid``^3 input.

    Parameters
    ----------
    grid : int
        Edge of the cubic registration grid in voxels (175 for real checkpoints, >= 65).

    Returns
    -------
    torch.nn.Module
        ``unigradicon.make_network([1, 1, grid, grid, grid], include_last_step=True)``.
    """
    grid = int(grid)
    if grid < REG_GRID_MIN:
        raise ValueError(f"the registration grid must be at least {REG_GRID_MIN} voxels, got {grid}")
    import unigradicon  # lazy: pulls itk and icon_registration

    return unigradicon.make_network([1, 1, grid, grid, grid], include_last_step=True)


def registration_grid_size(reg_net) -> int:
    """Edge of the cubic grid ``reg_net`` was built for (from its identity map)."""
    return int(reg_net.identity_map.shape[-1])


def _tag_identity(reg_net) -> torch.Tensor:
    # The tag lets FunctionFromVectorField add the displacement directly instead of interpolating
    # it at the identity coordinates; the training forward sets it, so must we (identical field).
    # It is an attribute of the tensor and is lost by .to(device), hence set on every call.
    identity = reg_net.identity_map
    identity.isIdentity = True
    return identity


def compute_field_a_to_b(reg_net, image_a: torch.Tensor, image_b: torch.Tensor) -> torch.Tensor:
    """The A-to-B transform of ``reg_net`` sampled on its identity grid, nothing else.

    Parameters
    ----------
    reg_net : GradientICONSparse
        uniGradICON wrapper from :func:`make_registration_network` (eval mode).
    image_a, image_b : torch.Tensor
        Moving (baseline) and fixed (follow-up) images, (1, 1, g, g, g), float32.

    Returns
    -------
    torch.Tensor
        (1, 3, g, g, g) coordinates in [0, 1] (icon_registration's convention): the position in A
        of every voxel of B, so that ``A o phi ~ B``.
    """
    identity = _tag_identity(reg_net)
    phi_ab = reg_net.regis_net(image_a, image_b)
    return phi_ab(identity)


def full_forward_field(reg_net, image_a: torch.Tensor, image_b: torch.Tensor) -> torch.Tensor:
    """The A-to-B field as the network's full training forward produces it (both directions,
    losses). Used to prove :func:`compute_field_a_to_b` identical and to benchmark the saving."""
    reg_net(image_a, image_b)
    phi = reg_net.phi_AB_vectorfield
    if hasattr(reg_net, "clean"):
        reg_net.clean()  # drop the B-to-A field and warped images the forward keeps as attributes
    return phi


def warp_prompt(reg_net, prompt: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """Warp a baseline mask into the follow-up's frame: order-0 (nearest) sampling, zero outside.

    Parameters
    ----------
    prompt : torch.Tensor
        (1, 1, g, g, g) mask on the registration grid, float.
    phi : torch.Tensor
        A-to-B field from :func:`compute_field_a_to_b`.
    """
    from icon_registration.mermaidlite import compute_warped_image_multiNC

    return compute_warped_image_multiNC(prompt, phi.to(prompt.dtype), reg_net.spacing, 0, zero_boundary=True)


def resize_image(x: torch.Tensor, size) -> torch.Tensor:
    """Trilinear resize (align_corners=False) of a (1, C, Z, Y, X) image to ``size`` (z, y, x)."""
    size = tuple(int(s) for s in size)
    if tuple(x.shape[2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="trilinear", align_corners=False)


def resize_mask(x: torch.Tensor, size) -> torch.Tensor:
    """Nearest-exact resize of a (1, C, Z, Y, X) mask to ``size`` (z, y, x)."""
    size = tuple(int(s) for s in size)
    if tuple(x.shape[2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="nearest-exact")


@dataclass(frozen=True)
class ZSearch:
    """Outcome of the z-search: which volume was cropped and where (in its z indices)."""

    cropped: str | None  # "baseline", "followup" or None (no search: sizes within the threshold)
    offset: int = 0  # first kept slice of the cropped volume
    length: int = 0  # number of kept slices (the shorter volume's z-size)
    mse: tuple[float, ...] = ()  # MSE per offset 0..diff (for inspection and tests)


def z_search(x0: torch.Tensor, x1: torch.Tensor, grid: int, threshold: int = Z_SEARCH_THRESHOLD) -> ZSearch:
    """Find where the shorter volume lies along z in the longer one.

    When the z-sizes differ by more than ``threshold`` slices, both volumes are resized in y and x
    to ``grid`` (trilinear), the shorter one is slid over every offset ``0 .. diff`` (inclusive)
    of the longer one and the offset with the smallest mean squared error is kept (the first on
    ties).

    Parameters
    ----------
    x0, x1 : torch.Tensor
        Baseline and follow-up, (1, 1, Z, Y, X) float32.
    """
    z0, z1 = int(x0.shape[2]), int(x1.shape[2])
    diff = abs(z0 - z1)
    if diff <= threshold:
        return ZSearch(None)
    if z0 > z1:
        longer, shorter, cropped = x0, x1, "baseline"
    else:
        longer, shorter, cropped = x1, x0, "followup"
    zs = int(shorter.shape[2])
    long_r = resize_image(longer, (longer.shape[2], grid, grid))
    short_r = resize_image(shorter, (zs, grid, grid))
    mse = [float(torch.mean((long_r[:, :, off : off + zs] - short_r) ** 2)) for off in range(diff + 1)]
    best = min(range(len(mse)), key=mse.__getitem__)
    return ZSearch(cropped, best, zs, tuple(mse))


@dataclass
class FieldCache:
    """A-to-B fields keyed by (image pair, flip, fold); counts how many were computed.

    The field depends on the two images, the mirroring and the fold's weights, never on the
    lesion: within one tracking call every lesion reuses the field of the current (flip, fold),
    and a cache kept across calls (the engine keeps one per session) serves a re-run on the
    same pair. Keys hold the image objects themselves (identity-hashed), so a key can never
    match another pair. ``max_bytes`` bounds memory (a 175^3 field is 64 MB in float32); the
    oldest entries are dropped first.
    """

    max_bytes: int = 1 << 30
    computed: int = 0
    _fields: dict = field(default_factory=dict)
    _owner: object = None

    def bind(self, model) -> None:
        """Tie the cache to the model whose weights made its fields; another model clears it
        (the keys name the fold, not the weights, so a reloaded checkpoint must not hit)."""
        owner = self._owner() if self._owner is not None else None
        if owner is not model:
            self._fields.clear()
            self._owner = weakref.ref(model)

    @property
    def nbytes(self) -> int:
        return sum(v.element_size() * v.nelement() for v in self._fields.values())

    def get(self, key: Hashable, compute):
        """Return the cached field for ``key``, computing it with ``compute()`` on a miss."""
        if key in self._fields:
            return self._fields[key]
        value = compute()
        self.computed += 1
        size = value.element_size() * value.nelement()
        while self._fields and self.nbytes + size > self.max_bytes:
            self._fields.pop(next(iter(self._fields)))
        if size <= self.max_bytes:
            self._fields[key] = value
        return value

    def clear(self) -> None:
        self._fields.clear()

    def __len__(self) -> int:
        return len(self._fields)


# ---------------------------------------------------------------------------------- network
class TrackNet(nn.Module):
    """uniGradICON (``reg_net``) + the plans' UNet (``unet``) + buffer ``unet_patch_size``.

    The registration grid is not in real checkpoints (the identity maps that depend on it are
    non-persistent), where it is 175. A TrackNet on another grid adds a ``reg_grid_size`` entry
    to its state dict, and loading a state dict that has one switches the grid to it (the
    identity maps are rebuilt), so tiny test checkpoints describe themselves.
    """

    def __init__(self, reg_net: nn.Module, unet: nn.Module, patch_size: Sequence[int]):
        super().__init__()
        self.reg_net = reg_net
        self.unet = unet
        self.register_buffer("unet_patch_size", torch.tensor([int(p) for p in patch_size], dtype=torch.int64))
        self.register_state_dict_post_hook(_emit_grid)
        self.register_load_state_dict_pre_hook(_adopt_grid)

    @property
    def grid(self) -> int:
        """Edge of the cubic registration grid (voxels)."""
        return registration_grid_size(self.reg_net)

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.unet_patch_size.tolist())

    def set_grid(self, grid: int) -> None:
        """Rebuild the registration identity maps for a ``grid``^3 input (weights unchanged)."""
        grid = int(grid)
        if grid < REG_GRID_MIN:
            raise CheckpointError(f"registration grid {grid} is below the minimum {REG_GRID_MIN}")
        device = self.unet_patch_size.device
        self.reg_net.assign_identity_map([1, 1, grid, grid, grid])
        self.reg_net.to(device)


def _emit_grid(module, state_dict, prefix, local_metadata) -> None:
    if module.grid != REG_GRID_DEFAULT:
        state_dict[prefix + "reg_grid_size"] = torch.tensor(module.grid, dtype=torch.int64)


def _adopt_grid(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    value = state_dict.pop(prefix + "reg_grid_size", None)
    grid = REG_GRID_DEFAULT if value is None else int(value)
    if grid != module.grid:
        module.set_grid(grid)


def _load_plans(plans: dict | str | Path) -> dict:
    if isinstance(plans, dict):
        return plans
    try:
        return json.loads(Path(plans).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read plans {plans} ({exc})") from None


def build_track_network(
    plans: dict | str | Path,
    tiny: bool = False,
    patch_size: Sequence[int] | None = None,
    reg_grid_size: int | None = None,
    num_image_channels: int | None = None,
) -> TrackNet:
    """Build LesionLocator's tracking network (random weights, eval mode).

    Parameters
    ----------
    plans : dict or path
        nnU-Net v2 plans; its ``3d_fullres`` network becomes ``unet`` with image channels + 1
        inputs and 2 outputs, deep supervision off.
    tiny : bool
        Use the smallest registration grid uniGradICON accepts (65^3 instead of 175^3) for fast
        tests. Same weights shapes either way.
    patch_size : sequence of 3 int, optional
        Value of the ``unet_patch_size`` buffer, (z, y, x) voxels; default the plans' patch size.
    reg_grid_size : int, optional
        Explicit registration grid; overrides ``tiny`` and the plans key ``REG_GRID_PLANS_KEY``.
    num_image_channels : int, optional
        Image channels; default one per normalization scheme in the plans (1 for CT).
    """
    from .checkpoint import build_segmentation_network

    if not isinstance(tiny, bool):  # guards builder(plans, num_image_channels) call patterns
        raise TypeError(f"tiny must be a bool, got {tiny!r}; pass num_image_channels= by keyword")
    plans = _load_plans(plans)
    try:
        conf = plans["configurations"][CONFIGURATION]
        if "architecture" not in conf:
            raise KeyError("architecture")
    except (KeyError, TypeError):
        raise CheckpointError(f"plans have no '{CONFIGURATION}' configuration with an 'architecture'") from None
    if reg_grid_size is None:
        reg_grid_size = conf.get(REG_GRID_PLANS_KEY) or (REG_GRID_MIN if tiny else REG_GRID_DEFAULT)
    if num_image_channels is None:
        num_image_channels = len(conf.get("normalization_schemes", ["CTNormalization"]))
    patch = tuple(int(p) for p in (patch_size if patch_size is not None else conf["patch_size"]))
    if len(patch) != 3:
        raise CheckpointError(f"the tracking patch size needs 3 values (z, y, x), got {patch}")
    # Same network as the segmenter: image channels + the warped previous mask, 2 outputs.
    unet = build_segmentation_network(plans, num_image_channels)
    net = TrackNet(make_registration_network(int(reg_grid_size)), unet, patch)
    return net.eval()




def load_track_model(
    root: str | Path,
    *,
    folds: Sequence[int] | None = None,
    device=None,
    allow_unsafe: bool = False,
    onednn_weights: bool = False,
):
    """Load ``LesionLocatorTrack`` (every fold found, or ``folds``) as the engine's ``LoadedModel``.

    Like ``checkpoint.load_model`` but the TrackNet is built after reading the first fold, so a
    checkpoint that records another registration grid (``reg_grid_size``, tiny test checkpoints)
    gets a matching network; real checkpoints record none and use 175^3. Tracking always mirrors
    all three axes, so ``mirror_axes`` is (0, 1, 2) whatever the checkpoint allows.
    ``onednn_weights`` (CPU): the UNet's Conv3d layers keep their weights in oneDNN's layout
    (:mod:`.onednn`); the registration network is left as it is.
    """
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from .checkpoint import (
        LoadedModel,
        check_checkpoint_dict,
        load_checkpoint_file,
        match_state_dict,
        part_folder,
        validate_model_folder,
    )

    device = torch.device(device or "cpu")
    mf = validate_model_folder(part_folder(root, "track"), "track", folds)
    pm = PlansManager(mf.plans)
    cm = pm.get_configuration(CONFIGURATION)
    network = None
    weights: dict[int, dict] = {}
    trainer = ""
    for fold in mf.folds:
        path = mf.fold_file(fold)
        ckpt = load_checkpoint_file(path, allow_unsafe=allow_unsafe)
        check_checkpoint_dict(ckpt, "track", path)
        sd = ckpt["network_weights"]
        if network is None:
            trainer = ckpt["trainer_name"]
            grid = int(sd["reg_grid_size"]) if "reg_grid_size" in sd else REG_GRID_DEFAULT
            if "unet_patch_size" not in sd:
                raise CheckpointError(f"{path}: the tracking weights lack the 'unet_patch_size' buffer")
            network = build_track_network(mf.plans, reg_grid_size=grid, num_image_channels=mf.num_image_channels)
        sd = match_state_dict(network, sd, path)
        patch = [int(v) for v in torch.as_tensor(sd["unet_patch_size"]).reshape(-1).tolist()]
        if len(patch) != 3 or min(patch) < 1:
            raise CheckpointError(f"{path}: unet_patch_size must hold 3 positive sizes, got {patch}")
        weights[fold] = {k: v.to(device) for k, v in sd.items()}
    network.to(device)
    network.eval()
    notes = [f"track: using fold(s) {mf.folds} from {mf.path} (registration grid {network.grid}^3)"]
    if onednn_weights:
        from .onednn import enable_for

        enable_for(network.unet, device, "track", notes)
    model = LoadedModel(mf, pm, cm, network, weights, (0, 1, 2), trainer, device, notes)
    model.use_fold(mf.folds[0])
    return model
