"""`make demo`'s headless pipeline end to end: files, geometry, ids, a vanished lesion, the lesion table."""

from __future__ import annotations

import json

import pytest

from napari_lesionlocator.core.measurements import dice
from napari_lesionlocator.demo import run_pipeline
from napari_lesionlocator.io import read_image
from napari_lesionlocator.io.images import read_label_map
from napari_lesionlocator.sample.synthetic import make_synthetic_study

pytestmark = pytest.mark.slow


def test_demo_pipeline_writes_masks_table_and_tracks_ids(tmp_path):
    label_paths = run_pipeline(tmp_path)
    study = make_synthetic_study(seed=0, size="small")
    assert len(label_paths) == len(study.images) == 3
    manifest = json.loads((tmp_path / "demo_manifest.json").read_text())
    for k, (entry, truth) in enumerate(zip(manifest, study.labels, strict=True)):
        image = read_image(entry["image"])
        labels = read_label_map(entry["labels"], like=image)  # same grid as its own scan, exactly
        assert image.geometry.same_grid(study.images[k].geometry)
        for lid in labels.ids:
            assert (tmp_path / "masks" / f"{entry['name']}_lesion_{lid}.nii.gz").exists()
        baseline_ids = set(study.labels[0].ids)
        # ids are the baseline's (tracking never invents or renumbers them), plus the new lesion the
        # scripted review accepted from the follow-up's candidates
        new_ids = set().union(*(set(lab.ids) for lab in study.labels[1:])) - baseline_ids
        assert set(labels.ids) <= baseline_ids | (new_ids if k else set())
        for lid in set(truth.ids) & set(labels.ids):
            assert dice(labels.mask(lid), truth.mask(lid)) > 0.6, (k, lid)
    final = read_label_map(manifest[2]["labels"])
    vanished = set(study.labels[0].ids) - set(study.labels[2].ids)
    assert vanished and not (vanished & set(final.ids))  # the disappearing lesion is reported lost
    table = json.loads((tmp_path / "lesion_table.json").read_text())
    assert table["recist"]["timepoints"][0]["response"] == "baseline"
    # the new lesion at follow-up 1 was found as a candidate and accepted: progression, as the truth says
    assert table["recist"]["timepoints"][1]["response"] == "PD"
    assert {row["lesion_id"] for row in table["lesions"]} == set(study.labels[0].ids) | new_ids
