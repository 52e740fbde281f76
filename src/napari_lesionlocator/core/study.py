"""One patient's longitudinal study: timepoints ordered by acquisition date, and lesions with stable ids.

Pure (numpy only): no Qt, napari or torch.

* A :class:`Timepoint` is one scan (:class:`~.image.Image`), optionally with its instance label map
  (:class:`~.image.LabelMap`, on exactly the image's grid) and an acquisition date.
* A :class:`Lesion` is one lesion identity. Its integer id is the value it carries in every
  timepoint's label map and never changes (no renumbering after tracking).
* A :class:`Study` keeps the timepoints in order (by acquisition date by default; the user may
  reorder them), checks that names are unique and dates parseable, and answers "which lesions are
  at which timepoint".

Lesion status at a timepoint is derived from the label maps (so it is always current while an
annotator edits them): ``"present"`` when the id has voxels there, ``"absent"`` when the timepoint
has a label map without that id, ``"not_evaluable"`` when the timepoint has no label map or the user
marked the lesion not evaluable there.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .errors import LesionLocatorError
from .image import Image, LabelMap

__all__ = [
    "StudyError",
    "LesionStatus",
    "parse_date",
    "Timepoint",
    "Lesion",
    "Study",
]

LesionStatus = Literal["present", "absent", "not_evaluable"]


class StudyError(LesionLocatorError, ValueError):
    """A study is inconsistent (duplicate timepoint names, unparseable dates, unknown names or ids)."""


def parse_date(value: str | _dt.date | None) -> _dt.date | None:
    """Parse an acquisition date.

    Accepts ``datetime.date``/``datetime.datetime``, ISO ``YYYY-MM-DD`` (optionally followed by a
    time, ``T...`` or `` ...``) and DICOM ``YYYYMMDD``. ``None`` and ``""`` give ``None``.

    Raises
    ------
    StudyError
        When the value is not a date in one of these forms.
    """
    if value is None:
        return None
    if isinstance(value, _dt.datetime):
        return value.date()
    if isinstance(value, _dt.date):
        return value
    text = str(value).strip()
    if not text:
        return None
    candidates = [text, text[:10]] if len(text) > 10 and text[10] in "T " else [text]
    for cand in candidates:
        for fmt in ("%Y-%m-%d", "%Y%m%d"):
            try:
                return _dt.datetime.strptime(cand, fmt).date()
            except ValueError:
                continue
    raise StudyError(f"cannot read the date {value!r}: use YYYY-MM-DD (or DICOM YYYYMMDD)")


@dataclass(eq=False)
class Timepoint:
    """One scan of the study.

    Parameters
    ----------
    image : Image
        The CT volume; ``image.name`` is the timepoint's name (unique within a study).
    labels : LabelMap or None
        Instance label map on exactly ``image``'s grid (0 = background, other values = lesion ids).
    acquisition_date : str, datetime.date or None
        Defaults to ``image.acquisition_date``; stored as ISO ``YYYY-MM-DD``.

    Raises
    ------
    StudyError
        When the date cannot be parsed.
    GeometryMismatchError
        When ``labels`` is not on the image's grid (the message names both grids).
    """

    image: Image
    labels: LabelMap | None = None
    acquisition_date: str | None = None

    def __post_init__(self) -> None:
        raw = self.acquisition_date if self.acquisition_date not in (None, "") else self.image.acquisition_date
        date = parse_date(raw)
        self.acquisition_date = date.isoformat() if date else None
        if self.labels is not None:
            self._check_labels(self.labels)

    def _check_labels(self, labels: LabelMap) -> None:
        self.image.geometry.require_same_grid(
            labels.geometry, what=f"label map {labels.name!r} and image {self.image.name!r}"
        )

    @property
    def name(self) -> str:
        return self.image.name

    @property
    def date(self) -> _dt.date | None:
        return parse_date(self.acquisition_date)

    @property
    def lesion_ids(self) -> list[int]:
        """Ids with at least one voxel in the label map (empty when there is none), ascending."""
        return self.labels.ids if self.labels is not None else []

    def set_date(self, value: str | _dt.date | None) -> None:
        """Set (or clear, with ``None``) the acquisition date; StudyError when it cannot be parsed.

        The study keeps its order; call :meth:`Study.sort_by_date` to re-sort.
        """
        date = parse_date(value)
        self.acquisition_date = date.isoformat() if date else None

    def set_labels(self, labels: LabelMap | None) -> None:
        """Attach (or drop, with ``None``) the label map after checking its grid."""
        if labels is not None:
            self._check_labels(labels)
        self.labels = labels

    def ensure_labels(self) -> LabelMap:
        """The label map, creating an empty one on the image's grid when there is none."""
        if self.labels is None:
            self.labels = LabelMap.empty_like(self.image)
        return self.labels


