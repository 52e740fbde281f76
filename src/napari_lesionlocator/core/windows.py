"""CT display windows (width/level in HU) as radiologists name them."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Window", "WINDOW_PRESETS", "window_limits", "LESION_PALETTE", "SITE_WINDOWS", "lesion_rgb"]


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


# One palette for every lesion display (napari layers, report figures), so lesion k has the same
# colour everywhere: lesion id k gets entry (k - 1) mod 12. Every colour is bright and saturated
# (no greys, no dark colours) so that it stands out over CT (soft tissue, lung and bone alike).
LESION_PALETTE: tuple[tuple[float, float, float], ...] = (
    (1.00, 0.85, 0.10),  # yellow
    (0.10, 0.90, 1.00),  # cyan
    (1.00, 0.30, 0.85),  # magenta
    (0.40, 1.00, 0.20),  # lime
    (1.00, 0.55, 0.10),  # orange
    (0.35, 0.65, 1.00),  # sky blue
    (1.00, 0.30, 0.35),  # coral red
    (0.75, 0.45, 1.00),  # violet
    (0.15, 1.00, 0.70),  # spring green
    (0.85, 1.00, 0.10),  # chartreuse
    (1.00, 0.45, 0.60),  # rose
    (0.10, 0.75, 1.00),  # azure
)

#: The window a lesion's site is best read in.
SITE_WINDOWS: dict[str, str] = {"lung": "lung", "liver": "liver", "lymph node": "mediastinum", "bone": "bone",
                                "soft tissue": "soft tissue", "other": "soft tissue"}


def lesion_rgb(lesion_id: int) -> tuple[float, float, float]:
    """The display colour (RGB floats 0-1) of a lesion id."""
    return LESION_PALETTE[(int(lesion_id) - 1) % len(LESION_PALETTE)]
