"""Exception hierarchy: every error a user can meet says what is wrong and what to do."""

from __future__ import annotations

__all__ = [
    "LesionLocatorError",
    "InputImageError",
    "PromptError",
    "CheckpointError",
    "EngineError",
    "OutputExistsError",
    "OutputPathError",
    "OutputWriteError",
    "ResourceLimitError",
    "SpacingError",
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


class OutputPathError(LesionLocatorError):
    """The output location cannot take results (it is a file, read-only, ...); found before any work."""


class OutputWriteError(LesionLocatorError):
    """A result could not be written completely (disk full, a writer that failed silently).

    Nothing is left under the final name; files written before are kept.
    """


class ResourceLimitError(InputImageError):
    """An input is too large for this machine (declared size against the memory available)."""


class SpacingError(InputImageError):
    """The header's voxel spacing is 0, negative or NaN: no measurement in mm could be trusted."""


class Cancelled(LesionLocatorError):
    """The user cancelled a running job; partial results are discarded, inputs untouched."""
