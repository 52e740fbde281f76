"""Importing the core and io layers must not pull in Qt, napari or torch (headless use, fast CLI)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "superqt", "torch")


def test_core_and_io_import_stays_light() -> None:
    code = "\n".join([
        "import sys, json",
        "import napari_lesionlocator.core, napari_lesionlocator.io",
        "import napari_lesionlocator.core.study, napari_lesionlocator.io.dicom, napari_lesionlocator.io.study_layout",
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))",
    ])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
