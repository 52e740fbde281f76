"""PASCAL VOC boxes -> 3D box prompts: matched by SOPInstanceUID from the headers (never file order or
InstanceNumber), x = column and y = row, consecutive overlapping boxes grouped, unmatched files listed."""

from __future__ import annotations

import os

import numpy as np
import pydicom
import pytest

from napari_lesionlocator.core.errors import InputImageError
from napari_lesionlocator.core.geometry import Geometry
from napari_lesionlocator.core.image import Image
from napari_lesionlocator.io.dicom import read_dicom_folder, write_dicom_series
from napari_lesionlocator.io.voc import (
    VocBox,
    read_voc_xml,
    slice_index_by_sop_uid,
    voc_box_prompts,
    write_voc_xml,
)

A0002 = "Lung-PET-CT-Dx/Lung_Dx-A0002/04-25-2007-NA-ThoraxAThoraxRoutine Adult-34834"


@pytest.mark.parametrize(("series", "box", "n_slices"), [
    # SOURCE.md: B40f mass over 10 slices z 176-248 (about 81 x 67 mm); B70f over 8 slices (about 80 x 64 mm)
    ("3.000000-ThoraxRoutine  8.0.0  B40f-10983", (12, 22, 253, 357, 108, 235), 10),
    ("2.000000-ThoraxRoutine  8.0.0  B70f-62919", (12, 20, 244, 344, 109, 234), 8),
])
def test_lung_pet_ct_dx_boxes_on_the_real_series(real_data_dir, series, box, n_slices) -> None:
    base = real_data_dir / "lung_pet_ct_dx"
    (image,) = read_dicom_folder(base / A0002 / series)
    res = voc_box_prompts(base / "Annotation" / "A0002", image)
    assert len(res.lesions) == 1 and res.lesions[0].name == "A"
    (prompt,) = res.prompts
    assert prompt.box == box and prompt.lesion_id == 1
    assert len(res.lesions[0].slices) == n_slices
    assert len(res.matched_files) == n_slices and len(res.unmatched) == 18 - n_slices  # the other series' XMLs
    assert not res.problems
    # world extent: z 176..248 mm for B40f; in-plane size as SOURCE.md says
    g = image.geometry
    z_mm = [float(g.index_to_world([k, 0, 0])[0]) for k in (box[0], box[1] - 1)]
    if n_slices == 10:
        assert z_mm == pytest.approx([176.0, 248.0])
    size = [(box[2 * i + 1] - box[2 * i]) * g.spacing[i] for i in (1, 2)]
    assert 62 < size[0] < 69 and 79 < size[1] < 84
    # InstanceNumber runs against z: instance 1 is the most cranial slice, the last z index
    by_uid = slice_index_by_sop_uid(image)
    f = sorted((base / A0002 / series).iterdir())[0]
    ds = pydicom.dcmread(f, stop_before_pixels=True)
    assert int(ds.InstanceNumber) == 1 and by_uid[ds.SOPInstanceUID] == image.shape[0] - 1
    # the box covers the mass: the mean HU inside is soft tissue, far above the lung around it
    inside = image.array[box[0]:box[1], box[2]:box[3], box[4]:box[5]]
    assert inside.mean() > -500


