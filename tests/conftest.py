"""Shared fixtures. Sub-folders add their own conftest.py for their own fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REAL_DATA = SHARED / "data" / "real"


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """../shared/data/real (real CT cases with lesion labels); tests skip when it is absent."""
    if not REAL_DATA.exists():
        pytest.skip("../shared/data/real is not available")
    return REAL_DATA
