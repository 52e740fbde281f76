"""The HTML response report: parsed back, it holds the study, the lesion table, the response per
follow-up with reasons, the size plot and one key slice per lesion per timepoint (PNG, drawn right)."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from napari_lesionlocator.core.windows import lesion_rgb


def sample_review(scans: Path | None = None):
    """The sample study with its ground truth as the reader's masks (sites from the catalogue,
    targets chosen by the rules); with ``scans`` the images are files there (else in memory)."""
    from napari_lesionlocator.core.recist import auto_assign_targets
    from napari_lesionlocator.core.study import Study, Timepoint
    from napari_lesionlocator.io.images import read_image, write_image
    from napari_lesionlocator.sample.synthetic import make_synthetic_study

    syn = make_synthetic_study(seed=0, size="small")
    images = []
    for img in syn.images:
        if scans is not None:
            path = write_image(img, scans / f"{img.name}.nii.gz")
            back = read_image(path, name=img.name)
            back.acquisition_date = img.acquisition_date
            img = back
        images.append(img)
    study = Study([Timepoint(i, lab) for i, lab in zip(images, syn.labels, strict=True)], patient_id=syn.case)
    for rec in syn.lesions:
        study.set_lesion_info(rec.id, name=rec.kind.replace("_", " "),
                              site="lymph node" if rec.kind == "lymph_node" else rec.organ, check_rules=False)
    auto_assign_targets(study)
    study.engine = {"name": "classical", "settings": {}}
    return study


class _Tables(HTMLParser):
    """Tables by id (rows of cell texts, with each cell's class) and every <img>."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[tuple[str, str]]]] = {}
        self.images: list[dict] = []
        self._table = None
        self._cell = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id", f"t{len(self.tables)}")
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = [a.get("class", ""), ""]
        elif tag == "img":
            self.images.append(a)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append((self._cell[1].strip(), self._cell[0]))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data


def _png_array(src: str) -> np.ndarray:
    from matplotlib.image import imread

    assert src.startswith("data:image/png;base64,")
    raw = base64.b64decode(src.split(",", 1)[1])
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    return imread(io.BytesIO(raw), format="png")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from napari_lesionlocator.report import write_report

    study = sample_review()
    study.set_review(6, study.names[2], "unverified")  # a target still to check at follow-up 2
    study.set_candidates(study.names[2], [{"centroid_mm": [0.0, 0.0, 0.0], "box": [0, 1, 0, 1, 0, 1], "score": 0.1}])
    out = write_report(study, tmp_path_factory.mktemp("report") / "case0.html")
    parser = _Tables()
    parser.feed(out.read_text(encoding="utf-8"))
    return study, out, parser


def test_report_holds_study_table_and_response(report) -> None:
    study, out, parsed = report
    text = out.read_text()
    assert "http://" not in text and "https://" not in text  # self-contained
    assert "candidates the engine proposed and nobody has reviewed: 1 at case0_tp2" in text
    rows = parsed.tables["study"][1:]
    assert [r[1][0].split()[0] for r in rows] == study.names
    assert [r[2][0] for r in rows] == ["2024-01-15", "2024-04-16", "2024-07-18"]
    resp = {r[0][0]: r for r in parsed.tables["response"][1:]}
    fu1, fu2 = resp[study.names[1]], resp[study.names[2]]
    cell = {name: i for i, (name, _) in enumerate(parsed.tables["response"][0])}
    assert fu1[cell["response"]][0] == "PD" and fu1[cell["reason"]][0] == "new lesion 7"
    assert fu1[cell["new lesions"]][0] == "7" and "PD" in fu1[cell["response"]][1]
    assert fu1[cell["sum (mm)"]][0] == "106.2" and fu1[cell["vs baseline"]][0] == "+3.9 %"
    assert fu2[cell["response"]][0].startswith("SD (provisional")
    assert fu2[cell["reason"]][0].startswith("+3 % from baseline")
    lesions = parsed.tables["lesions"][2:]
    assert [int(r[1][0]) for r in lesions] == [1, 2, 3, 4, 5, 6, 7]
    node = lesions[3]
    assert node[3][0] == "lymph node" and node[4][0] == "non-target"
    assert node[-1][0] == "disappeared" and lesions[6][5 + 4 + 3][0] == "new"  # lesion 7 at follow-up 1
    assert lesions[1][4][0] == "target" and float(lesions[1][6][0]) == pytest.approx(30.4, abs=0.05)
    link = text.split("id='review-csv'")[1].split("href='")[1].split("'")[0]
    csv_text = base64.b64decode(link.split(",", 1)[1]).decode()
    assert csv_text.splitlines()[0].startswith("lesion_id,name,site,role,timepoint")
    assert len(csv_text.splitlines()) == 1 + 7 * 3
    prov = parsed.tables["provenance"][1:]
    assert len(prov) == sum(len(study.observations(n)) for n in study.names)
    assert all(r[2][0] == "imported" for r in prov)


def test_report_images_plot_and_key_slices(report, tmp_path) -> None:
    study, out, parsed = report
    plot = [i for i in parsed.images if i.get("id") == "size-plot"]
    assert len(plot) == 1 and _png_array(plot[0]["src"]).shape[1] > 800
    slices = [i for i in parsed.images if i.get("class") == "key-slice"]
    # every lesion at every timepoint, except lesion 7 at the baseline (before it existed)
    assert {(int(i["data-lesion"]), i["data-timepoint"]) for i in slices} == {
        (lid, n) for lid in range(1, 8) for n in study.names} - {(7, study.names[0])}
    for img in slices:
        arr = _png_array(img["src"])[..., :3]
        lid, name = int(img["data-lesion"]), img["data-timepoint"]
        colour = np.asarray(lesion_rgb(lid))
        outline = np.all(np.abs(arr - colour) < 0.06, axis=-1).sum()
        long_axis = np.all(np.abs(arr - np.array([1.0, 42 / 255, 42 / 255])) < 0.06, axis=-1).sum()
        if study.table_status(lid, name) == "disappeared":
            assert outline < 5 and long_axis < 5  # the place it was, nothing drawn
        else:
            assert outline > 40, (lid, name, outline)  # the mask outline in the lesion's colour
            assert long_axis > 10, (lid, name, long_axis)  # the RECIST long axis (red)
    # keep one to look at
    target = next(i for i in slices if i["data-lesion"] == "2" and i["data-timepoint"] == study.names[2])
    (tmp_path / "key_slice.png").write_bytes(base64.b64decode(target["src"].split(",", 1)[1]))


def test_report_without_targets_says_so(tmp_path) -> None:
    from napari_lesionlocator.core.geometry import Geometry
    from napari_lesionlocator.core.image import Image
    from napari_lesionlocator.core.study import Study, Timepoint
    from napari_lesionlocator.report import build_report

    g = Geometry((4, 20, 20), (2.0, 1.0, 1.0))
    study = Study([Timepoint(Image(np.zeros(g.shape, np.float32), g, name="only", acquisition_date="2024-01-01"))])
    text = build_report(study)
    assert "No RECIST assessment" in text and "<table id='lesions'>" in text
