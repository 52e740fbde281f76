"""Render docs/screenshots/10_lesion_table.png: the "Lesion table" dock (RECIST 1.1 table, response
per follow-up, size plot) at the bottom of a 1600x1000 window with every other dock open.

The sample study's ground-truth masks are put into the lesion layers (as if the reader had drawn
them); sites are picked for each lesion and three targets chosen in the table, lesion 7 (new at
follow-up 1) makes that follow-up PD. Run under a display::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python resources/make_lesion_table_screenshot.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

PLUGIN = "napari-lesionlocator"
REPO = Path(__file__).resolve().parents[1]
SITES = {"lung": "lung", "liver": "liver", "mediastinum": "lymph node"}


def settle(seconds: float = 0.3) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.time() + seconds
    while time.time() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def main(out: Path) -> Path:
    import napari
    from qtpy.QtCore import Qt

    import napari_lesionlocator.gui  # noqa: F401 - applies the PySide6 guard before Qt work
    from napari_lesionlocator.gui._sample_data import _cached_study
    from napari_lesionlocator.gui._session import session_for

    truth = _cached_study()
    viewer = napari.Viewer(show=True)
    qwin = viewer.window._qt_window
    qwin.resize(1600, 1000)
    viewer.open_sample(PLUGIN, "synthetic_study")
    widgets = {}
    for name in ("Lesion prompts", "Timeline", "Lesion review"):
        _, widgets[name] = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    dock, table = viewer.window.add_plugin_dock_widget(PLUGIN, "Lesion table")
    qwin.removeDockWidget(dock)
    qwin.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, dock)
    dock.show()
    qwin.resizeDocks([dock], [330], Qt.Orientation.Vertical)
    session = session_for(viewer)
    for tp, lab in zip(session.timepoints(), truth.labels, strict=True):
        session.labels_layer_for(tp).data = lab.array.copy()
    settle(0.5)
    table.model.flush()
    for rec in truth.lesions:
        table.model.study.set_lesion_info(rec.id, site=SITES[rec.organ])
    for lid in (6, 2, 3):
        table.set_role(lid, "target")
    table.set_role(4, "non-target")
    table.model.flush()
    settle(0.5)
    rows = [r for r in range(table.table.rowCount()) if table.table.item(r, 0).text() == "6"]
    table.table.selectRow(rows[0])
    table.centre_on(6)
    settle(1.0)
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(out), canvas_only=False, flash=False)
    print("wrote", out)
    viewer.close()
    return out


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "screenshots" / "10_lesion_table.png")
