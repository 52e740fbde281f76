"""File menu entries (npe2 ``menus: napari/file/io_utilities``): save / open a review session and
write the response report. Each goes through the viewer's Lesion table dock (opened when it is not),
so the save, restore and report run in its worker, exactly as its buttons do."""

from __future__ import annotations

import napari.viewer

from ._recovery import open_table

__all__ = ["save_review_session", "open_review_session", "write_review_report"]


def save_review_session(viewer: napari.viewer.Viewer) -> None:
    """File > IO Utilities > Save review session..."""
    open_table(viewer)._ask_save()


def open_review_session(viewer: napari.viewer.Viewer) -> None:
    """File > IO Utilities > Open review session..."""
    open_table(viewer)._ask_restore()


def write_review_report(viewer: napari.viewer.Viewer) -> None:
    """File > IO Utilities > Write response report..."""
    open_table(viewer)._ask_report()
