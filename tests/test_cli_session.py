"""``lesionlocator session`` and ``lesionlocator report`` on a saved review (exit codes, messages, re-pointing)."""

from __future__ import annotations

import json

import pytest

from napari_lesionlocator.cli import main


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from napari_lesionlocator.io.session import save_session
    from test_report import sample_review

    root = tmp_path_factory.mktemp("cli_session")
    study = sample_review(root / "scans")
    study.set_review(6, study.names[2], "unverified")
    save_session(study, root / "review")
    return root, study


def test_session_validates_and_summarises(saved, capsys) -> None:
    root, study = saved
    assert main(["session", str(root / "review")]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and "patient case0: 3 timepoint(s), 7 lesion(s), next lesion id 8" in out
    assert "unverified: 1 (6@case0_tp2)" in out
    assert f"{study.names[1]}: sum 106.2 mm, PD: new lesion 7" in out
    assert "SD (provisional)" in out and "disappeared" in out
    assert main(["session", str(root / "review"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [t["status"] for t in doc["timepoints"]] == ["ok", "ok", "ok"]
    assert doc["recist"]["timepoints"][1]["response"] == "PD" and doc["next_id"] == 8
    csv_path = root / "review.csv"
    assert main(["session", str(root / "review"), "--csv", str(csv_path), "--json"]) == 0
    capsys.readouterr()
    import csv

    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 21 and rows[0]["source"] == "imported" and rows[0]["user"]
    node = [r for r in rows if r["lesion_id"] == "4"]
    assert [r["status"] for r in node] == ["present", "present", "disappeared"] and node[2]["recist_mm"] == "0"
    assert float(node[0]["recist_mm"]) == pytest.approx(14.78, abs=0.01)  # the short axis for a node
    assert main(["session", str(root / "review"), "--csv", str(csv_path)]) == 3


def test_moved_images_exit_2_naming_the_file_then_repoint(saved, capsys, tmp_path) -> None:
    import shutil

    root, study = saved
    review = tmp_path / "review"
    shutil.copytree(root / "review", review)
    scans = tmp_path / "scans"
    shutil.copytree(root / "scans", scans)
    from napari_lesionlocator.io.session import repoint_session

    repoint_session(review, relocate={n: str(scans / f"{n}.nii.gz") for n in study.names})  # its own scans
    moved = tmp_path / "moved"
    scans.rename(moved)
    assert main(["session", str(review)]) == 2
    err = capsys.readouterr().err
    assert f"{scans / (study.names[0] + '.nii.gz')} not found (moved or deleted)" in err and "--relocate" in err
    assert main(["session", str(review), "--relocate", f"{study.names[0]}=x"]) == 2
    capsys.readouterr()
    assert main(["session", str(review), "--search", str(moved), "--save"]) == 0
    assert "re-pointed" in capsys.readouterr().err
    assert main(["session", str(review)]) == 0
    capsys.readouterr()
    assert main(["session", str(review), "--relocate", "nonsense"]) == 2
    assert "TIMEPOINT=NEW_PATH" in capsys.readouterr().err


def test_report_command(saved, capsys, tmp_path) -> None:
    root, _ = saved
    assert main(["report", str(root / "review"), "-o", str(tmp_path / "out")]) == 0
    path = tmp_path / "out" / "report.html"
    assert capsys.readouterr().out.strip() == str(path)
    text = path.read_text()
    assert "<table id='response'>" in text and "new lesion 7" in text and "key-slice" in text
    assert main(["report", str(root / "review"), "-o", str(path)]) == 3
    assert "already exists" in capsys.readouterr().err
    assert main(["report", str(root / "review"), "-o", str(path), "--overwrite", "--title", "Case 0"]) == 0
    assert "<title>Case 0</title>" in path.read_text()
    assert main(["report", str(tmp_path / "missing"), "-o", str(tmp_path / "x.html")]) == 2
    assert "session folder not found" in capsys.readouterr().err


def test_session_recoveries_lists_autosaves(saved, capsys, tmp_path, monkeypatch) -> None:
    from napari_lesionlocator.io.session import autosave, load_session

    root, _ = saved
    monkeypatch.setenv("LESIONLOCATOR_RECOVERY", str(tmp_path / "rec"))
    assert main(["session", "--recoveries"]) == 0
    assert "0 autosaved review(s)" in capsys.readouterr().out
    folder = autosave(load_session(root / "review"))
    assert main(["session", "--recoveries"]) == 0
    out = capsys.readouterr().out
    assert "1 autosaved review(s)" in out and str(folder) in out and "case0: 3 timepoint(s), 7 lesion(s)" in out
    assert main(["session"]) == 2
    assert "give a SESSION_DIR" in capsys.readouterr().err
