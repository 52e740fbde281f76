"""Session fixtures for the synthetic study tests: the small study is rendered once."""

from __future__ import annotations

import pytest

from napari_lesionlocator.sample.synthetic import make_synthetic_study


@pytest.fixture(scope="session")
def small_study():
    """The default study (seed 0, size "small"), shared by every test in this folder."""
    return make_synthetic_study(seed=0, size="small")
