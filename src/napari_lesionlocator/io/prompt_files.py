"""LesionLocator prompt JSON files: reading (every error names the file) and atomic writing.

The format itself (``{"1": {"point": [z, y, x]}}``, ``{"1": {"box": [...]}}``) and its validation
live in :mod:`..core.prompts` (pure); writing goes through the one atomic-write helper.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from ..core.prompts import Prompt, prompts_to_json_dict, read_prompt_json
from .atomic import atomic_write_text

__all__ = ["read_prompt_json", "write_prompt_json"]


def write_prompt_json(prompts: Iterable[Prompt], path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write prompts atomically (see :func:`.atomic.atomic_write`); refuses to replace a file unless ``overwrite``."""
    text = json.dumps(prompts_to_json_dict(prompts), indent=2)
    return atomic_write_text(path, text + "\n", overwrite=overwrite)
