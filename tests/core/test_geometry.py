"""Geometry: index <-> world round trips, ITK conversion against SimpleITK itself, grids, crops."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_lesionlocator.core.errors import InputImageError
from napari_lesionlocator.core.geometry import Geometry, GeometryMismatchError


def _rotation(angles: tuple[float, float, float]) -> np.ndarray:
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


angle = st.floats(-np.pi, np.pi, allow_nan=False)
flips = st.tuples(*[st.sampled_from([1.0, -1.0])] * 3)
spacing = st.tuples(*[st.floats(0.1, 8.0)] * 3)
origin = st.tuples(*[st.floats(-500.0, 500.0)] * 3)
shape = st.tuples(*[st.integers(1, 600)] * 3)


@st.composite
def geometries(draw) -> Geometry:
    d = _rotation(draw(st.tuples(angle, angle, angle))) @ np.diag(draw(flips))
    return Geometry(draw(shape), draw(spacing), draw(origin), tuple(d.reshape(-1)))


@settings(max_examples=150, deadline=None)
@given(geometries(), st.lists(st.tuples(*[st.floats(-50, 650)] * 3), min_size=1, max_size=8))
def test_index_world_round_trip(geom: Geometry, points) -> None:
    idx = np.asarray(points, dtype=float)
    world = geom.index_to_world(idx)
    np.testing.assert_allclose(geom.world_to_index(world), idx, atol=1e-8)
    # The homogeneous matrix says the same thing.
    homog = np.c_[idx, np.ones(len(idx))] @ geom.index_to_world_matrix.T
    np.testing.assert_allclose(homog[:, :3], world, atol=1e-8)


@settings(max_examples=100, deadline=None)
@given(geometries())
def test_unit_steps_have_spacing_length_along_direction_columns(geom: Geometry) -> None:
    o = geom.index_to_world(np.zeros(3))
    np.testing.assert_allclose(o, geom.origin, atol=1e-9)
    for axis in range(3):
        step = np.zeros(3)
        step[axis] = 1
        delta = geom.index_to_world(step) - o
        assert np.linalg.norm(delta) == pytest.approx(geom.spacing[axis], rel=1e-9)
        np.testing.assert_allclose(delta / geom.spacing[axis], geom.direction_matrix[:, axis], atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(geometries(), st.tuples(*[st.integers(0, 599)] * 3))
def test_from_itk_matches_simpleitk_transform(geom: Geometry, index) -> None:
    sitk = pytest.importorskip("SimpleITK")
    itk = geom.to_itk()
    img = sitk.Image([2, 2, 2], sitk.sitkUInt8)
    img.SetSpacing(itk["spacing"])
    img.SetOrigin(itk["origin"])
    img.SetDirection(itk["direction"])
    back = Geometry.from_itk(itk["size"], img.GetSpacing(), img.GetOrigin(), img.GetDirection())
    assert back.same_grid(geom, origin_tol_mm=1e-6, direction_tol=1e-9)
    assert back.shape == geom.shape
    # Our world (z, y, x) is ITK's physical point (x, y, z) reversed; our index likewise.
    zyx = np.asarray(index, dtype=float)
    expected_xyz = img.TransformContinuousIndexToPhysicalPoint(tuple(zyx[::-1]))
    np.testing.assert_allclose(geom.index_to_world(zyx), np.asarray(expected_xyz)[::-1], atol=1e-6)
    back_idx = img.TransformPhysicalPointToContinuousIndex(tuple(geom.index_to_world(zyx)[::-1]))
    np.testing.assert_allclose(np.asarray(back_idx)[::-1], zyx, atol=1e-6)


def test_from_itk_by_hand_for_a_flipped_anisotropic_grid() -> None:
    # ITK: x axis points to -x (flip), y and z unchanged; spacing x=0.5, y=0.7, z=3.
    g = Geometry.from_itk((10, 20, 30), (0.5, 0.7, 3.0), (1.0, 2.0, 3.0), (-1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert g.shape == (30, 20, 10)
    assert g.spacing == (3.0, 0.7, 0.5)
    assert g.origin == (3.0, 2.0, 1.0)
    # Voxel (z=1, y=1, x=1) -> x = 1 - 0.5, y = 2 + 0.7, z = 3 + 3.
    np.testing.assert_allclose(g.index_to_world((1, 1, 1)), (6.0, 2.7, 0.5))


def test_direction_must_be_orthonormal() -> None:
    with pytest.raises(ValueError, match="orthonormal"):
        Geometry((2, 2, 2), direction=(1, 0.5, 0, 0, 1, 0, 0, 0, 1))  # shear with det 1
    with pytest.raises(ValueError, match="shape"):
        Geometry((2, 0, 2))
    with pytest.raises(ValueError, match="spacing"):
        Geometry((2, 2, 2), spacing=(1, -1, 1))
    with pytest.raises(ValueError, match="finite"):
        Geometry((2, 2, 2), origin=(0, np.nan, 0))


def test_same_grid_each_branch() -> None:
    base = Geometry((10, 20, 30), (2.0, 0.5, 0.5), (1.0, 2.0, 3.0))
    assert base.same_grid(Geometry((10, 20, 30), (2.0, 0.5, 0.5), (1.0, 2.0, 3.0)))
    # within tolerance
    assert base.same_grid(Geometry((10, 20, 30), (2.0 * (1 + 5e-5), 0.5, 0.5), (1.0 + 5e-4, 2.0, 3.0)))
    cases = {
        "shape": Geometry((10, 20, 31), (2.0, 0.5, 0.5), (1.0, 2.0, 3.0)),
        "spacing": Geometry((10, 20, 30), (2.0, 0.5, 0.51), (1.0, 2.0, 3.0)),
        "origin": Geometry((10, 20, 30), (2.0, 0.5, 0.5), (1.0, 2.0, 3.01)),
        "direction": Geometry((10, 20, 30), (2.0, 0.5, 0.5), (1.0, 2.0, 3.0), (1, 0, 0, 0, 0, 1, 0, 1, 0)),
    }
    for what, other in cases.items():
        assert not base.same_grid(other), what
        diffs = base.grid_differences(other)
        assert len(diffs) == 1 and diffs[0].startswith(what), diffs
        with pytest.raises(GeometryMismatchError, match=what) as info:
            base.require_same_grid(other, what="labels and image")
        msg = str(info.value)
        assert "labels and image" in msg and base.describe() in msg and other.describe() in msg
        assert isinstance(info.value, InputImageError) and isinstance(info.value, ValueError)
    # Custom tolerance widens the origin check.
    assert base.same_grid(cases["origin"], origin_tol_mm=0.02)


def test_crop_keeps_world_positions() -> None:
    d = _rotation((0.3, -0.2, 1.1)) @ np.diag([1, -1, 1])
    g = Geometry((40, 50, 60), (2.5, 0.7, 0.9), (-10, 20, 5), tuple(d.reshape(-1)))
    start, stop = (3, 10, 20), (13, 40, 21)
    c = g.crop(start, stop)
    assert c.shape == (10, 30, 1)
    assert c.spacing == g.spacing and c.direction == g.direction
    rng = np.random.default_rng(0)
    local = rng.integers(0, c.shape, size=(20, 3))
    np.testing.assert_allclose(c.index_to_world(local), g.index_to_world(local + np.asarray(start)), atol=1e-9)
    # Padding crops (outside the grid) stay on the same lattice.
    p = g.crop((-2, -2, -2), (1, 1, 1))
    np.testing.assert_allclose(p.index_to_world((2, 2, 2)), g.index_to_world((0, 0, 0)), atol=1e-9)
    with pytest.raises(ValueError, match="empty"):
        g.crop((5, 5, 5), (5, 6, 6))


def test_world_to_nearest_index_and_contains() -> None:
    g = Geometry((4, 5, 6), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    assert g.world_to_nearest_index((2.9, 1.49, 1.51)).tolist() == [1, 1, 2]
    assert g.contains_index((0, 0, 0)) and g.contains_index((3.4, 4.4, 5.4))
    assert not g.contains_index((3.5, 0, 0)) and not g.contains_index((-0.6, 0, 0))


def test_metadata_round_trip_and_with_spacing() -> None:
    d = _rotation((0.1, 0.2, 0.3))
    g = Geometry((7, 8, 9), (3.0, 0.8, 0.8), (1, 2, 3), tuple(d.reshape(-1)))
    assert Geometry.from_metadata(g.to_metadata()) == g
    h = g.with_spacing((1.0, 0.8, 0.8))
    assert h.shape == (21, 8, 9)
    # The outer corner of the grid is unchanged.
    np.testing.assert_allclose(h.index_to_world((-0.5, -0.5, -0.5)), g.index_to_world((-0.5, -0.5, -0.5)), atol=1e-9)
    assert g.voxel_volume_mm3 == pytest.approx(3.0 * 0.8 * 0.8)
    assert g.extent_mm == pytest.approx((21.0, 6.4, 7.2))


def test_napari_transform_axis_aligned_uses_scale_translate_only() -> None:
    g = Geometry((4, 5, 6), (2.0, 1.0, 0.5), (10.0, 20.0, 30.0))
    t = g.napari_transform()
    assert set(t) == {"scale", "translate"}
    assert t["scale"] == (2.0, 1.0, 0.5) and t["translate"] == (10.0, 20.0, 30.0)
