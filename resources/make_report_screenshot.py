"""Render docs/screenshots/15_report.png (the top) and 16_report_key_slices.png (the key slices) of
the response report (``lesionlocator report`` / the Lesion table's *Report...*) of the sample study,
as Qt's rich-text engine draws the HTML page (no browser needed), in a 1600x1000 window. Qt lays out
figure captions beside the images, where a browser puts them below.

The sample study's ground-truth masks are the lesions (as if the reader had drawn them), sites
picked, targets 2, 3 and 6; lesion 7 (new at follow-up 1) makes that follow-up PD. Run under a
display::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python resources/make_report_screenshot.py [OUT.png]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SITES = {"lung": "lung", "liver": "liver", "mediastinum": "lymph node"}


def sample_report(path: Path) -> Path:
    from napari_lesionlocator.core.study import Study, Timepoint
    from napari_lesionlocator.report import write_report
    from napari_lesionlocator.sample.synthetic import make_synthetic_study

    truth = make_synthetic_study(seed=0, size="small")
    study = Study([Timepoint(im, lab) for im, lab in truth.pairs], "sample", sort_by_date=False)
    for rec in truth.lesions:
        study.set_lesion_info(rec.id, site=SITES[rec.organ])
    for lid in (2, 3, 6):
        study.set_lesion_info(lid, role="target")
    study.set_lesion_info(4, role="non-target")
    return write_report(study, path, overwrite=True)


def main(out: Path) -> list[Path]:
    from qtpy.QtWidgets import QApplication, QTextBrowser

    app = QApplication.instance() or QApplication([])
    with tempfile.TemporaryDirectory() as tmp:
        html = sample_report(Path(tmp) / "report.html").read_text()
    view = QTextBrowser()
    view.resize(1600, 1000)
    view.setHtml(html)
    view.show()
    end = time.time() + 1.0
    while time.time() < end:
        app.processEvents()
        time.sleep(0.01)
    out.parent.mkdir(parents=True, exist_ok=True)
    view.grab().save(str(out))
    written = [out]
    if view.find("Key slices"):  # the key slices with the mask outline and the RECIST axes
        bar = view.verticalScrollBar()
        bar.setValue(bar.value() + view.cursorRect().top() - 10)
        cursor = view.textCursor()
        cursor.clearSelection()  # no highlight left by the search
        view.setTextCursor(cursor)
        for _ in range(20):
            app.processEvents()
        second = out.with_name(out.name.replace("15_report", "16_report_key_slices"))
        view.grab().save(str(second))
        written.append(second)
    for path in written:
        print("wrote", path)
    return written


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "screenshots" / "15_report.png")