@dataclass(frozen=True)
class Lesion:
    """One lesion identity across the study (a snapshot; see :meth:`Study.lesions`).

    Attributes
    ----------
    id : int
        Stable positive id: its value in every label map.
    name : str
        Display name (default ``"Lesion <id>"``).
    status : dict
        Timepoint name -> ``"present" | "absent" | "not_evaluable"``, in study order.
    """

    id: int
    name: str = ""
    status: dict[str, LesionStatus] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.id, bool) or int(self.id) != self.id or int(self.id) < 1:
            raise StudyError(f"lesion ids must be positive integers, got {self.id!r}")
        object.__setattr__(self, "id", int(self.id))
        if not self.name:
            object.__setattr__(self, "name", f"Lesion {self.id}")

    @property
    def present_at(self) -> list[str]:
        """Names of the timepoints where the lesion has voxels, in study order."""
        return [tp for tp, st in self.status.items() if st == "present"]

    def is_present(self, timepoint: str) -> bool:
        return self.status.get(timepoint) == "present"

    @property
    def first_seen(self) -> str | None:
        present = self.present_at
        return present[0] if present else None

    def is_new_at(self, timepoint: str) -> bool:
        """Present at ``timepoint`` and absent (not merely unevaluated) at every earlier one, not the baseline."""
        names = list(self.status)
        if timepoint not in names or names.index(timepoint) == 0 or not self.is_present(timepoint):
            return False
        return all(self.status[n] == "absent" for n in names[: names.index(timepoint)])

    def disappeared_at(self, timepoint: str) -> bool:
        """Absent at ``timepoint`` although present at the timepoint just before it."""
        names = list(self.status)
        if timepoint not in names or names.index(timepoint) == 0:
            return False
        before = names[names.index(timepoint) - 1]
        return self.status[timepoint] == "absent" and self.status[before] == "present"


