"""The npe2 manifest, reader, writer and sample data, exercised through napari (not by calling our functions).

Run under a display: xvfb-run -a .venv/bin/pytest -p no:xvfb tests/gui
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_lesionlocator.core.geometry import Geometry
from napari_lesionlocator.core.image import Image, LabelMap
from napari_lesionlocator.core.windows import window_limits

napari = pytest.importorskip("napari")
npe2 = pytest.importorskip("npe2")

pytestmark = pytest.mark.gui
PLUGIN = "napari-lesionlocator"


def _rot(a: float, c: float) -> np.ndarray:
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ rx


ROTATED = Geometry((6, 9, 8), (2.5, 0.8, 0.7), (10.0, -20.0, 30.0), tuple(_rot(0.25, 0.6).reshape(-1)))
ALIGNED = Geometry((5, 7, 6), (3.0, 0.9, 0.75), (-40.0, 5.5, 12.25))


def _ct(geom: Geometry, seed: int = 0, name: str = "ct") -> Image:
    rng = np.random.default_rng(seed)
    return Image(rng.integers(-1000, 1500, geom.shape).astype(np.float32), geom, name=name)


def test_manifest_is_valid_and_complete() -> None:
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution(PLUGIN)
    manifest.validate_imports()  # every python_name resolves
    ids = {c.id for c in manifest.contributions.commands}
    assert all(i.startswith(f"{PLUGIN}.") for i in ids)
    assert {w.display_name for w in manifest.contributions.widgets} == {"Lesion prompts", "Timeline", "Lesion review",
                                                                         "Export", "Rate segmentations",
                                                                         "Lesion table"}
    assert {s.key for s in manifest.contributions.sample_data} == {"synthetic_study", "synthetic_study_truth"}
    reader = manifest.contributions.readers[0]
    assert reader.accepts_directories
    assert {"*.nii", "*.nii.gz", "*.nrrd", "*.mha", "*.mhd"} <= set(reader.filename_patterns)
    assert manifest.contributions.writers[0].layer_types == ["labels"]
    # No Qt/napari import at package import time: the manifest points into gui.* only.
    assert all(c.python_name.startswith("napari_lesionlocator.gui.") for c in manifest.contributions.commands)


@pytest.mark.parametrize("geom", [ALIGNED, ROTATED], ids=["aligned", "rotated"])
def test_reader_places_volume_in_world_space(make_napari_viewer, tmp_path, geom) -> None:
    from napari_lesionlocator.io.images import write_image

    image = _ct(geom)
    path = write_image(image, tmp_path / "scan.nii.gz")
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin=PLUGIN)
    assert len(layers) == 1
    layer = layers[0]
    np.testing.assert_array_equal(np.asarray(layer.data), image.array)
    assert Geometry.from_metadata(layer.metadata["geometry"]).same_grid(geom, origin_tol_mm=1e-4)
    assert layer.metadata["source"] == str(path)
    assert layer.contrast_limits == pytest.approx(window_limits("soft tissue"))
    # Every voxel lands where the geometry says, rotated or not (affine only when needed).
    for idx in ([0, 0, 0], [5, 4, 3], np.asarray(geom.shape) - 1):
        np.testing.assert_allclose(layer.data_to_world(idx), geom.index_to_world(idx), atol=1e-4)
    assert np.allclose(layer.affine.affine_matrix, np.eye(4)) == geom.is_axis_aligned


def test_reader_reads_a_dicom_folder_with_dates(make_napari_viewer, tmp_path) -> None:
    from napari_lesionlocator.io import write_dicom_series

    image = _ct(ROTATED)
    write_dicom_series(image, tmp_path / "dcm", series_description="CT chest", series_number=3,
                       acquisition_date="2024-02-29", prefix="ct")
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(tmp_path / "dcm"), plugin=PLUGIN)
    assert layer.metadata["acquisition_date"] == "2024-02-29"
    geom = Geometry.from_metadata(layer.metadata["geometry"])
    assert geom.same_grid(ROTATED, origin_tol_mm=1e-3, direction_tol=1e-5)
    np.testing.assert_array_equal(np.asarray(layer.data), image.array)


def test_reader_opens_a_folder_of_timepoints(make_napari_viewer, tmp_path) -> None:
    from napari_lesionlocator.io.images import write_image

    study = tmp_path / "study"
    write_image(_ct(ALIGNED, 1, "a"), study / "tp0.nii.gz")
    write_image(_ct(ROTATED, 2, "b"), study / "tp1.nrrd")
    (study / "notes.txt").write_text("ignored")
    viewer = make_napari_viewer()
    layers = viewer.open(str(study), plugin=PLUGIN)
    assert [layer.name for layer in layers] == ["tp0", "tp1"]
    assert [layer.visible for layer in layers] == [True, False]  # opaque CT layers would hide each other
    assert Geometry.from_metadata(layers[1].metadata["geometry"]).same_grid(ROTATED, origin_tol_mm=1e-4)


def test_get_reader_declines_what_it_cannot_read(tmp_path) -> None:
    from napari_lesionlocator.gui._reader import get_reader

    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "junk.nii.gz").write_bytes(b"\x00garbage" * 50)
    (tmp_path / "empty.nrrd").write_bytes(b"")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.txt").write_text("x")
    for name in ("notes.txt", "junk.nii.gz", "empty.nrrd", "folder", "missing.nii.gz"):
        assert get_reader(str(tmp_path / name)) is None, name
    assert get_reader([]) is None


def test_reader_error_is_clear(make_napari_viewer, tmp_path) -> None:
    """A file whose header looks fine but holds a 2D image: the error names the problem."""
    import SimpleITK as sitk

    path = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.Image(16, 16, sitk.sitkInt16), str(path))
    viewer = make_napari_viewer()
    with pytest.raises(Exception, match="2D|3D"):
        viewer.open(str(path), plugin=PLUGIN)
    assert len(viewer.layers) == 0


@pytest.mark.parametrize("geom", [ALIGNED, ROTATED], ids=["aligned", "rotated"])
def test_writer_round_trip_keeps_geometry(make_napari_viewer, tmp_path, geom) -> None:
    """Labels tied to an opened image -> saved through napari/npe2 -> re-read: same grid, same ids."""
    from napari_lesionlocator.io.images import read_label_map, write_image

    path = write_image(_ct(geom), tmp_path / "scan.nii.gz")
    viewer = make_napari_viewer()
    (image_layer,) = viewer.open(str(path), plugin=PLUGIN)
    from napari_lesionlocator.gui._session import AnnotationSession

    labels = AnnotationSession(viewer).labels_layer_for(image_layer)
    data = np.zeros(geom.shape, dtype=np.uint16)
    data[1:3, 2:5, 1:4] = 7
    data[4, 6, 5] = 300  # an id above 255 survives
    labels.data = data
    out = tmp_path / "out" / "lesions.nii.gz"
    written = npe2.write(str(out), [labels.as_layer_data_tuple()], plugin_name=PLUGIN)
    assert written == [str(out)]
    back = read_label_map(out)
    assert back.geometry.same_grid(geom, spacing_tol=1e-6, origin_tol_mm=1e-5, direction_tol=1e-6)
    np.testing.assert_array_equal(back.array, data)


def test_writer_uses_layer_transform_without_metadata(tmp_path) -> None:
    """A labels layer made by hand (no metadata): the grid comes from scale/translate/affine."""
    from napari.layers import Labels

    from napari_lesionlocator.io.images import read_label_map

    data = np.zeros(ROTATED.shape, dtype=np.uint8)
    data[2, 3, 4] = 1
    layer = Labels(data, **ROTATED.napari_transform())
    out = tmp_path / "plain"
    (written,) = npe2.write(str(out), [layer.as_layer_data_tuple()], plugin_name=PLUGIN)
    assert written.endswith("plain.nii.gz")
    back = read_label_map(written)
    assert back.geometry.same_grid(ROTATED, origin_tol_mm=1e-4, direction_tol=1e-6)
    np.testing.assert_array_equal(back.array, data)


def _save_all(viewer, folder, **kw):
    """napari's File > Save All Layers path: ``save_layers`` over every layer of the viewer."""
    from napari.plugins.io import save_layers

    return save_layers(str(folder), list(viewer.layers), **kw)