def _series(tmp_path, seed: int):
    """A DICOM series whose z runs against the file order and InstanceNumber, with shuffled file names."""
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(8, 14)), int(rng.integers(20, 40)), int(rng.integers(24, 48)))
    flip = np.diag([-1.0, 1.0, 1.0])  # array z runs towards the feet
    g = Geometry(shape, tuple(rng.uniform(0.6, 3.0, 3)), tuple(rng.uniform(-100, 100, 3)), tuple(flip.reshape(-1)))
    img = Image(rng.normal(0, 40, shape).astype(np.float32).round(), g, "s")
    folder = tmp_path / f"ct{seed}"
    paths = write_dicom_series(img, folder)
    names = [f"{v:08x}.dcm" for v in rng.permutation(len(paths)) * 7919]
    for p, n in zip(paths, names, strict=True):
        os.rename(p, folder / n)
    (image,) = read_dicom_folder(folder)
    uids = {}
    for f in folder.iterdir():
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        uids[int(round(float(image.geometry.world_to_index(np.asarray(ds.ImagePositionPatient, float)[::-1])[0])))] = \
            ds.SOPInstanceUID
    return image, uids


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_grouping_matching_and_bad_boxes_random(tmp_path, seed) -> None:
    image, uid_at = _series(tmp_path, seed)
    nz, rows, cols = image.shape
    rng = np.random.default_rng(100 + seed)
    xml = tmp_path / f"xml{seed}"
    # lesion A: slices 1..3, jittered overlapping boxes; lesion B: slices 2..4 far away (same slices as A);
    # lesion C: slice 6 only, gap after A; an XML for a slice of another series; a box outside its slice
    x0, y0 = int(rng.integers(0, cols // 4)), int(rng.integers(0, rows // 4))
    a_boxes = {k: VocBox("A", x0 + k % 2, y0, x0 + 5 + k % 2, y0 + 4) for k in (1, 2, 3)}
    b_boxes = {k: VocBox("A", cols - 8, rows - 7, cols - 2, rows - 1) for k in (2, 3, 4)}
    for k in sorted(set(a_boxes) | set(b_boxes)):
        boxes = [b for b in (a_boxes.get(k), b_boxes.get(k)) if b]
        write_voc_xml(xml / f"{uid_at[k]}.xml", uid_at[k], boxes, width=cols, height=rows)
    write_voc_xml(xml / f"{uid_at[6]}.xml", uid_at[6], [VocBox("G", x0, y0, x0 + 5, y0 + 4)], width=cols, height=rows)
    other = pydicom.uid.generate_uid()
    write_voc_xml(xml / f"{other}.xml", other, [VocBox("A", 1, 1, 3, 3)], width=cols, height=rows)
    write_voc_xml(xml / f"{uid_at[7]}.xml", uid_at[7], [VocBox("A", cols + 5, 2, cols + 9, 6)], width=cols,
                  height=rows)
    (xml / "broken.xml").write_text("<annotation><object><bndbox><xmin>1</xmin>")
    res = voc_box_prompts(xml, image)
    boxes = {p.lesion_id: p.box for p in res.prompts}
    assert boxes[1] == (1, 4, y0, y0 + 5, x0, x0 + 7)  # y = rows, x = columns, max exclusive
    assert boxes[2] == (2, 5, rows - 7, rows, cols - 8, cols - 1)
    assert boxes[3] == (6, 7, y0, y0 + 5, x0, x0 + 6)
    assert len(boxes) == 3
    assert [p.name for p in res.unmatched] == [f"{other}.xml"]
    text = " | ".join(res.problems)
    assert "outside its" in text and "broken.xml" in text
    for p in res.prompts:
        p.validate(image.shape)


def test_needs_a_dicom_series(tmp_path) -> None:
    g = Geometry((4, 8, 8))
    with pytest.raises(InputImageError, match="SOPInstanceUID"):
        voc_box_prompts(tmp_path, Image(np.zeros(g.shape, np.float32), g, "nifti"))


def test_reads_the_collection_file_layout(real_data_dir) -> None:
    files = sorted((real_data_dir / "lung_pet_ct_dx" / "Annotation" / "A0002").glob("*.xml"))
    vf = read_voc_xml(files[0])
    assert vf.sop_instance_uid == files[0].stem and (vf.width, vf.height) == (512, 512)
    assert len(vf.boxes) == 1 and vf.boxes[0].name == "A"


def test_cli_segment_from_the_xml_folder(real_data_dir, tmp_path, capsys) -> None:
    """`lesionlocator segment -i DICOM_SERIES_DIR -p XML_DIR -t box` on the real series."""
    from napari_lesionlocator.cli import main
    from napari_lesionlocator.io import read_label_map

    base = real_data_dir / "lung_pet_ct_dx"
    series = base / A0002 / "3.000000-ThoraxRoutine  8.0.0  B40f-10983"
    rc = main(["segment", "-i", str(series), "-p", str(base / "Annotation" / "A0002"), "-t", "box",
               "-o", str(tmp_path), "--engine", "classical", "-q"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "8 XML file(s)" in err and "match no slice" in err  # the B70f series' files are listed, not dropped
    (image,) = read_dicom_folder(series)
    (instance,) = tmp_path.glob("*_lesions.nii.gz")
    labels = read_label_map(instance, like=image)  # written on the DICOM series' exact grid
    assert labels.ids == [1]
    mask = labels.array == 1
    z, y, x = np.nonzero(mask)
    assert z.min() >= 12 and z.max() < 22 and y.min() >= 253 and y.max() < 357 and x.min() >= 108 and x.max() < 235
    assert mask.sum() * image.geometry.voxel_volume_mm3 / 1000 > 20  # a real mass, tens of mL


def test_cli_picks_the_series_the_boxes_name_in_a_study_folder(real_data_dir, tmp_path, capsys) -> None:
    """-i a study folder with two series (B70f, B40f): the boxes' series is found by SOPInstanceUID."""
    from napari_lesionlocator.cli import main

    base = real_data_dir / "lung_pet_ct_dx"
    xml = tmp_path / "xml"
    xml.mkdir()
    b70f = base / A0002 / "2.000000-ThoraxRoutine  8.0.0  B70f-62919"
    uids = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in b70f.iterdir()}
    for f in (base / "Annotation" / "A0002").iterdir():
        if f.stem in uids:  # only the B70f series' boxes
            (xml / f.name).write_bytes(f.read_bytes())
    rc = main(["segment", "-i", str(base / A0002), "-p", str(xml), "-t", "point", "-o", str(tmp_path / "out"),
               "--engine", "classical"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "8 XML file(s) name slices of the series" in err and "B70f" in err
    assert (tmp_path / "out" / f"{b70f.name}_lesion_1.nii.gz").exists()
