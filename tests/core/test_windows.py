"""CT window presets."""

from __future__ import annotations

import pytest

from napari_lesionlocator.core.windows import WINDOW_PRESETS, window_limits


def test_presets_limits() -> None:
    assert window_limits("lung") == (-1350.0, 150.0)
    assert window_limits("mediastinum") == (-135.0, 215.0)
    for w in WINDOW_PRESETS.values():
        lo, hi = w.limits
        assert hi - lo == w.width and (lo + hi) / 2 == w.level


def test_unknown_window_lists_presets() -> None:
    with pytest.raises(KeyError, match="lung"):
        window_limits("brain")
