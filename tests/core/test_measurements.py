"""Lesion measurements against analytic ground truth (volumes, RECIST axes in physical mm)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_lesionlocator.core.geometry import Geometry, GeometryMismatchError
from napari_lesionlocator.core.image import Image, LabelMap
from napari_lesionlocator.core.measurements import axial_diameters, measure_lesions, measure_mask


def _rot_z(deg: float) -> tuple[float, ...]:
    """Direction (z, y, x order) rotating the in-plane (y, x) axes by ``deg`` around the z axis."""
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return (1.0, 0, 0, 0, c, -s, 0, s, c)


def _ellipse_mask(geom: Geometry, center_mm, a_mm: float, b_mm: float, angle_deg: float, z_half_mm: float):
    """Voxels whose centre lies in an elliptic cylinder defined in world mm (axes in the y-x plane)."""
    idx = np.indices(geom.shape).reshape(3, -1).T
    w = geom.index_to_world(idx) - np.asarray(center_mm)
    t = math.radians(angle_deg)
    u = np.array([0.0, math.sin(t), math.cos(t)])  # long axis direction in world (z, y, x)
    v = np.array([0.0, math.cos(t), -math.sin(t)])
    inside = ((w @ u) / a_mm) ** 2 + ((w @ v) / b_mm) ** 2 <= 1.0
    inside &= np.abs(w[:, 0]) <= z_half_mm
    return inside.reshape(geom.shape)


def test_line_of_voxels_measures_exactly_n_times_spacing():
    geom = Geometry((3, 10, 20), spacing=(2.5, 0.6, 0.8))
    mask = np.zeros(geom.shape, bool)
    mask[1, 4, 3:15] = True  # 12 voxels along x, 1 voxel along y
    d = axial_diameters(mask, geom)
    assert d.slice_index == 1
    assert d.long_axis_mm == pytest.approx(12 * 0.8)
    assert d.short_axis_mm == pytest.approx(0.6)
    # Endpoints lie on the outer voxel edges along x, in world mm (z, y, x).
    xs = sorted(p[2] for p in d.long_axis_endpoints_mm)
    assert xs == pytest.approx([2.5 * 0.8, 14.5 * 0.8])


def test_single_voxel_is_measured_not_an_error():
    geom = Geometry((2, 3, 3), spacing=(1.0, 2.0, 2.0))
    mask = np.zeros(geom.shape, bool)
    mask[0, 1, 1] = True
    d = axial_diameters(mask, geom)
    assert d.long_axis_mm == pytest.approx(2.0)  # marching-squares diamond across the voxel
    assert d.short_axis_mm == pytest.approx(2.0)


@pytest.mark.parametrize("angle", [0.0, 30.0, 90.0, 135.0])
def test_rotated_ellipse_with_anisotropic_pixels(angle):
    geom = Geometry((5, 90, 70), spacing=(3.0, 0.7, 0.9))
    center = geom.index_to_world([2, 45, 35])
    mask = _ellipse_mask(geom, center, 20.0, 10.0, angle, z_half_mm=4.0)
    d = axial_diameters(mask, geom)
    # Voxel-centre sampling + sub-voxel contour: within about one pixel diagonal of the truth.
    assert d.long_axis_mm == pytest.approx(40.0, abs=1.2)
    assert d.short_axis_mm == pytest.approx(20.0, abs=1.2)
    # The long axis points along the ellipse's major axis.
    p, q = (np.asarray(e) for e in d.long_axis_endpoints_mm)
    u = (q - p) / np.linalg.norm(q - p)
    t = math.radians(angle)
    assert abs(u @ np.array([0.0, math.sin(t), math.cos(t)])) > math.cos(math.radians(7))
    # The short axis is perpendicular to it.
    a, b = (np.asarray(e) for e in d.short_axis_endpoints_mm)
    assert abs((b - a) @ u) < 1e-6


def test_rotated_direction_gives_the_same_physical_sizes():
    """The same physical ellipse sampled on a grid rotated by 25 deg in-plane measures the same."""
    straight = Geometry((3, 80, 80), spacing=(2.0, 0.8, 0.8))
    rotated = Geometry((3, 80, 80), spacing=(2.0, 0.8, 0.8), direction=_rot_z(25.0))
    sizes = []
    for geom in (straight, rotated):
        center = geom.index_to_world([1, 40, 40])
        mask = _ellipse_mask(geom, center, 18.0, 7.0, 10.0, z_half_mm=1.0)
        d = axial_diameters(mask, geom)
        sizes.append((d.long_axis_mm, d.short_axis_mm))
        # End points are in world space: the long axis centre is the ellipse centre.
        mid = np.mean(np.asarray(d.long_axis_endpoints_mm), axis=0)
        assert np.allclose(mid, center, atol=0.8)
    assert sizes[0][0] == pytest.approx(36.0, abs=1.0) and sizes[1][0] == pytest.approx(36.0, abs=1.0)
    assert sizes[0][1] == pytest.approx(14.0, abs=1.0) and sizes[1][1] == pytest.approx(14.0, abs=1.0)


def test_slice_with_longest_diameter_is_chosen():
    geom = Geometry((7, 40, 40), spacing=(1.0, 1.0, 1.0))
    mask = np.zeros(geom.shape, bool)
    yy, xx = np.mgrid[:40, :40]
    for z, r in enumerate([3, 5, 8, 12, 9, 4, 2]):
        mask[z] = (yy - 20) ** 2 + (xx - 20) ** 2 <= r * r
    d = axial_diameters(mask, geom)
    assert d.slice_index == 3
    assert d.long_axis_mm == pytest.approx(25.0, abs=1.0)


def test_measure_lesions_volume_hu_centroid_and_absent_rows():
    geom = Geometry((6, 12, 14), spacing=(2.0, 0.5, 0.75), origin=(-10.0, 5.0, 7.0))
    rng = np.random.default_rng(0)
    ct = rng.normal(40, 15, geom.shape).astype(np.float32)
    image = Image(ct, geom, name="scan", acquisition_date="2024-01-02")
    lab = np.zeros(geom.shape, np.uint16)
    lab[1:4, 2:6, 3:9] = 3  # 3 x 4 x 6 box
    lab[5, 10, 12] = 7
    labels = LabelMap(lab, geom)
    rows = measure_lesions(image, labels, timepoint=2, lesion_ids=[3, 7, 9], names={3: "liver 1"})
    assert [r.lesion_id for r in rows] == [3, 7, 9]
    r3, r7, r9 = rows
    assert r3.present and r3.timepoint == 2 and r3.name == "liver 1" and r3.date == "2024-01-02"
    assert r3.voxel_count == 72
    assert r3.volume_ml == pytest.approx(72 * 2.0 * 0.5 * 0.75 / 1000)
    m = lab == 3
    assert r3.mean_hu == pytest.approx(float(ct[m].astype(np.float64).mean()))
    assert r3.std_hu == pytest.approx(float(ct[m].astype(np.float64).std()))
    expected_centroid = geom.index_to_world([2.0, 3.5, 5.5])
    assert np.allclose(r3.centroid_mm, expected_centroid)
    assert r3.axial_slice in (1, 2, 3)  # all three slices are identical: first one wins
    assert r3.axial_slice == 1
    assert r3.image == "scan"
    assert r7.present and r7.voxel_count == 1 and r7.axial_slice == 5
    assert not r9.present and r9.volume_ml == 0 and r9.long_axis_mm == 0 and math.isnan(r9.mean_hu)
    assert r9.centroid_mm is None
    # The cropped fast path equals measuring on the full grid.
    full = measure_mask(m, geom, lesion_id=3, image=image, timepoint=2, name="liver 1")
    assert full.long_axis_mm == pytest.approx(r3.long_axis_mm)
    assert full.short_axis_mm == pytest.approx(r3.short_axis_mm)
    assert np.allclose(full.long_axis_endpoints_mm, r3.long_axis_endpoints_mm)
    assert full.axial_slice == r3.axial_slice
    d = r3.to_dict()
    assert d["centroid_mm"] == pytest.approx(list(expected_centroid))


def test_default_ids_and_empty_label_map():
    geom = Geometry((2, 4, 4))
    labels = LabelMap.empty(geom)
    assert measure_lesions(None, labels) == []
    labels.array[0, 1, 1] = 2
    rows = measure_lesions(None, labels)
    assert [r.lesion_id for r in rows] == [2]
    assert math.isnan(rows[0].mean_hu)


def test_grid_mismatch_is_refused():
    image = Image(np.zeros((2, 4, 4), np.float32), Geometry((2, 4, 4), spacing=(1, 1, 1)))
    labels = LabelMap.empty(Geometry((2, 4, 4), spacing=(1, 1, 2)))
    with pytest.raises(GeometryMismatchError, match="spacing"):
        measure_lesions(image, labels)


@pytest.mark.parametrize(
    ("case", "max2d_slice_mm", "voxel_volume_mm3", "tol_mm"),
    # PyRadiomics baselines (data/baseline/baseline_shape.csv, original_shape_Maximum2DDiameterSlice and
    # original_shape_VoxelVolume). Its diameter comes from 3D marching-cubes vertices per slice, ours from 2D
    # marching squares on the slice: equal on lung2, 1 % apart on lung1.
    [("lung1", 16.6273237626, 1361.1978149414062, 0.25), ("lung2", 55.8023479973, 48434.108762463955, 0.01)],
)
def test_real_ct_against_pyradiomics(real_data_dir, case, max2d_slice_mm, voxel_volume_mm3, tol_mm):
    from napari_lesionlocator.io.images import read_image, read_label_map

    folder = real_data_dir / "pyradiomics"
    image = read_image(folder / f"{case}_image.nrrd")
    labels = read_label_map(folder / f"{case}_label.nrrd", like=image)
    (row,) = measure_lesions(image, labels, lesion_ids=[1])
    assert row.volume_ml * 1000 == pytest.approx(voxel_volume_mm3, rel=1e-9)
    assert row.long_axis_mm == pytest.approx(max2d_slice_mm, abs=tol_mm)
    assert 0 < row.short_axis_mm <= row.long_axis_mm


def _chord_reference(hull: np.ndarray, u: np.ndarray, samples: int = 4001) -> float:
    """Brute force: perpendicular chord length of a convex polygon at many positions along u."""
    v = np.array([-u[1], u[0]])
    s, w = hull @ u, hull @ v
    best = 0.0
    for t in np.linspace(s.min(), s.max(), samples):
        hits = []
        for k in range(len(hull)):
            a, b = s[k], s[(k + 1) % len(hull)]
            if min(a, b) <= t <= max(a, b) and a != b:
                hits.append(w[k] + (t - a) / (b - a) * (w[(k + 1) % len(hull)] - w[k]))
        if len(hits) >= 2:
            best = max(best, max(hits) - min(hits))
    return best


def test_perpendicular_chord_matches_brute_force_on_random_polygons():
    from napari_lesionlocator.core.measurements import _hull_vertices, _perpendicular_chord

    rng = np.random.default_rng(3)
    for _ in range(20):
        hull = _hull_vertices(rng.normal(size=(40, 2)) * rng.uniform(0.5, 5, size=2))
        angle = rng.uniform(0, np.pi)
        u = np.array([np.cos(angle), np.sin(angle)])
        length, a, b = _perpendicular_chord(hull, u)
        assert length == pytest.approx(_chord_reference(hull, u), rel=2e-3, abs=1e-6)
        assert abs((b - a) @ u) < 1e-9 and np.linalg.norm(b - a) == pytest.approx(length)


def test_dice_hand_computed():
    from napari_lesionlocator.core.measurements import dice

    a = np.zeros((2, 2, 2), bool)
    b = np.zeros((2, 2, 2), bool)
    assert dice(a, b) == 1.0  # both empty: perfect agreement
    a[0, 0, 0] = a[0, 0, 1] = True
    assert dice(a, b) == 0.0
    b[0, 0, 1] = b[1, 1, 1] = True
    assert dice(a, b) == 0.5  # 2 * 1 / (2 + 2)
    assert dice(a.astype(np.uint8) * 7, b) == 0.5  # any non-zero value is foreground
