"""Shared fixtures. Sub-folders add their own conftest.py for their own fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared_dir() -> Path:
    """The project's shared folder (real CT cases, reference plans): $LESIONLOCATOR_SHARED, else ../shared."""
    env = os.environ.get("LESIONLOCATOR_SHARED")
    return Path(env) if env else REPO.parent / "shared"


SHARED = _shared_dir()
REAL_DATA = SHARED / "data" / "real"


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """../shared/data/real (real CT cases with lesion labels); tests skip when it is absent."""
    if not REAL_DATA.exists():
        pytest.skip("../shared/data/real is not available (set LESIONLOCATOR_SHARED)")
    return REAL_DATA


@pytest.fixture
def no_user_checkpoint(monkeypatch, tmp_path_factory):
    """Isolate from the developer's environment: no checkpoint configured anywhere."""
    from napari_lesionlocator.engines.lesionlocator import config

    monkeypatch.delenv("LESIONLOCATOR_CHECKPOINT", raising=False)
    cfg = tmp_path_factory.mktemp("cfg") / "config.json"
    monkeypatch.setattr(config, "config_file", lambda: cfg)
