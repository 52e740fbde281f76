"""Engine settings resolved in one place for the CLI and the GUI.

:func:`engine_settings` turns what a user chose (engine or none, checkpoint or none, device ``auto``,
TTA or the default, the unsafe-checkpoint consent) into an engine name and
:class:`~..engines.base.EngineSettings`, with the notes a front end should show. No torch import
unless the device is ``auto`` and the LesionLocator engine is chosen.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import CheckpointError
from ..engines.base import Engine, EngineSettings, create_engine

__all__ = ["ResolvedEngine", "engine_settings", "make_engine", "resolve_device_choice", "DEFAULT_TTA"]

#: mirroring TTA by engine when the user did not choose (the official LesionLocator CLI mirrors by default)
DEFAULT_TTA = {"lesionlocator": True, "classical": False}

CPU_NOTE = ("LesionLocator on the CPU is slow (the real model needs about a minute per network forward; "
            "TTA runs 8 forwards per tile and every fold adds as many): consider disabling TTA, one fold, "
            "a GPU, or the classical engine")


@dataclass
class ResolvedEngine:
    """What :func:`engine_settings` decided: ``name``, ``settings`` and ``notes`` (warnings to show)."""

    name: str
    settings: EngineSettings
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One line for a status bar or log: the engine and its effective options."""
        s = self.settings
        if self.name != "lesionlocator":
            return f"engine: {self.name} (no weights)"
        folds = "all found" if s.folds is None else list(s.folds)
        return (f"engine: lesionlocator (checkpoint {s.checkpoint}, device {s.device}, folds {folds}, "
                f"TTA {'on' if s.tta else 'off'})")


def resolve_device_choice(device: str | None) -> str:
    """``"auto"`` (or None) -> ``cuda``, then ``mps``, then ``cpu``, as torch sees them; others unchanged."""
    if device not in (None, "", "auto"):
        return str(device)
    try:
        from ..engines.lesionlocator.device import available_devices

        devices = available_devices()
    except ImportError:
        return "cpu"
    return next((d for d in ("cuda", "mps") if d in devices), "cpu")


def _configured_checkpoint(notes: list[str]) -> str | None:
    from ..engines.lesionlocator.config import ENV_VAR, get_configured_checkpoint

    env = os.environ.get(ENV_VAR)
    if env:
        return env
    try:
        return get_configured_checkpoint()
    except CheckpointError as exc:
        notes.append(str(exc))
        return None


def engine_settings(
    engine: str | None = None,
    *,
    checkpoint: str | os.PathLike | None = None,
    device: str | None = "auto",
    folds: Sequence[int] | None = None,
    tta: bool | None = None,
    threads: int | None = None,
    allow_unsafe: bool = False,
    precision: str | None = None,
) -> ResolvedEngine:
    """Resolve an engine choice the same way for every front end.

    Parameters
    ----------
    engine : "classical", "lesionlocator" or None
        None: lesionlocator when a checkpoint is configured (``checkpoint``, ``$LESIONLOCATOR_CHECKPOINT``
        or the user config file), else classical.
    checkpoint : path, optional
        The LesionLocatorCheckpoint folder; must exist.
    device : "auto", "cpu", "cuda", "cuda:N" or "mps"
        ``auto``: cuda, then mps, then cpu (only the LesionLocator engine uses a device).
    folds : folds to ensemble (None: every fold found).
    tta : bool or None
        None: the engine's default (:data:`DEFAULT_TTA`: on for lesionlocator, as the official tool).
    threads : CPU threads (None: library default).
    allow_unsafe : bool
        The user's consent to a full (code-running) unpickling of *this* checkpoint when the safe
        weights-only load refuses it; only honoured with a checkpoint.
    precision : "float16" (official numerics, default) or "float32" (labelled option).

    Raises
    ------
    CheckpointError
        lesionlocator asked for without a checkpoint configured anywhere, or a checkpoint folder
        that does not exist (exit code 2 on the command line).
    """
    notes: list[str] = []
    if engine not in (None, "classical", "lesionlocator"):
        from ..engines.base import available_engines

        if engine not in available_engines():
            raise CheckpointError(f"unknown engine {engine!r}; choose one of: {', '.join(available_engines())}")
    ckpt = str(checkpoint) if checkpoint else None
    if engine == "classical":
        return ResolvedEngine("classical", EngineSettings(threads=threads), notes)
    if ckpt is None and engine in (None, "lesionlocator"):
        ckpt = _configured_checkpoint(notes)
    if engine is None:
        engine = "lesionlocator" if ckpt else "classical"
        if engine == "classical":
            return ResolvedEngine("classical", EngineSettings(threads=threads), notes)
    if engine == "lesionlocator":
        if not ckpt:
            from ..engines.lesionlocator.config import no_checkpoint_message

            raise CheckpointError(f"the lesionlocator engine needs a checkpoint: {no_checkpoint_message()}")
        if not Path(ckpt).expanduser().exists():
            raise CheckpointError(f"the checkpoint folder {ckpt} does not exist (download it with "
                                  "`lesionlocator download-weights`)")
    extra: dict = {"allow_unsafe": bool(allow_unsafe and ckpt)}
    if precision is not None:
        extra["precision"] = precision
    settings = EngineSettings(
        threads=threads,
        device=resolve_device_choice(device),
        checkpoint=ckpt,
        folds=None if folds is None else [int(f) for f in folds],
        tta=DEFAULT_TTA.get(engine, False) if tta is None else bool(tta),
        extra=extra,
    )
    if engine == "lesionlocator" and settings.device == "cpu":
        notes.append(CPU_NOTE)
    return ResolvedEngine(engine, settings, notes)


def make_engine(resolved: ResolvedEngine | None = None, **kwargs) -> Engine:
    """Build the engine :func:`engine_settings` resolved (or resolve ``kwargs`` first)."""
    if resolved is None:
        resolved = engine_settings(**kwargs)
    return create_engine(resolved.name, resolved.settings)