class Study:
    """One patient's timepoints in order, plus lesion names and "not evaluable" marks.

    Parameters
    ----------
    timepoints : iterable of Timepoint
        At least one. Names must be unique.
    patient_id : str
        Free text identifying the patient/case.
    sort_by_date : bool
        Order by acquisition date (stable for equal dates). Then either every timepoint has a
        date or none has (mixed is refused: the position of the undated ones would be a guess).
        ``False`` keeps the given order.

    Raises
    ------
    StudyError
        Empty study, duplicate names, or mixed dated/undated timepoints with ``sort_by_date``.
    """

    def __init__(self, timepoints: Iterable[Timepoint], patient_id: str = "patient", *, sort_by_date: bool = True):
        tps = list(timepoints)
        if not tps:
            raise StudyError("a study needs at least one timepoint")
        for tp in tps:
            if not isinstance(tp, Timepoint):
                raise StudyError(f"expected Timepoint objects, got {type(tp).__name__}")
        self.patient_id = str(patient_id)
        self._timepoints: list[Timepoint] = []
        self._lesion_names: dict[int, str] = {}
        self._not_evaluable: set[tuple[int, str]] = set()
        self._highest_removed = 0
        self._check_unique([tp.name for tp in tps])
        self._timepoints = self._date_sorted(tps) if sort_by_date else tps

    # ------------------------------------------------------------ ordering
    @staticmethod
    def _check_unique(names: Sequence[str]) -> None:
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise StudyError(f"timepoint names must be unique within a study; repeated: {', '.join(dupes)}")

    @staticmethod
    def _date_sorted(tps: list[Timepoint]) -> list[Timepoint]:
        undated = [tp.name for tp in tps if tp.date is None]
        if not undated:
            return sorted(tps, key=lambda tp: tp.date)
        if len(undated) == len(tps):
            return list(tps)
        raise StudyError(
            f"timepoints {', '.join(undated)} have no acquisition date while others do; "
            "give every timepoint a date, or order them yourself (sort_by_date=False / reorder)"
        )

    @property
    def timepoints(self) -> tuple[Timepoint, ...]:
        return tuple(self._timepoints)

    @property
    def names(self) -> list[str]:
        return [tp.name for tp in self._timepoints]

    @property
    def baseline(self) -> Timepoint:
        return self._timepoints[0]

    @property
    def dates_in_order(self) -> bool:
        """True when every timepoint has a date and the order is chronological (ties allowed)."""
        dates = [tp.date for tp in self._timepoints]
        return all(d is not None for d in dates) and all(a <= b for a, b in zip(dates, dates[1:]))

    def __len__(self) -> int:
        return len(self._timepoints)

    def __iter__(self) -> Iterator[Timepoint]:
        return iter(list(self._timepoints))

    def __getitem__(self, key: int | str) -> Timepoint:
        if isinstance(key, str):
            return self._timepoints[self.index_of(key)]
        return self._timepoints[key]

    def index_of(self, name: str) -> int:
        for i, tp in enumerate(self._timepoints):
            if tp.name == name:
                return i
        raise StudyError(f"no timepoint named {name!r}; the study has {', '.join(self.names)}")

    def reorder(self, names: Sequence[str]) -> None:
        """Put the timepoints in the given order (a permutation of :attr:`names`); dates are not changed."""
        names = list(names)
        if sorted(names) != sorted(self.names) or len(set(names)) != len(names):
            raise StudyError(f"reorder needs each of {self.names} exactly once, got {names}")
        self._timepoints = [self[n] for n in names]

    def sort_by_date(self) -> None:
        """Order the timepoints by acquisition date (see the class docstring for undated ones)."""
        self._timepoints = self._date_sorted(self._timepoints)

    def add_timepoint(self, timepoint: Timepoint) -> int:
        """Insert a timepoint and return its index.

        A dated timepoint goes after every timepoint with an earlier or equal date when all existing
        timepoints are dated; otherwise it is appended.
        """
        self._check_unique([*self.names, timepoint.name])
        dates = [tp.date for tp in self._timepoints]
        index = len(self._timepoints)
        if timepoint.date is not None and all(d is not None for d in dates):
            index = sum(1 for d in dates if d <= timepoint.date)
        self._timepoints.insert(index, timepoint)
        return index

    def remove_timepoint(self, name: str) -> Timepoint:
        """Remove and return a timepoint; refuses to leave the study empty."""
        i = self.index_of(name)
        if len(self._timepoints) == 1:
            raise StudyError("cannot remove the only timepoint of a study")
        self._not_evaluable = {(lid, tp) for lid, tp in self._not_evaluable if tp != name}
        return self._timepoints.pop(i)

    # -------------------------------------------------------------- lesions
    def lesion_ids_by_timepoint(self) -> dict[str, list[int]]:
        """Timepoint name -> ascending lesion ids with voxels there, in study order."""
        return {tp.name: tp.lesion_ids for tp in self._timepoints}

    @property
    def lesion_ids(self) -> list[int]:
        """Every id present at some timepoint or named by the user, ascending."""
        ids: set[int] = set(self._lesion_names)
        for tp in self._timepoints:
            ids.update(tp.lesion_ids)
        return sorted(ids)

    def next_lesion_id(self) -> int:
        """A fresh id: one more than the largest id in use or removed from this study object.

        Removed ids are not handed out again, so a table exported earlier never sees one id
        name two different lesions.
        """
        ids = self.lesion_ids
        return max([self._highest_removed, *ids]) + 1 if ids or self._highest_removed else 1

    def status(self, lesion_id: int, timepoint: str) -> LesionStatus:
        tp = self[timepoint]
        if (int(lesion_id), tp.name) in self._not_evaluable or tp.labels is None:
            return "not_evaluable"
        return "present" if bool(np.any(tp.labels.array == lesion_id)) else "absent"

    def lesions(self) -> list[Lesion]:
        """Snapshots of every lesion with its status at each timepoint (in study order)."""
        per_tp = {tp.name: set(tp.lesion_ids) for tp in self._timepoints}
        out = []
        for lid in sorted(set(self._lesion_names).union(*per_tp.values())):
            status: dict[str, LesionStatus] = {}
            for tp in self._timepoints:
                if (lid, tp.name) in self._not_evaluable or tp.labels is None:
                    status[tp.name] = "not_evaluable"
                else:
                    status[tp.name] = "present" if lid in per_tp[tp.name] else "absent"
            out.append(Lesion(lid, self._lesion_names.get(lid, ""), status))
        return out

    def lesion(self, lesion_id: int) -> Lesion:
        for les in self.lesions():
            if les.id == lesion_id:
                return les
        raise StudyError(f"no lesion with id {lesion_id}; ids in the study: {self.lesion_ids}")

    def rename_lesion(self, lesion_id: int, name: str) -> None:
        lid = Lesion(lesion_id).id  # validates the id
        self._lesion_names[lid] = str(name).strip() or f"Lesion {lid}"

    def set_not_evaluable(self, lesion_id: int, timepoint: str, value: bool = True) -> None:
        """Mark (or unmark) a lesion as not evaluable at a timepoint (e.g. outside the field of view)."""
        key = (Lesion(lesion_id).id, self[timepoint].name)
        if value:
            self._not_evaluable.add(key)
        else:
            self._not_evaluable.discard(key)

    def remove_lesion(self, lesion_id: int) -> int:
        """Erase a lesion from every label map (in place) and forget its name and marks.

        Returns the number of voxels cleared. Other lesions' ids are untouched.
        """
        lid = Lesion(lesion_id).id
        if lid not in self.lesion_ids:
            raise StudyError(f"no lesion with id {lid}; ids in the study: {self.lesion_ids}")
        cleared = 0
        for tp in self._timepoints:
            if tp.labels is not None:
                mask = tp.labels.array == lid
                cleared += int(mask.sum())
                tp.labels.array[mask] = 0
        self._lesion_names.pop(lid, None)
        self._not_evaluable = {(i, tp) for i, tp in self._not_evaluable if i != lid}
        self._highest_removed = max(self._highest_removed, lid)
        return cleared

    def __repr__(self) -> str:
        parts = [f"{tp.name}({tp.acquisition_date or 'undated'})" for tp in self._timepoints]
        return f"Study({self.patient_id!r}: {', '.join(parts)}; lesions {self.lesion_ids})"
