"""Embedded classical engine (no weights): the default when no checkpoint is configured.

Segmentation (:mod:`.segment`) is seeded and adapts to the lesion's HU statistics around the
prompt; tracking (:mod:`.track`, :mod:`.register`) registers the follow-up to the baseline
around each lesion with SimpleITK and re-segments the mapped lesion. Imports neither torch nor
any GUI toolkit.
"""

from __future__ import annotations

from .engine import ClassicalEngine

__all__ = ["ClassicalEngine"]
