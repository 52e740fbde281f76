"""CT display windows (width/level in HU) as radiologists name them."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Window", "WINDOW_PRESETS", "window_limits"]


@dataclass(frozen=True)
class Window:
    name: str
    width: float
    level: float

    @property
    def limits(self) -> tuple[float, float]:
        """(low, high) HU, i.e. napari ``contrast_limits``."""
        return (self.level - self.width / 2.0, self.level + self.width / 2.0)


WINDOW_PRESETS: dict[str, Window] = {
    w.name: w
    for w in (
        Window("lung", 1500, -600),
        Window("mediastinum", 350, 40),
        Window("soft tissue", 400, 40),
        Window("liver", 150, 30),
        Window("bone", 1800, 400),
    )
}


def window_limits(name: str) -> tuple[float, float]:
    """Contrast limits of a named preset; raises KeyError listing the presets."""
    try:
        return WINDOW_PRESETS[name].limits
    except KeyError:
        raise KeyError(f"unknown window {name!r}; presets: {', '.join(WINDOW_PRESETS)}") from None