def test_save_all_layers_writes_a_folder_in_the_source_geometry(make_napari_viewer, tmp_path) -> None:
    """Two scans (axis-aligned and rotated, opened through the reader), their lesion maps and a prompt
    layer saved through napari's save_layers: one file per layer, each scan and map on its exact
    source grid; the points as world mm. Without a prompt layer napari picks this writer by itself."""
    from napari_lesionlocator.gui._session import AnnotationSession
    from napari_lesionlocator.io.images import read_image, read_label_map, write_image

    rng = np.random.default_rng(3)
    viewer = make_napari_viewer()
    session = AnnotationSession(viewer)
    truth = {}
    for name, geom in (("baseline", ALIGNED), ("followup", ROTATED)):
        ct = _ct(geom, seed=int(rng.integers(1 << 30)), name=name)
        (image_layer,) = viewer.open(str(write_image(ct, tmp_path / f"{name}.nii.gz")), plugin=PLUGIN)
        labels = session.labels_layer_for(image_layer)
        data = (rng.random(geom.shape) < 0.2).astype(np.uint16) * int(rng.integers(1, 400))
        labels.data = data
        truth[image_layer.name] = (ct, geom)
        truth[labels.name] = (data, geom)
    names = [layer.name for layer in viewer.layers]

    written = _save_all(viewer, tmp_path / "all")  # no plugin named, no prompt layer: ours is chosen
    assert sorted(written) == sorted(str(tmp_path / "all" / f"{n.replace(' ', '_')}.nii.gz") for n in names)
    for n in names:
        path = tmp_path / "all" / f"{n.replace(' ', '_')}.nii.gz"
        value, geom = truth[n]
        back = read_image(path) if isinstance(value, Image) else read_label_map(path)
        assert back.geometry.same_grid(geom, spacing_tol=1e-6, origin_tol_mm=1e-5, direction_tol=1e-6), n
        np.testing.assert_array_equal(back.array, value.array if isinstance(value, Image) else value)

    # with a prompt layer (points in world mm on the rotated scan): napari's builtin folder writer
    # is compatible too, so the dialog lists both; ours is the one named here
    voxels = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    points = viewer.add_points(voxels, name="followup points", **ROTATED.napari_transform())
    written = _save_all(viewer, tmp_path / "with_prompts", plugin=PLUGIN)
    assert len(written) == len(viewer.layers)
    rows = (tmp_path / "with_prompts" / "followup_points.csv").read_text().splitlines()
    assert rows[0].split(",")[:4] == ["index", "z_mm", "y_mm", "x_mm"] and len(rows) == 3
    got = np.array([[float(c) for c in r.split(",")[1:4]] for r in rows[1:]])
    np.testing.assert_allclose(got, [ROTATED.index_to_world(v) for v in voxels], atol=1e-3)  # SimpleITK's mm
    np.testing.assert_allclose(got, [points.data_to_world(v) for v in voxels], atol=1e-3)  # napari's own
    back = read_image(tmp_path / "with_prompts" / "followup.nii.gz")
    assert back.geometry.same_grid(ROTATED, spacing_tol=1e-6, origin_tol_mm=1e-5, direction_tol=1e-6)


