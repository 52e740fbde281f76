"""Exception hierarchy: every error a user can meet says what is wrong and what to do."""

from __future__ import annotations

__all__ = [
    "LesionLocatorError",
    "InputImageError",
    "PromptError",
    "CheckpointError",
    "EngineError",
    "OutputExistsError",
    "Cancelled",
]


class LesionLocatorError(Exception):
    """Base class for the errors this package raises on purpose (shown to users as-is)."""


class InputImageError(LesionLocatorError):
    """An image file/folder cannot be used (corrupt, not 3D, not CT, unreadable)."""


class PromptError(LesionLocatorError, ValueError):
    """A prompt is invalid for its image (outside the volume, empty box, bad JSON)."""


class CheckpointError(LesionLocatorError):
    """A model checkpoint folder is incomplete, of an unknown kind or does not match its plans."""


class EngineError(LesionLocatorError):
    """An engine could not run (missing optional dependency, unavailable device...)."""


class OutputExistsError(LesionLocatorError):
    """Refusing to overwrite existing results (use --overwrite or --continue_prediction)."""


class Cancelled(LesionLocatorError):
    """The user cancelled a running job; partial results are discarded, inputs untouched."""
