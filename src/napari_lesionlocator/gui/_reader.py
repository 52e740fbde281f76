"""npe2 reader: CT volumes (NIfTI, NRRD, MetaImage), DICOM folders and folders of image files
-> one image layer per volume (a folder of timepoints opens as a study; only the first is shown).

``get_reader`` never raises: it returns ``None`` for paths it cannot read (unknown suffix, a
folder without DICOM files, a file whose header is not an image), so napari can offer another
reader. Errors met while reading a path it accepted are raised as
:class:`~napari_lesionlocator.core.errors.InputImageError` with a message that says what is wrong;
napari shows them as notifications.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from ..core.errors import InputImageError, LesionLocatorError, ResourceLimitError, SpacingError
from ..core.image import Image
from ._layers import DEFAULT_WINDOW, image_layer_data

__all__ = ["get_reader", "read_paths", "layer_data_for_images"]

PathOrPaths = str | Sequence[str]


def _is_image_file(path: Path) -> bool:
    from ..io.images import is_image_path

    return path.is_file() and is_image_path(path)


def _looks_like_dicom(path: Path) -> bool:
    """A file with the DICOM preamble magic ``DICM`` at byte 128 (cheap; reads 132 bytes)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _folder_has_dicom(path: Path, max_files: int = 200) -> bool:
    if not path.is_dir():
        return False
    for n, child in enumerate(sorted(path.rglob("*"))):
        if n >= max_files:
            return False
        if child.is_file() and _looks_like_dicom(child):
            return True
    return False


def _header_readable(path: Path) -> bool:
    """True when the file's header parses as an image (no voxel data is read)."""
    probe = _io_function("probe_image")
    if probe is not None:
        try:
            probe(path)
        except (SpacingError, ResourceLimitError):
            return True  # an image of ours that must be refused: read_paths says why, as a notification
        except (LesionLocatorError, OSError, ValueError, RuntimeError):
            return False
        return True
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return False
    return True


def _io_function(name: str):
    """An optional function of ``napari_lesionlocator.io`` (added by the io layer), or None."""
    import importlib

    for module in ("napari_lesionlocator.io.volumes", "napari_lesionlocator.io", "napari_lesionlocator.io.images"):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        func = getattr(mod, name, None)
        if callable(func):
            return func
    return None


def _folder_has_images(path: Path) -> bool:
    """A folder holding readable image files (e.g. one file per timepoint of a study)."""
    return path.is_dir() and any(
        _is_image_file(child) and not child.name.startswith(".") and _header_readable(child)
        for child in sorted(path.iterdir())
    )


def _accepts(path: Path) -> bool:
    if _is_image_file(path):
        return _header_readable(path)
    if path.is_file():  # a DICOM file: a CT slice (opens its series) or a DICOM-SEG (opens on its CT)
        return _looks_like_dicom(path)
    return _folder_has_dicom(path) or _folder_has_images(path) or _is_voc_folder(path)


def _is_voc_folder(path: Path) -> bool:
    from ..io.voc import is_voc_folder

    return is_voc_folder(path)


def _voc_layer_data(path: Path) -> list[tuple]:
    """A folder of PASCAL VOC XML boxes, on the open DICOM series they name: each lesion's 3D box becomes
    a pending box prompt (ready to segment) and the per-slice rectangles a Shapes layer."""
    import napari

    from ._voc_boxes import add_voc_boxes, voc_shapes_layer_data

    viewer = napari.current_viewer()
    if viewer is None:
        raise InputImageError(f"{path}: open the DICOM series these boxes belong to first")
    layer, res = add_voc_boxes(viewer, str(path))
    return [voc_shapes_layer_data(layer, res, f"{path.name} boxes")]


def _seg_layer_data(path: Path) -> list[tuple] | None:
    """A DICOM-SEG file, or a folder holding SEGs: the CT layer(s) and one Labels layer per SEG
    (one id per segment, names kept in ``metadata["lesion_names"]``); None when there is no SEG."""
    from ..io.dicom_seg import find_dicom_segs, is_dicom_seg, read_dicom_seg, read_dicom_seg_folder
    from ._layers import labels_layer_data

    if path.is_file():
        if not is_dicom_seg(path):
            return None
        segs, images, problems = [read_dicom_seg(path)], [], []
    elif path.is_dir() and find_dicom_segs(path):
        found = read_dicom_seg_folder(path)
        segs, images, problems = found.segs, found.images, found.problems
    else:
        return None
    for s in segs:
        if all(s.image is not i for i in images):
            images.append(s.image)
    out = layer_data_for_images(images, first_visible_only=True)
    names = [d[1]["name"] for d in out]
    for s in segs:
        image_name = names[next(k for k, i in enumerate(images) if i is s.image)]
        data = labels_layer_data(s.labels, name=f"{image_name} {s.seg_path.stem}", image_name=image_name)
        data[1]["metadata"]["lesion_names"] = {int(k): v for k, v in s.names.items()}
        data[1]["metadata"]["seg_messages"] = list(s.messages)
        out.append(data)
    if problems or any(s.messages for s in segs):
        import warnings

        for msg in problems + [m for s in segs for m in s.messages]:
            warnings.warn(msg, stacklevel=2)
    return out


def get_reader(path: PathOrPaths) -> Callable | None:
    """npe2 ``reader`` hook: the reading function when every path is ours, else None (never raises)."""
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    try:
        if not paths or not all(_accepts(Path(p)) for p in paths):
            return None
    except Exception:  # noqa: BLE001 - a reader probe must never crash napari's reader lookup
        return None
    return read_paths


def _read_volumes(path: Path) -> list[Image]:
    read_volumes = _io_function("read_volumes")
    if read_volumes is not None:
        return list(read_volumes(path))
    if path.is_dir():
        raise InputImageError(f"{path}: reading DICOM folders needs napari_lesionlocator.io.read_volumes")
    from ..io.images import read_image

    return [read_image(path)]


def layer_data_for_images(images: Sequence[Image], window: str = DEFAULT_WINDOW, *,
                          first_visible_only: bool = False) -> list[tuple]:
    """LayerData tuples (one per image) with unique names, in the order given.

    With ``first_visible_only`` the other volumes start hidden: opaque CT layers would otherwise
    cover each other, and a click would land on a scan the user does not see.
    """
    out = []
    seen: set[str] = set()
    for image in images:
        name = image.name
        k = 2
        while name in seen:
            name = f"{image.name} ({k})"
            k += 1
        seen.add(name)
        is_ct = image.modality in (None, "CT")
        data = image_layer_data(image, window=window if is_ct else DEFAULT_WINDOW, name=name)
        if not is_ct:
            # Not CT: HU windows are meaningless, let napari pick limits from the data.
            data[1].pop("contrast_limits", None)
        if first_visible_only and out:
            data[1]["visible"] = False
        out.append(data)
    return out


def read_paths(path: PathOrPaths) -> list[tuple]:
    """Read every volume in ``path`` (file, DICOM folder or a list of them) as image LayerData."""
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    if len(paths) == 1 and _is_voc_folder(Path(paths[0])) and not _folder_has_dicom(Path(paths[0])):
        return _voc_layer_data(Path(paths[0]))
    if len(paths) == 1:
        seg_layers = _seg_layer_data(Path(paths[0]))
        if seg_layers is not None:
            return seg_layers
    images: list[Image] = []
    for p in paths:
        images.extend(_read_volumes(Path(p)))
    if not images:
        raise InputImageError(f"no 3D volume found in {', '.join(str(p) for p in paths)}")
    return layer_data_for_images(images, first_visible_only=True)