def test_save_all_layers_refuses_what_it_cannot_write_in_source_geometry(make_napari_viewer, tmp_path) -> None:
    """A scan without a known grid (napari's default 1 mm at the origin) or a file already in the folder:
    a clear error naming the layer, and nothing written."""
    from napari_lesionlocator.core.errors import InputImageError, OutputExistsError
    from napari_lesionlocator.io.images import write_image

    viewer = make_napari_viewer()
    viewer.open(str(write_image(_ct(ALIGNED), tmp_path / "scan.nii.gz")), plugin=PLUGIN)
    viewer.add_image(np.zeros((4, 5, 6), np.float32), name="unknown grid")  # as another reader would give it
    with pytest.raises(InputImageError, match="'unknown grid'.*1 mm voxels"):
        _save_all(viewer, tmp_path / "out", plugin=PLUGIN)
    assert not (tmp_path / "out").exists()

    viewer.layers.remove("unknown grid")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "scan.nii.gz").write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="scan.nii.gz"):
        _save_all(viewer, tmp_path / "out", plugin=PLUGIN)
    assert (tmp_path / "out" / "scan.nii.gz").read_bytes() == b"keep me"
    with pytest.raises(InputImageError, match="folder"):
        _save_all(viewer, tmp_path / "x.nii.gz", plugin=PLUGIN, _writer=_folder_writer())


