"""The realistic-size study (300 x 512 x 512 at 1.0 x 0.7 x 0.7 mm): slow, so marked ``slow``."""

from __future__ import annotations

import numpy as np
import pytest

from napari_lesionlocator.sample.synthetic import SIZES, make_synthetic_study


@pytest.mark.slow
def test_realistic_study_geometry_and_volumes():
    study = make_synthetic_study(seed=0, size="realistic")
    for k, (img, lab) in enumerate(zip(study.images, study.labels)):
        assert img.shape == SIZES["realistic"]["shapes"][k]
        assert np.allclose(img.geometry.spacing, (1.0, 0.7, 0.7))
        assert img.geometry.same_grid(lab.geometry)
    for r in study.lesions:
        for k in range(3):
            if r.scale[k] > 0:
                # Finer voxels: the ground truth matches the model volume within 3 %.
                assert r.volume_ml[k] == pytest.approx(r.nominal_volume_ml[k], rel=0.03)
                idx = np.argwhere(study.labels[k].array == r.id).astype(float).mean(axis=0)
                got = study.labels[k].geometry.index_to_world(idx)
                assert np.linalg.norm(got - np.asarray(r.centre_world[k])) < 0.5
            else:
                assert not r.present[k]
    assert study.timings_s["cpu_s"] < 120.0
