"""Opt-in CPU forward with the Conv3d weights kept in oneDNN's blocked layout (issue 11 item 4).

On CPU, torch runs a float32 ``Conv3d`` through oneDNN, which reorders the weights into its blocked
layout on every call; ``torch.utils.mkldnn.to_mkldnn`` reorders them once instead. This is the
engine's version of that (``EngineSettings.extra["onednn_weights"] = True``; off by default).
``benchmarks/lesionlocator_forward.py`` measured it on the real ResEnc-L (96x128x128 input, 2-core
AMD EPYC): argmax identical to the plain forward, and no faster (18.1-18.8 CPU seconds per
one-thread forward against 17.8-18.0 plain): the reorder is not where the forward's time goes
there. It is kept as a tested option for CPUs where it may be.

:func:`use_onednn_weights` gives each ``Conv3d`` of a network a forward that calls
``torch.mkldnn_convolution`` with a cached reordered copy of its weights. The module, its
parameters and state-dict keys are unchanged, so fold swaps (``load_state_dict``) work as before:
the cache is keyed on the weights' storage and version and is rebuilt when they change.
Anything the fast call does not cover (a GPU, another dtype such as bf16 autocast, gradients,
non-zero padding modes, string padding) takes the module's own forward.
"""

from __future__ import annotations

import types

__all__ = ["available", "use_onednn_weights", "is_patched", "restore", "enable_for"]


def available() -> bool:
    """True when this torch build can run oneDNN convolutions on the CPU."""
    import torch

    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch, "mkldnn_convolution")


def _fast_forward(self, x):
    import torch

    w, b = self.weight, self.bias
    if (
        x.device.type != "cpu"
        or w.device.type != "cpu"
        or x.dtype != torch.float32
        or w.dtype != torch.float32
        or x.is_mkldnn
        or (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad))
        or torch.is_autocast_enabled("cpu")
    ):
        return self._ll_dense_forward(x)
    key = (w.data_ptr(), w._version, None if b is None else (b.data_ptr(), b._version))
    if self._ll_key != key:
        with torch.no_grad():
            self._ll_weight = torch._C._nn.mkldnn_reorder_conv3d_weight(
                w.detach().to_mkldnn(), self.padding, self.stride, self.dilation, self.groups
            )
            self._ll_bias = None if b is None else b.detach().clone()
        self._ll_key = key
    return torch.mkldnn_convolution(
        x.contiguous(), self._ll_weight, self._ll_bias, self.padding, self.stride, self.dilation, self.groups
    )


def _eligible(m) -> bool:
    import torch

    return (
        type(m) is torch.nn.Conv3d
        and m.padding_mode == "zeros"
        and not isinstance(m.padding, str)
        and "_ll_dense_forward" not in m.__dict__
    )


def use_onednn_weights(network) -> int:
    """Patch every plain ``Conv3d`` in ``network`` (in place); returns how many were patched."""
    n = 0
    for m in network.modules():
        if _eligible(m):
            m._ll_dense_forward = m.forward
            m._ll_key = None
            m._ll_weight = None
            m._ll_bias = None
            m.forward = types.MethodType(_fast_forward, m)
            n += 1
    return n


def is_patched(network) -> bool:
    return any("_ll_dense_forward" in m.__dict__ for m in network.modules())


def restore(network) -> int:
    """Undo :func:`use_onednn_weights` (the plain forward again, caches dropped); returns how many."""
    n = 0
    for m in network.modules():
        if "_ll_dense_forward" in m.__dict__:
            m.forward = m._ll_dense_forward
            for k in ("_ll_dense_forward", "_ll_key", "_ll_weight", "_ll_bias"):
                m.__dict__.pop(k, None)
            n += 1
    return n


def enable_for(network, device, part: str, notes: list[str]) -> int:
    """:func:`use_onednn_weights` when ``device`` is the CPU and oneDNN is available; notes what it did."""
    if getattr(device, "type", str(device)) != "cpu" or not available():
        return 0
    n = use_onednn_weights(network)
    if n:
        notes.append(f"{part}: {n} Conv3d layer(s) use oneDNN-layout weights on the CPU (onednn_weights)")
    return n