def _folder_writer():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    return next(w for w in pm.iter_compatible_writers(["image", "labels"])
                if w.command == "napari-lesionlocator.write_layers_folder")


def test_sample_study_opens_through_the_manifest(make_napari_viewer) -> None:
    from napari_lesionlocator.gui._sample_data import _cached_study

    study = _cached_study()
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "synthetic_study_truth")
    images = [layer for layer in viewer.layers if layer._type_string == "image"]
    truths = [layer for layer in viewer.layers if layer._type_string == "labels"]
    assert [layer.metadata["acquisition_date"] for layer in images] == [im.acquisition_date for im in study.images]
    assert [layer.visible for layer in images] == [True] + [False] * (len(images) - 1)
    assert len(truths) == len(images) and not any(layer.visible for layer in truths)
    for layer, truth in zip(truths, study.labels, strict=True):
        np.testing.assert_array_equal(np.asarray(layer.data), truth.array)
        # Ground truth overlays its image: same world placement.
        np.testing.assert_allclose(layer.data_to_world([3, 4, 5]), truth.geometry.index_to_world([3, 4, 5]))
    viewer2 = make_napari_viewer()
    viewer2.open_sample(PLUGIN, "synthetic_study")
    assert len(viewer2.layers) == len(study.images)


def test_labels_layer_data_keeps_lesion_colours() -> None:
    from napari_lesionlocator.gui._layers import labels_layer_data, lesion_colormap, lesion_colour

    lm = LabelMap(np.zeros(ALIGNED.shape, np.uint16), ALIGNED)
    _, kwargs, kind = labels_layer_data(lm)
    assert kind == "labels"
    cmap = lesion_colormap()
    for lid in (1, 2, 7, 300):
        np.testing.assert_allclose(kwargs["colormap"].map(lid), cmap.map(lid))
        np.testing.assert_allclose(lesion_colour(lid), np.asarray(cmap.map(lid)).reshape(-1)[:4])
    assert not np.allclose(lesion_colour(1), lesion_colour(2))


def test_render_study_screenshot_writes_a_png(qtbot, tmp_path) -> None:
    from napari_lesionlocator.gui._sample_data import _cached_study
    from napari_lesionlocator.gui.screenshot import render_study_screenshot

    study = _cached_study()
    labels = [study.labels[0], None, study.labels[2]]
    out = render_study_screenshot(study.images, labels, tmp_path / "shots" / "study.png", lesion_id=1,
                                  size=(900, 600))
    assert out == tmp_path / "shots" / "study.png"
    import imageio.v3 as iio

    pixels = iio.imread(out)
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 300
    assert pixels[..., :3].std() > 10  # not a blank canvas
    # Lesion 1 (orange-brown) overlays the grey CT: some pixels are clearly red, which grey never is.
    rgb = pixels[..., :3].astype(int)
    assert np.count_nonzero(rgb[..., 0] - rgb[..., 2] > 40) > 50
    with pytest.raises(ValueError, match="one per image"):
        render_study_screenshot(study.images, labels[:2], tmp_path / "x.png")
