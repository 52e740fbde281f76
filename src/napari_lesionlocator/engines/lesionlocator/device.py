"""Device selection and the numeric context (autocast on CUDA, inference mode) for the LesionLocator engine."""

from __future__ import annotations

import contextlib

from ...core.errors import EngineError

__all__ = ["resolve_device", "inference_context", "available_devices"]


def available_devices() -> list[str]:
    """Devices torch can use here, always starting with ``"cpu"``."""
    import torch

    out = ["cpu"]
    if torch.cuda.is_available():
        out.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out


def resolve_device(name: str | None):
    """``torch.device`` for ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``; EngineError if it is absent.

    No silent fallback: a user who asked for the GPU and gets the CPU would wait 100x longer
    without knowing why.
    """
    import torch

    name = (name or "cpu").strip().lower()
    kind, _, index = name.partition(":")
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise EngineError(
                "device 'cuda' was requested but torch sees no CUDA GPU (torch "
                f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); use --device cpu "
                f"or install a CUDA build of torch. Available here: {', '.join(available_devices())}"
            )
        if index and int(index) >= torch.cuda.device_count():
            raise EngineError(f"device {name!r} does not exist: {torch.cuda.device_count()} CUDA device(s) found")
        return torch.device(name)
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise EngineError(
                "device 'mps' was requested but Apple Metal is not available here; "
                f"available: {', '.join(available_devices())}"
            )
        return torch.device("mps")
    raise EngineError(f"unknown device {name!r}: use cpu, cuda, cuda:N or mps")


@contextlib.contextmanager
def inference_context(device):
    """``torch.inference_mode`` plus fp16 autocast on CUDA (as the official predictor does)."""
    import torch

    with torch.inference_mode():
        if device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.float16):
                yield
        else:
            yield
