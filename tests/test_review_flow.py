"""The reader's whole flow on the sample study, headless: segment, track, verify, accept the new
lesion the engine proposes at follow-up 1 (which makes it PD), save, restore, report."""

from __future__ import annotations

import numpy as np
import pytest

from napari_lesionlocator import api
from napari_lesionlocator.core.prompts import BoxPrompt, prompts_from_label_map
from napari_lesionlocator.core.recist import auto_assign_targets, recist_for_study
from napari_lesionlocator.core.study import Study
from napari_lesionlocator.engines.base import EngineSettings, create_engine
from napari_lesionlocator.io.session import load_session, save_session
from napari_lesionlocator.report import build_report
from napari_lesionlocator.sample.synthetic import make_synthetic_study


@pytest.mark.slow
def test_verify_accept_new_lesion_save_restore_report(tmp_path) -> None:
    syn = make_synthetic_study(seed=0, size="small")
    base, fu1 = syn.images[0], syn.images[1]
    engine = create_engine("classical", EngineSettings())
    prompts = prompts_from_label_map(syn.labels[0].array, "box")
    seg = api.run_sync(api.iter_segment(engine, base, prompts))
    track = api.run_sync(api.iter_track_series(engine, base, seg.labels, [fu1])).results[0]
    study = Study.from_results(syn.images[:2], [seg, track], patient_id=syn.case, prompts=prompts,
                               engine="classical")
    for rec in syn.lesions:
        if rec.id in study.lesion_ids:
            study.set_lesion_info(rec.id, site="lymph node" if rec.kind == "lymph_node" else rec.organ,
                                  check_rules=False)
    auto_assign_targets(study)
    b, f = study.names
    s = recist_for_study(study)
    assert s.timepoints[1].provisional and not s.timepoints[1].new_lesion_ids  # tracked, nothing verified yet
    # the engine's candidates: lesion 7 (new at follow-up 1) is among the top three
    gt7 = syn.labels[1].mask(7)
    def on_lesion_7(c) -> bool:
        box = tuple(slice(c["box"][2 * a], c["box"][2 * a + 1]) for a in range(3))
        return bool(gt7[box].any())

    hits = [c for c in study.candidates(f)[:3] if on_lesion_7(c)]
    assert hits, f"lesion 7 is not among the top three candidates: {study.candidates(f)[:3]}"
    hit = hits[0]
    # the reader verifies every tracked lesion, accepts the candidate (segmented from its box), dismisses the rest
    for lid, name in study.unverified():
        study.accept(lid, name)
    new = api.run_sync(api.iter_segment(engine, fu1, [BoxPrompt(study.next_lesion_id(), hit["box"])]))
    lid = study.accept_candidate(f, hit["index"], next(iter(new.lesions.values())), site="liver",
                                 prompts=[BoxPrompt(study.next_lesion_id(), hit["box"])])
    for c in study.candidates(f):
        study.dismiss_candidate(f, c["index"])
    assert lid == 7  # the next free id: 1-6 are the baseline lesions
    dice = 2 * (study.mask(lid, f).to_full() & gt7).sum() / (study.mask(lid, f).voxels + gt7.sum())
    assert dice > 0.6
    s = recist_for_study(study)
    fu = s.timepoints[1]
    assert fu.response == "PD" and fu.new_lesion_ids == (7,) and fu.reason.startswith("new lesion 7")
    assert not fu.provisional
    # save, "quit", restore: voxel-equal masks and the same verdicts
    save_session(study, tmp_path / "review")
    back = load_session(tmp_path / "review")
    for name in back.names:
        for i, obs in study.observations(name).items():
            np.testing.assert_array_equal(back.mask(i, name).to_full(), obs.mask.to_full())
            assert back.observation(i, name).review == obs.review
    assert recist_for_study(back).timepoints[1].response == "PD" and back.unverified() == []
    html = build_report(back)
    assert "new lesion 7" in html and "(provisional" not in html
