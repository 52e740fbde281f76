"""Where the LesionLocator checkpoint lives: settings, environment variable, or the user config file.

Resolution order (first hit wins):

1. ``EngineSettings.checkpoint`` (CLI ``--checkpoint`` / GUI field),
2. environment variable ``LESIONLOCATOR_CHECKPOINT``,
3. key ``"checkpoint"`` in ``platformdirs.user_config_dir("napari-lesionlocator")/config.json``.

No torch here: the CLI and GUI use these helpers without loading the model stack.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ...core.errors import CheckpointError

__all__ = [
    "ENV_VAR",
    "ZENODO_RECORD",
    "config_file",
    "get_configured_checkpoint",
    "set_configured_checkpoint",
    "resolve_checkpoint_path",
    "no_checkpoint_message",
]

ENV_VAR = "LESIONLOCATOR_CHECKPOINT"
ZENODO_RECORD = "https://zenodo.org/records/15174217"
APP_NAME = "napari-lesionlocator"


def config_file() -> Path:
    """Path of the per-user JSON config file (it may not exist yet)."""
    try:
        from platformdirs import user_config_dir
    except ImportError:  # platformdirs ships with napari/pip; fall back to XDG rules
        base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return Path(base) / APP_NAME / "config.json"
    return Path(user_config_dir(APP_NAME)) / "config.json"


def _read_config() -> dict:
    path = config_file()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"the config file {path} is not valid JSON ({exc}); fix or delete it") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"the config file {path} must hold a JSON object")
    return data


def get_configured_checkpoint() -> str | None:
    """Checkpoint folder stored in the user config file, or None."""
    value = _read_config().get("checkpoint")
    return str(value) if value else None


def set_configured_checkpoint(path: str | os.PathLike | None) -> Path:
    """Store (or with None, remove) the checkpoint folder in the user config file; returns the file.

    The file is written atomically and its other keys are kept.
    """
    cfg_path = config_file()
    data = _read_config()
    if path is None:
        data.pop("checkpoint", None)
    else:
        data["checkpoint"] = str(Path(path).expanduser().resolve())
    from ...io.atomic import atomic_write_text

    atomic_write_text(cfg_path, json.dumps(data, indent=2), overwrite=True)  # other keys were kept above
    return cfg_path


def no_checkpoint_message() -> str:
    return (
        "no LesionLocator checkpoint is configured. Download it with `lesionlocator download-weights` "
        f"(Zenodo record 15174217, {ZENODO_RECORD}) and pass its folder with --checkpoint, set "
        f'{ENV_VAR}, or store it in {config_file()} under the key "checkpoint". '
        "The classical engine (the default) needs no checkpoint."
    )


def resolve_checkpoint_path(explicit: str | os.PathLike | None = None) -> Path:
    """The checkpoint folder to use (see module docstring); CheckpointError when none is set or it is missing."""
    for source, value in (
        ("the checkpoint setting", explicit),
        (f"${ENV_VAR}", os.environ.get(ENV_VAR)),
        (f"the config file {config_file()}", get_configured_checkpoint()),
    ):
        if value:
            path = Path(value).expanduser()
            if not path.exists():
                raise CheckpointError(
                    f"the checkpoint folder {path} (from {source}) does not exist. {no_checkpoint_message()}"
                )
            return path
    raise CheckpointError(no_checkpoint_message())
