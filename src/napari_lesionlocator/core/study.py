"""One patient's longitudinal study: timepoints in order, lesions with ids never reused, and each
lesion's own whole mask at each timepoint with its review state and provenance.

Pure (numpy/scipy only): no Qt, napari or torch.

* A :class:`Timepoint` is one scan (:class:`~.image.Image`) with an acquisition date and a
  *display* instance map (``labels``, :class:`~.image.LabelMap` on exactly the image's grid).
* A lesion is one identity across the study: a positive integer id that never changes and is
  **never handed out again** after a deletion (the study keeps a monotone counter), a name, a site
  (:data:`SITES`) and a RECIST role (:data:`ROLES`).
* An :class:`Observation` is one lesion at one timepoint: its own whole mask as a
  :class:`~.results.LesionResult` (crop + bool array, engine status ok/check/empty/lost, engine
  notes), the reader's review state (:data:`REVIEW_STATES`), the prompt(s) and a
  :class:`Provenance` (engine, version, model, folds/TTA or parameters, tracked from which
  timepoint, manual edits, user).

The per-lesion masks are the truth. Masks of two lesions may overlap, so a lesion is never cut out
of a combined map; ``Timepoint.labels`` is a rendering of them (ascending id, a higher id wins where
masks overlap) that the study keeps current whenever it changes a mask. A label map given when the
study is built (or through :meth:`Study.set_labels`) is *imported*: one observation per id.

Lesion status at a timepoint (:meth:`Study.status`, the older three-valued form):
``"present"`` when its mask there has voxels (and the reader did not mark it disappeared or merged),
``"absent"`` when the timepoint was evaluated without it, ``"not_evaluable"`` when the timepoint has
neither a label map nor an observation of it ("not tracked yet") or the reader marked it so.
:meth:`Study.table_status` gives the reader-facing status (present, new, disappeared, lost,
unverified, not evaluable, not tracked).

Thread: a study is changed on one thread (the GUI thread). :meth:`Study.snapshot_state` copies what
a session save needs (masks are never changed in place: a change replaces the mask object), so the
save itself can run in a worker.
"""

from __future__ import annotations

import datetime as _dt
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from .errors import LesionLocatorError
from .image import Image, LabelMap
from .results import LesionMask, LesionResult, results_from_label_map

__all__ = [
    "StudyError",
    "LesionStatus",
    "SITES",
    "ROLES",
    "REVIEW_STATES",
    "TABLE_STATUSES",
    "parse_date",
    "current_user",
    "now_iso",
    "Provenance",
    "Observation",
    "EditResult",
    "Timepoint",
    "Lesion",
    "Study",
]

LesionStatus = Literal["present", "absent", "not_evaluable"]

#: Sites a lesion can be given (the lesion table's pick list). "lymph node" lesions are measured by
#: their short axis for RECIST.
SITES: tuple[str, ...] = ("lung", "liver", "lymph node", "bone", "soft tissue", "other")
#: RECIST 1.1 role of a lesion.
ROLES: tuple[str, ...] = ("target", "non-target", "not assessed")
#: Reader's verdict on one lesion at one timepoint. ``"merged"`` goes with ``merged_into``.
REVIEW_STATES: tuple[str, ...] = ("unverified", "accepted", "disappeared", "merged", "new")
#: Reader-facing status of a lesion at a timepoint (:meth:`Study.table_status`).
TABLE_STATUSES: tuple[str, ...] = (
    "present", "new", "disappeared", "lost", "unverified", "not evaluable", "not tracked", "merged", "absent",
)


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


def current_user() -> str:
    """The OS user name (``"unknown"`` when the system cannot say)."""
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (containers): still record something
        return "unknown"


def now_iso() -> str:
    """The current time, UTC, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


def _package_version() -> str:
    from .. import __version__

    return __version__


def _check_id(lesion_id) -> int:
    bad = StudyError(f"lesion ids must be positive integers, got {lesion_id!r}")
    if isinstance(lesion_id, bool | str):
        raise bad
    try:
        value = int(lesion_id)
    except (TypeError, ValueError, OverflowError):
        raise bad from None
    if value != lesion_id or value < 1:
        raise bad
    return value


# ------------------------------------------------------------------ provenance
@dataclass
class Provenance:
    """How one lesion's mask at one timepoint came to be.

    Attributes
    ----------
    source : str
        ``"segmented"`` (from a prompt), ``"tracked"`` (propagated), ``"imported"`` (read from a
        label map), ``"manual"`` (drawn by the reader).
    engine, engine_version, package_version : str or None
        Engine name (``"classical"``, ``"lesionlocator"``), its own version when it has one, and
        this package's version.
    model : str or None
        Model/checkpoint (folder name or identifier) for engines with weights.
    folds : list of int or None
    tta : bool or None
    parameters : dict
        Engine parameters (the classical engine's settings, device, ...), as plain JSON values.
    prompt : list of dict
        The prompt(s) it was segmented from (``{"point": [z, y, x]}`` / ``{"box": [...]}``).
    tracked_from : str or None
        Timepoint name it was propagated from.
    created : str
        When the mask was made (UTC, ISO 8601).
    user : str
        OS user name of whoever made it.
    edits : int
        Number of manual edits since; ``edit_times`` holds their times (UTC ISO) and
        ``edit_users`` who made them.
    """

    source: str = "segmented"
    engine: str | None = None
    engine_version: str | None = None
    package_version: str | None = None
    model: str | None = None
    folds: list[int] | None = None
    tta: bool | None = None
    parameters: dict = field(default_factory=dict)
    prompt: list[dict] = field(default_factory=list)
    tracked_from: str | None = None
    created: str = ""
    user: str = ""
    edits: int = 0
    edit_times: list[str] = field(default_factory=list)
    edit_users: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.created:
            self.created = now_iso()
        if not self.user:
            self.user = current_user()
        if self.package_version is None:
            self.package_version = _package_version()

    @property
    def last_edit(self) -> str | None:
        return self.edit_times[-1] if self.edit_times else None

    def record_edit(self, when: str | None = None, user: str | None = None) -> None:
        self.edits += 1
        self.edit_times.append(when or now_iso())
        self.edit_users.append(user or current_user())

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> Provenance:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in dict(data).items() if k in known})

    @classmethod
    def from_engine(cls, details: Mapping | None, **changes) -> Provenance:
        """Provenance from an engine's ``LesionResult.provenance`` dict (known keys are lifted,
        everything else goes to ``parameters``), then ``changes``."""
        details = dict(details or {})
        known = set(cls.__dataclass_fields__)
        lifted = {k: details.pop(k) for k in list(details) if k in known and k != "parameters"}
        params = dict(details.pop("parameters", {}) or {})
        params.update(details)
        base = {**lifted, "parameters": params}
        base.update(changes)
        return cls(**base)


def _plain(value):
    """JSON-able copy of engine output (numpy scalars and arrays, tuples)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _prompt_dicts(prompts: Iterable) -> list[dict]:
    out = []
    for p in prompts:
        if hasattr(p, "box"):
            d = {"box": [int(v) for v in p.box]}
        elif hasattr(p, "zyx"):
            d = {"point": [int(v) for v in p.zyx]}
        else:
            raise StudyError(f"not a prompt: {p!r}")
        if getattr(p, "positive", True) is False:
            d["positive"] = False
        out.append(d)
    return out


# ----------------------------------------------------------------- observations
@dataclass
class Observation:
    """One lesion at one timepoint.

    ``result`` holds its own whole mask (never cut from a combined map), the engine's status
    (ok/check/empty/lost) and notes. ``review`` is the reader's verdict; ``merged_into`` names the
    lesion it merged into when ``review == "merged"``. ``prompts`` are the prompt objects
    (:class:`~.prompts.PointPrompt` / :class:`~.prompts.BoxPrompt`) it was segmented from.
    ``unequivocal_progression`` is the reader's RECIST call for a non-target lesion.
    ``revision`` increases with every change (caches key on it).
    """

    lesion_id: int
    timepoint: str
    result: LesionResult
    review: str = "unverified"
    merged_into: int | None = None
    prompts: list = field(default_factory=list)
    provenance: Provenance = field(default_factory=Provenance)
    unequivocal_progression: bool = False
    revision: int = 0

    def __post_init__(self) -> None:
        if self.review not in REVIEW_STATES:
            raise StudyError(f"unknown review state {self.review!r}; one of {', '.join(REVIEW_STATES)}")

    @property
    def mask(self) -> LesionMask:
        return self.result.mask

    @property
    def engine_status(self) -> str:
        return self.result.status

    @property
    def present(self) -> bool:
        """Has voxels and the reader did not call it disappeared or merged."""
        return self.review not in ("disappeared", "merged") and not self.result.mask.is_empty

    @property
    def review_label(self) -> str:
        return f"merged into {self.merged_into}" if self.review == "merged" else self.review


@dataclass
class EditResult:
    """What :meth:`Study.apply_label_edit` changed.

    ``changed`` lists the lesion ids whose own mask changed, ``added`` those that the edit created,
    ``remapped`` maps an id the reader painted that was already used (deleted) in this study to
    the fresh id it was given (ids are never reused), ``messages`` say so in words.
    """

    changed: list[int] = field(default_factory=list)
    added: list[int] = field(default_factory=list)
    remapped: dict[int, int] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)
    #: bounding box (slices) of the voxels that changed; the display map was redrawn there
    region: tuple[slice, ...] | None = None


@dataclass
class _LesionInfo:
    name: str = ""
    site: str = "other"
    role: str = "not assessed"


@dataclass(eq=False)
class Timepoint:
    """One scan of the study.

    Parameters
    ----------
    image : Image
        The CT volume; ``image.name`` is the timepoint's name (unique within a study).
    labels : LabelMap or None
        Instance label map on exactly ``image``'s grid (0 = background, other values = lesion ids).
        Inside a study it is imported once, then kept as the display rendering of the lesions'
        own masks.
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
    def geometry(self):
        return self.image.geometry

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
        """Attach (or drop, with ``None``) the label map after checking its grid.

        Inside a study use :meth:`Study.set_labels` (which imports the map's lesions) or
        :meth:`Study.apply_label_edit`; this only replaces the display map.
        """
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
    site, role : str
        One of :data:`SITES` and :data:`ROLES`.
    review : dict
        Timepoint name -> review label (``"accepted"``, ``"merged into 3"``, ...) where the lesion
        has an observation.
    """

    id: int
    name: str = ""
    status: dict[str, LesionStatus] = field(default_factory=dict)
    site: str = "other"
    role: str = "not assessed"
    review: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", _check_id(self.id))
        if not self.name:
            object.__setattr__(self, "name", f"Lesion {self.id}")

    @property
    def is_node(self) -> bool:
        return self.site == "lymph node"

    @property
    def is_target(self) -> bool:
        return self.role == "target"

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


def _union_slices(a: tuple[slice, ...] | None, b: tuple[slice, ...] | None) -> tuple[slice, ...] | None:
    if a is None:
        return b
    if b is None:
        return a
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b, strict=True))


def _mask_slices(mask: LesionMask) -> tuple[slice, ...] | None:
    return None if mask.is_empty else mask.slices


class Study:
    """One patient's timepoints in order, its lesions and each lesion's own mask per timepoint.

    Parameters
    ----------
    timepoints : iterable of Timepoint
        At least one. Names must be unique. Their label maps (if any) are imported: one
        observation per id (engine status ``ok``, source ``"imported"``).
    patient_id : str
        Free text identifying the patient/case.
    sort_by_date : bool
        Order by acquisition date (stable for equal dates). Then either every timepoint has a
        date or none has (mixed is refused: the position of the undated ones would be a guess).
        ``False`` keeps the given order.
    imported_review : str
        Review state given to imported masks (default ``"accepted"``: a label map handed in is the
        reader's). A lesion first present at a follow-up after being absent at every earlier
        evaluated timepoint is imported as ``"new"``.

    Raises
    ------
    StudyError
        Empty study, duplicate names, or mixed dated/undated timepoints with ``sort_by_date``.
    """

    def __init__(self, timepoints: Iterable[Timepoint], patient_id: str = "patient", *, sort_by_date: bool = True,
                 imported_review: str = "accepted"):
        tps = list(timepoints)
        if not tps:
            raise StudyError("a study needs at least one timepoint")
        for tp in tps:
            if not isinstance(tp, Timepoint):
                raise StudyError(f"expected Timepoint objects, got {type(tp).__name__}")
        if imported_review not in REVIEW_STATES:
            raise StudyError(f"unknown review state {imported_review!r}; one of {', '.join(REVIEW_STATES)}")
        self.patient_id = str(patient_id)
        #: Identifies this review across saves and autosaves (recovery folders are named by it).
        self.session_id = uuid.uuid4().hex
        #: Engine name and settings (plain JSON values) the session was made with; saved with it.
        self.engine: dict = {}
        #: Free-form notes saved with the session (e.g. the reader's comment).
        self.notes: dict = {}
        #: The session folder this study was restored from or last saved to (None: never saved).
        self.session_folder = None
        self._timepoints: list[Timepoint] = []
        self._info: dict[int, _LesionInfo] = {}
        self._obs: dict[tuple[int, str], Observation] = {}
        self._not_evaluable: set[tuple[int, str]] = set()
        # timepoints read complete from a label map: a lesion without a mask there is absent, not "not tracked"
        self._evaluated: set[str] = set()
        self._candidates: dict[str, list[dict]] = {}
        self._next_id = 1
        self._revision = 0
        self._measure_cache: dict[tuple[int, str], tuple[LesionMask, object]] = {}
        self._check_unique([tp.name for tp in tps])
        self._timepoints = self._date_sorted(tps) if sort_by_date else tps
        for tp in self._timepoints:
            if tp.labels is not None:
                self._import_labels(tp, imported_review)

    @classmethod
    def from_results(cls, images: Sequence[Image], results: Sequence, *, patient_id: str = "patient",
                     prompts: Sequence = (), engine: str | None = None, settings: Mapping | None = None,
                     tracked: bool = True) -> Study:
        """A study from a pipeline run: ``results[k]`` (anything with ``.lesions``: ``{id: LesionResult}``,
        e.g. a SegmentationResult then one TrackingResult per follow-up) is timepoint ``k``.

        Timepoint 0's lesions are segmented from ``prompts`` (review ``"accepted"``); later ones
        were tracked from the timepoint before (``"unverified"`` until the reader checks them) unless
        ``tracked`` is false; a lesion first seen at a follow-up was added there (review ``"new"``).
        Timepoints beyond ``results`` are "not tracked". ``engine`` (and its ``settings``) are
        recorded in each mask's provenance (when the engine did not say) and in :attr:`engine`.
        Images keep their order.
        """
        study = cls([Timepoint(im) for im in images], patient_id, sort_by_date=False)
        names = study.names
        by_id: dict[int, list] = {}
        for p in prompts:
            by_id.setdefault(int(p.lesion_id), []).append(p)
        if len(results) > len(names):
            raise StudyError(f"{len(results)} results for {len(names)} timepoints")
        for k, res in enumerate(results):
            for lid, r in res.lesions.items():
                before = study.observation(lid, names[k - 1]) if k else None
                # a lesion that was not there the timepoint before cannot have been tracked from it: it was
                # added at this follow-up (a new lesion the reader confirmed), review "new"
                was_tracked = bool(k and tracked and before is not None and before.present)
                obs = study.set_result(lid, names[k], r, prompts=by_id.get(int(lid)) if k == 0 else None,
                                       tracked_from=names[k - 1] if was_tracked else None)
                if obs.provenance.engine is None:
                    obs.provenance.engine = engine
            if k and getattr(res, "new_candidates", None):
                study.set_candidates(names[k], res.new_candidates)
        if engine is not None:
            study.engine = {"name": engine, "settings": dict(settings or {})}
        if results:
            study._evaluated.add(names[0])  # the baseline was read whole: a lesion without a mask there is absent
        return study

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
    def revision(self) -> int:
        """Increases with every change of lesions, masks or states (autosave compares it)."""
        return self._revision

    def _touch(self) -> None:
        self._revision += 1

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

    def _name(self, timepoint: int | str | Timepoint) -> str:
        if isinstance(timepoint, Timepoint):
            return self[timepoint.name].name
        return self[timepoint].name

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
        self._touch()

    def sort_by_date(self) -> None:
        """Order the timepoints by acquisition date (see the class docstring for undated ones)."""
        self._timepoints = self._date_sorted(self._timepoints)
        self._touch()

    def add_timepoint(self, timepoint: Timepoint, *, imported_review: str = "accepted") -> int:
        """Insert a timepoint and return its index (its label map, if any, is imported).

        A dated timepoint goes after every timepoint with an earlier or equal date when all existing
        timepoints are dated; otherwise it is appended.
        """
        self._check_unique([*self.names, timepoint.name])
        dates = [tp.date for tp in self._timepoints]
        index = len(self._timepoints)
        if timepoint.date is not None and all(d is not None for d in dates):
            index = sum(1 for d in dates if d <= timepoint.date)
        self._timepoints.insert(index, timepoint)
        if timepoint.labels is not None:
            self._import_labels(timepoint, imported_review)
        self._touch()
        return index

    def remove_timepoint(self, name: str) -> Timepoint:
        """Remove and return a timepoint with its observations; refuses to leave the study empty."""
        i = self.index_of(name)
        if len(self._timepoints) == 1:
            raise StudyError("cannot remove the only timepoint of a study")
        self._not_evaluable = {(lid, tp) for lid, tp in self._not_evaluable if tp != name}
        self._evaluated.discard(name)
        for key in [k for k in self._obs if k[1] == name]:
            del self._obs[key]
        self._candidates.pop(name, None)
        self._touch()
        return self._timepoints.pop(i)

    # ------------------------------------------------------------ lesion identities
    def _register(self, lesion_id: int) -> int:
        lid = _check_id(lesion_id)
        if lid not in self._info:
            self._info[lid] = _LesionInfo()
        self._next_id = max(self._next_id, lid + 1)
        return lid

    @property
    def lesion_ids(self) -> list[int]:
        """Every lesion of the study, ascending."""
        return sorted(self._info)

    def next_lesion_id(self) -> int:
        """The id the next new lesion gets: one more than any id this study ever used.

        Removed ids are not handed out again, so a table exported earlier never sees one id
        name two different lesions.
        """
        return self._next_id

    @property
    def id_counter(self) -> int:
        """The monotone next-id counter (saved with a session)."""
        return self._next_id

    def reserve_ids(self, next_id: int) -> None:
        """Raise the counter to at least ``next_id`` (never lowers it)."""
        self._next_id = max(self._next_id, int(next_id))

    def new_lesion(self, name: str = "", *, site: str = "other", role: str = "not assessed") -> int:
        """Create a lesion with a fresh id (never used before in this study) and return the id."""
        lid = self._next_id
        self._register(lid)
        self.set_lesion_info(lid, name=name, site=site, role=role, check_rules=False)
        self._touch()
        return lid

    def add_lesion(self, lesion_id: int, name: str = "", *, site: str = "other", role: str = "not assessed") -> int:
        """Register a lesion with a given id (e.g. from a prompt file); refuses an id already used
        or removed in this study (ids are never reused)."""
        lid = _check_id(lesion_id)
        if lid in self._info:
            raise StudyError(f"lesion {lid} already exists")
        if lid < self._next_id and lid not in self._info:
            raise StudyError(f"id {lid} was used before in this study and is never reused; "
                             f"the next free id is {self._next_id}")
        self._register(lid)
        self.set_lesion_info(lid, name=name, site=site, role=role, check_rules=False)
        self._touch()
        return lid

    def _require_lesion(self, lesion_id: int) -> int:
        lid = _check_id(lesion_id)
        if lid not in self._info:
            raise StudyError(f"no lesion with id {lid}; ids in the study: {self.lesion_ids}")
        return lid

    def set_lesion_info(self, lesion_id: int, *, name: str | None = None, site: str | None = None,
                        role: str | None = None, check_rules: bool = True) -> None:
        """Change a lesion's name, site and/or RECIST role.

        Making a lesion a target (or changing a target's site) checks the RECIST 1.1 selection
        rules (:func:`.recist.target_rule_problems`: measurable at baseline, at most 5 targets and
        2 per organ) and raises :class:`~.recist.TargetRuleError` with the reasons, changing
        nothing, unless ``check_rules`` is false.
        """
        lid = self._require_lesion(lesion_id)
        info = self._info[lid]
        if site is not None and site not in SITES:
            raise StudyError(f"unknown site {site!r}; one of {', '.join(SITES)}")
        if role is not None and role not in ROLES:
            raise StudyError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
        new_site = info.site if site is None else site
        new_role = info.role if role is None else role
        if check_rules and new_role == "target" and (info.role != "target" or new_site != info.site):
            from .recist import TargetRuleError, target_rule_problems

            problems = target_rule_problems(self, lid, site=new_site)
            if problems:
                raise TargetRuleError(f"lesion {lid} cannot be a RECIST target: " + "; ".join(problems))
        if name is not None:
            info.name = str(name).strip()
        info.site, info.role = new_site, new_role
        self._touch()

    def rename_lesion(self, lesion_id: int, name: str) -> None:
        lid = self._register(lesion_id)
        self._info[lid].name = str(name).strip()
        self._touch()

    def lesion_name(self, lesion_id: int) -> str:
        lid = self._require_lesion(lesion_id)
        return self._info[lid].name or f"Lesion {lid}"

    def site(self, lesion_id: int) -> str:
        return self._info[self._require_lesion(lesion_id)].site

    def role(self, lesion_id: int) -> str:
        return self._info[self._require_lesion(lesion_id)].role

    def targets(self) -> list[int]:
        """Ids whose role is ``"target"``, ascending."""
        return [lid for lid in self.lesion_ids if self._info[lid].role == "target"]

    def non_targets(self) -> list[int]:
        return [lid for lid in self.lesion_ids if self._info[lid].role == "non-target"]

    def nodes(self) -> list[int]:
        """Ids whose site is ``"lymph node"``."""
        return [lid for lid in self.lesion_ids if self._info[lid].site == "lymph node"]

    # ------------------------------------------------------------ observations
    def observation(self, lesion_id: int, timepoint: int | str) -> Observation | None:
        """The lesion at the timepoint, or None when it has none there."""
        return self._obs.get((int(lesion_id), self._name(timepoint)))

    def observations(self, timepoint: int | str) -> dict[int, Observation]:
        """Lesion id -> observation at one timepoint, ascending id."""
        name = self._name(timepoint)
        return {lid: self._obs[(lid, name)] for lid in self.lesion_ids if (lid, name) in self._obs}

    def lesion_masks(self, timepoint: int | str, *, present_only: bool = True) -> dict[int, LesionMask]:
        """Each lesion's own whole mask at a timepoint (for ``Engine.track``); by default only the
        lesions present there (not disappeared, merged or empty)."""
        return {lid: o.mask for lid, o in self.observations(timepoint).items() if o.present or not present_only}

    def mask(self, lesion_id: int, timepoint: int | str) -> LesionMask | None:
        obs = self.observation(lesion_id, timepoint)
        return None if obs is None else obs.mask

    def set_result(
        self,
        lesion_id: int,
        timepoint: int | str,
        result: LesionResult | LesionMask,
        *,
        review: str | None = None,
        prompts: Sequence | None = None,
        provenance: Provenance | None = None,
        source: str | None = None,
        tracked_from: str | None = None,
        merged_into: int | None = None,
        engine_details: Mapping | None = None,
    ) -> Observation:
        """Store one lesion's own mask at one timepoint (an engine result, a manual mask, ...).

        The lesion is registered if new (its id then counts as used). ``review`` defaults to
        ``"unverified"`` for a tracked result, ``"new"`` for a lesion first seen at a follow-up,
        else ``"accepted"``; a re-segmentation keeps ``"new"``. ``provenance`` defaults to one
        built from ``engine_details`` (``{"engine", "engine_version", "model", "folds", "tta",
        "parameters"}``; default: the study's :attr:`engine`) overridden by the result's own
        ``provenance`` dict. Returns the observation.
        """
        name = self._name(timepoint)
        tp = self[name]
        if isinstance(result, LesionMask):
            result = LesionResult(int(lesion_id), result, "ok")
        if result.mask.geometry is not tp.geometry:
            tp.geometry.require_same_grid(result.mask.geometry, what=f"lesion {lesion_id}'s mask and {name}")
        lid = self._register(lesion_id)
        if int(result.lesion_id) != lid:
            result = replace(result, lesion_id=lid)
        old = self._obs.get((lid, name))
        if source is None:
            source = "tracked" if tracked_from else "segmented"
        if review is None:
            if tracked_from:
                review = "unverified"
            elif (old is not None and old.review == "new") or (self.index_of(name) > 0 and not any(
                (o := self._obs.get((lid, n))) is not None and o.present for n in self.names[: self.index_of(name)]
            )):
                review = "new"
            else:
                review = "accepted"
        if provenance is None:
            details = dict(engine_details) if engine_details is not None else (
                self._engine_details() if source in ("segmented", "tracked") else {})
            details.update(result.provenance or {})
            provenance = Provenance.from_engine(details, source=source, tracked_from=tracked_from,
                                                prompt=_prompt_dicts(prompts or []))
        obs = Observation(lid, name, result, review, merged_into if review == "merged" else None,
                          list(prompts) if prompts is not None else (list(old.prompts) if old else []),
                          provenance, old.unequivocal_progression if old else False,
                          (old.revision + 1) if old else 0)
        self._obs[(lid, name)] = obs
        self._not_evaluable.discard((lid, name))
        region = _union_slices(_mask_slices(old.mask) if old else None, _mask_slices(result.mask))
        self._repaint(tp, region)
        self._touch()
        return obs

    def later_timepoints(self, timepoint: int | str) -> list[str]:
        """Names of the timepoints after ``timepoint``, in order (what "Re-propagate from here" re-tracks)."""
        return self.names[self.index_of(self._name(timepoint)) + 1:]

    def apply_tracking(self, from_timepoint: int | str, results: Sequence, **kw) -> list[str]:
        """Store a propagation from ``from_timepoint``: ``results[i]`` (``.lesions``, optionally
        ``.new_candidates``; e.g. ``api.iter_track_series(...).results``) is the i-th timepoint after
        it, tracked from the one before. Only the lesions in each result are replaced (review
        ``"unverified"``); earlier timepoints and other lesions are untouched. Returns the names set."""
        later = self.later_timepoints(from_timepoint)
        if len(results) > len(later):
            raise StudyError(f"{len(results)} tracking results for {len(later)} later timepoint(s)")
        previous = self._name(from_timepoint)
        for name, res in zip(later, results, strict=False):
            self.set_results(name, res.lesions, tracked_from=previous, **kw)
            if getattr(res, "new_candidates", None) is not None:
                self.set_candidates(name, res.new_candidates)
            previous = name
        return later[: len(results)]

    def _engine_details(self) -> dict:
        """Provenance defaults from :attr:`engine` (``{"name", "settings"}``, as the session keeps it)."""
        if not self.engine:
            return {}
        settings = dict(self.engine.get("settings") or {})
        out: dict = {"engine": self.engine.get("name")}
        for key, target in (("checkpoint", "model"), ("model", "model"), ("folds", "folds"), ("tta", "tta"),
                            ("engine_version", "engine_version")):
            if settings.get(key) is not None:
                out[target] = settings.pop(key)
        out["parameters"] = _plain(settings)
        return out

    def set_results(self, timepoint: int | str, results: Mapping[int, LesionResult], **kw) -> list[Observation]:
        """:meth:`set_result` for every lesion of an engine result (``result.lesions``)."""
        return [self.set_result(lid, timepoint, r, **kw) for lid, r in results.items()]

    def set_review(self, lesion_id: int, timepoint: int | str, state: str, *, merged_into: int | None = None) -> None:
        """Record the reader's verdict on a lesion at a timepoint.

        ``"accepted"``: the mask is right. ``"disappeared"``: the lesion is gone (counts 0 mm; the
        proposed mask is kept but no longer drawn or measured). ``"merged"`` with ``merged_into``:
        it coalesced with that lesion (RECIST: counts 0 mm, the other carries the size).
        ``"new"``: a confirmed new lesion (makes that follow-up PD). ``"unverified"``: undo.
        A timepoint where the lesion has no observation gets an empty one (e.g. disappeared).
        """
        lid = self._require_lesion(lesion_id)
        name = self._name(timepoint)
        if state not in REVIEW_STATES:
            raise StudyError(f"unknown review state {state!r}; one of {', '.join(REVIEW_STATES)}")
        if state == "merged":
            if merged_into is None:
                raise StudyError(f"lesion {lid}: say which lesion it merged into (merged_into)")
            target = self._require_lesion(merged_into)
            if target == lid:
                raise StudyError(f"lesion {lid} cannot merge into itself")
        elif merged_into is not None:
            raise StudyError("merged_into only goes with the review state 'merged'")
        if state == "new" and self.index_of(name) == 0:
            raise StudyError("a lesion at the baseline cannot be 'new'; new lesions appear at follow-ups")
        obs = self._obs.get((lid, name))
        if obs is None:
            obs = Observation(lid, name, LesionResult(lid, LesionMask.empty(self[name].geometry), "empty"),
                              provenance=Provenance(source="manual"))
            self._obs[(lid, name)] = obs
        region = _mask_slices(obs.mask)
        obs.review = state
        obs.merged_into = int(merged_into) if state == "merged" else None
        obs.revision += 1
        self._not_evaluable.discard((lid, name))
        self._repaint(self[name], region)
        self._touch()

    def accept(self, lesion_id: int, timepoint: int | str) -> None:
        self.set_review(lesion_id, timepoint, "accepted")

    def set_unequivocal_progression(self, lesion_id: int, timepoint: int | str, value: bool = True) -> None:
        """The reader's call that a non-target lesion progressed unequivocally (RECIST 1.1 4.3.2)."""
        lid = self._require_lesion(lesion_id)
        obs = self.observation(lid, timepoint)
        if obs is None:
            raise StudyError(f"lesion {lid} has no observation at {self._name(timepoint)}")
        obs.unequivocal_progression = bool(value)
        obs.revision += 1
        self._touch()

    def set_prompts(self, lesion_id: int, timepoint: int | str, prompts: Sequence) -> None:
        obs = self.observation(self._require_lesion(lesion_id), timepoint)
        if obs is None:
            raise StudyError(f"lesion {lesion_id} has no observation at {self._name(timepoint)}")
        obs.prompts = list(prompts)
        obs.provenance.prompt = _prompt_dicts(prompts)
        obs.revision += 1
        self._touch()

    def unverified(self, *, targets_only: bool = False) -> list[tuple[int, str]]:
        """(lesion id, timepoint name) still awaiting the reader's verdict, in study order."""
        out = []
        for name in self.names:
            for lid, obs in self.observations(name).items():
                if obs.review == "unverified" and (not targets_only or self._info[lid].role == "target"):
                    out.append((lid, name))
        return out

    def drop_observation(self, lesion_id: int, timepoint: int | str) -> None:
        """Forget one lesion at one timepoint (it becomes "not tracked" there); the id stays used."""
        lid = self._require_lesion(lesion_id)
        name = self._name(timepoint)
        obs = self._obs.pop((lid, name), None)
        if obs is not None:
            self._repaint(self[name], _mask_slices(obs.mask))
            self._touch()

    # ------------------------------------------------------------ new-lesion candidates
    def set_candidates(self, timepoint: int | str, candidates: Sequence[Mapping]) -> None:
        """The engine's proposed new lesions at a follow-up (``TrackingResult.new_candidates``:
        ``{"centroid_mm", "box", "score"}``), each ``"proposed"`` until accepted or dismissed.
        Replaces earlier proposals there (accepted ones stay recorded)."""
        name = self._name(timepoint)
        kept = [c for c in self._candidates.get(name, []) if c.get("state") == "accepted"]
        fresh = [{**{str(k): _plain(v) for k, v in dict(c).items()}, "state": "proposed", "lesion_id": None}
                 for c in candidates]
        self._candidates[name] = kept + fresh
        self._touch()

    def candidates(self, timepoint: int | str, *, state: str | None = "proposed") -> list[dict]:
        """Copies of the candidates at a timepoint (with their index in ``"index"``), by state
        (``"proposed"``, ``"accepted"``, ``"dismissed"``; None: all)."""
        name = self._name(timepoint)
        return [{**c, "index": i} for i, c in enumerate(self._candidates.get(name, []))
                if state is None or c.get("state") == state]

    def _candidate(self, name: str, index: int) -> dict:
        items = self._candidates.get(name, [])
        if not 0 <= int(index) < len(items):
            raise StudyError(f"no candidate {index} at {name} ({len(items)} proposed there)")
        cand = items[int(index)]
        if cand.get("state") != "proposed":
            raise StudyError(f"candidate {index} at {name} was already {cand.get('state')}")
        return cand

    def dismiss_candidate(self, timepoint: int | str, index: int) -> None:
        """The reader says a proposed new lesion is not one (it is not offered again)."""
        self._candidate(self._name(timepoint), index)["state"] = "dismissed"
        self._touch()

    def accept_candidate(self, timepoint: int | str, index: int, result: LesionResult | LesionMask, *,
                         name: str = "", site: str = "other", prompts: Sequence | None = None) -> int:
        """The reader confirms a proposed new lesion: a new lesion (fresh id) with this mask (the
        engine's segmentation from the candidate's box or point), review ``"new"``. Returns its id."""
        tp_name = self._name(timepoint)
        cand = self._candidate(tp_name, index)
        if self.index_of(tp_name) == 0:
            raise StudyError("new lesions appear at follow-ups, not at the baseline")
        lid = self.new_lesion(name, site=site)
        if isinstance(result, LesionResult):
            result = replace(result, lesion_id=lid)
        self.set_result(lid, tp_name, result, review="new", prompts=prompts, source="segmented")
        cand["state"], cand["lesion_id"] = "accepted", lid
        self._touch()
        return lid

    # ------------------------------------------------------------ label maps
    def _import_labels(self, tp: Timepoint, review: str) -> None:
        found = results_from_label_map(tp.labels)
        self._evaluated.add(tp.name)
        k = self.index_of(tp.name)
        for lid, res in found.items():
            self._register(lid)
            state = review
            if k > 0 and review == "accepted":
                earlier = [self[n] for n in self.names[:k]]
                evaluated = [t for t in earlier if t.name in self._evaluated]
                if evaluated and not any(self._obs.get((lid, t.name)) is not None for t in evaluated):
                    state = "new"
            prov = Provenance(source="imported", parameters={"label_map": tp.labels.name})
            self._obs[(lid, tp.name)] = Observation(lid, tp.name, res, state, provenance=prov)

    def set_labels(self, timepoint: int | str, labels: LabelMap | None, *, review: str = "accepted") -> None:
        """Replace every observation at a timepoint by the lesions of ``labels`` (imported).

        ``None`` clears the timepoint (its lesions become "not tracked" there).
        """
        name = self._name(timepoint)
        tp = self[name]
        for key in [k for k in self._obs if k[1] == name]:
            del self._obs[key]
        self._evaluated.discard(name)
        tp.set_labels(labels)
        if labels is not None:
            self._import_labels(tp, review)
        self._touch()

    def render_labels(self, timepoint: int | str, name: str | None = None) -> LabelMap:
        """A fresh display map of a timepoint from the lesions' own masks (ascending id, higher
        id wins where masks overlap; disappeared/merged lesions are not drawn)."""
        tp = self[self._name(timepoint)]
        top = max(self.lesion_ids, default=0)
        dtype = np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32
        out = LabelMap(np.zeros(tp.geometry.shape, dtype=dtype), tp.geometry, name or f"{tp.name}_lesions")
        for lid, obs in self.observations(tp.name).items():
            if obs.present:
                obs.mask.paste_into(out.array, lid)
        return out

    def _repaint(self, tp: Timepoint, region: tuple[slice, ...] | None) -> None:
        """Redraw the display map inside ``region`` from the lesions' own masks (in place)."""
        labels = tp.ensure_labels()
        top = max(self.lesion_ids, default=0)
        if top > np.iinfo(labels.array.dtype).max:
            labels.array = labels.array.astype(np.uint32)
        if region is None:
            return
        view = labels.array[region]
        view[...] = 0
        lo = np.array([s.start for s in region])
        hi = np.array([s.stop for s in region])
        for lid, obs in self.observations(tp.name).items():
            if not obs.present:
                continue
            m = obs.mask
            a, b = np.maximum(lo, m.start), np.minimum(hi, m.stop)
            if np.any(b <= a):
                continue
            src = m.array[tuple(slice(int(x) - s, int(y) - s) for x, y, s in zip(a, b, m.start, strict=True))]
            dst = view[tuple(slice(int(x) - s, int(y) - s) for x, y, s in zip(a, b, lo, strict=True))]
            dst[src] = lid

    def apply_label_edit(
        self,
        timepoint: int | str,
        edited: np.ndarray,
        *,
        region: tuple[slice, ...] | None = None,
        before: np.ndarray | None = None,
        user: str | None = None,
        when: str | None = None,
    ) -> EditResult:
        """Take a reader's edit of the display map (napari's label tools) into the lesions' masks.

        ``edited`` is the edited display array (full grid). Only voxels that differ from the
        study's own display map (inside ``region`` when given: the bounding box of the stroke) are
        looked at, or from ``before`` (the region's values before the edit, region-shaped) when the
        labels layer paints straight into the study's display array (then the two are equal after
        the stroke; :meth:`apply_paint` takes napari's paint event instead). A voxel changed from
        lesion a to b leaves a's mask and joins b's; a lesion hidden under a there (overlaps) keeps
        it, except where the voxel was erased (0: no lesion there at all). Each lesion whose mask
        changed gets one manual edit in its provenance. A painted id that this study never had becomes a new lesion
        (review ``"new"`` at a follow-up); a painted id that was used before and removed is given a
        fresh id (ids are never reused), and the display map is redrawn from the masks (so it may
        differ from ``edited`` there).
        """
        name = self._name(timepoint)
        tp = self[name]
        labels = tp.ensure_labels()
        edited = np.asarray(edited)
        if tuple(edited.shape) != tp.geometry.shape:
            raise StudyError(f"edited map has shape {edited.shape}, the timepoint {name} {tp.geometry.shape}")
        full = tuple(slice(0, n) for n in tp.geometry.shape)
        if region is not None:
            full = tuple(slice(max(0, s.start or 0), min(n, n if s.stop is None else s.stop))
                         for s, n in zip(region, tp.geometry.shape, strict=True))
        region = full
        if before is not None:
            old = np.asarray(before)
            if old.shape != tuple(s.stop - s.start for s in region):
                size = tuple(s.stop - s.start for s in region)
                raise StudyError(f"'before' has shape {old.shape}, the region {size}")
        else:
            old = labels.array[region]
        new = edited[region]
        changed = old != new
        if not changed.any():
            return EditResult()
        idx = np.nonzero(changed)
        lo = np.array([int(i.min()) for i in idx])
        hi = np.array([int(i.max()) + 1 for i in idx])
        box = tuple(slice(int(r.start + a), int(r.start + b)) for r, a, b in zip(region, lo, hi, strict=True))
        sub_changed = changed[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))]
        sub_new = new[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))]
        ids = {int(v) for v in np.unique(old[changed])} | {int(v) for v in np.unique(new[changed])}
        return self._apply_changes(name, box, sub_changed, sub_new, ids, user, when)

    def apply_paint(self, timepoint: int | str, indices, old_values, new_value: int, *, user: str | None = None,
                    when: str | None = None) -> EditResult:
        """:meth:`apply_label_edit` from one napari paint/fill/erase event: the voxel ``indices``
        (a tuple of z, y, x index arrays), their ``old_values`` and the ``new_value`` painted (0: erase)."""
        name = self._name(timepoint)
        tp = self[name]
        idx = tuple(np.asarray(i, dtype=np.int64).reshape(-1) for i in indices)
        if len(idx) != 3 or len({i.size for i in idx}) != 1:
            raise StudyError("indices must be three equally long index arrays (z, y, x)")
        old_values = np.broadcast_to(np.asarray(old_values).reshape(-1), idx[0].shape)
        new_values = np.broadcast_to(np.asarray(new_value).reshape(-1), idx[0].shape)
        keep = old_values != new_values
        idx = tuple(i[keep] for i in idx)
        if idx[0].size == 0:
            return EditResult()
        for i, n in zip(idx, tp.geometry.shape, strict=True):
            if i.min() < 0 or i.max() >= n:
                raise StudyError(f"painted voxels outside the timepoint {name} grid {tp.geometry.shape}")
        lo = [int(i.min()) for i in idx]
        box = tuple(slice(a, int(i.max()) + 1) for a, i in zip(lo, idx, strict=True))
        shape = tuple(b.stop - b.start for b in box)
        sub_changed = np.zeros(shape, bool)
        local = tuple(i - a for i, a in zip(idx, lo, strict=True))
        sub_changed[local] = True
        sub_new = np.zeros(shape, dtype=np.int64)
        sub_new[local] = new_values[keep]
        ids = {int(v) for v in np.unique(old_values[keep])} | {int(v) for v in np.unique(new_values[keep])}
        return self._apply_changes(name, box, sub_changed, sub_new, ids, user, when)

    def apply_napari_paint(self, timepoint: int | str, atoms, *, user: str | None = None,
                           when: str | None = None) -> EditResult:
        """:meth:`apply_paint` for the value of a napari Labels ``events.paint`` (a list of history
        atoms: masked atoms with ``slice_key``, ``mask``, ``old_values``, ``new_value``, or
        ``(indices, old_values, new_values)`` tuples). No napari import: the atoms are read by shape."""
        name = self._name(timepoint)
        total = EditResult()
        for atom in atoms:
            if hasattr(atom, "slice_key"):
                box = tuple(atom.slice_key)
                region = tuple(slice(b.start or 0, b.stop if b.stop is not None else n)
                               for b, n in zip(box, self[name].geometry.shape, strict=True))
                shape = tuple(b.stop - b.start for b in region)
                old = np.asarray(atom.old_values)
                if atom.mask is None:
                    mask = np.ones(shape, bool)
                    old = old.reshape(shape)[mask]
                else:
                    mask = np.asarray(atom.mask, bool)
                local = np.nonzero(mask)
                indices = tuple(i + b.start for i, b in zip(local, region, strict=True))
                res = self.apply_paint(name, indices, old, atom.new_value, user=user, when=when)
            else:
                indices, old, new = atom
                res = self.apply_paint(name, tuple(indices), old, new, user=user, when=when)
            for lid in res.changed:
                if lid not in total.changed:
                    total.changed.append(lid)
            total.added += [i for i in res.added if i not in total.added]
            total.remapped.update(res.remapped)
            total.messages += res.messages
            total.region = _union_slices(total.region, res.region)
        return total

    def _apply_changes(self, name: str, box: tuple[slice, ...], sub_changed: np.ndarray, sub_new: np.ndarray,
                       ids: set[int], user: str | None, when: str | None) -> EditResult:
        tp = self[name]
        out = EditResult()
        ids = set(ids)
        ids.discard(0)
        erased = sub_changed & (sub_new == 0)
        hidden: set[int] = set()
        if erased.any():
            # the eraser means "no lesion here": lesions hidden under the one shown lose those voxels too
            lo = np.array([b.start for b in box])
            for lid, obs in self.observations(name).items():
                if lid in ids or not obs.present:
                    continue
                m = obs.mask
                a, b = np.maximum(lo, m.start), np.minimum([x.stop for x in box], m.stop)
                if np.any(b <= a):
                    continue
                own = m.array[tuple(slice(int(x) - s, int(y) - s) for x, y, s in zip(a, b, m.start, strict=True))]
                er = erased[tuple(slice(int(x) - s, int(y) - s) for x, y, s in zip(a, b, lo, strict=True))]
                if (own & er).any():
                    hidden.add(lid)
        for painted in sorted(ids | hidden):
            lid = painted
            if painted not in self._info:
                if painted < self._next_id:
                    lid = self._next_id
                    out.remapped[painted] = lid
                    out.messages.append(f"id {painted} was used before in this study and is never reused: "
                                        f"the painted lesion is lesion {lid}")
                out.added.append(lid)
                self._register(lid)
            obs = self._obs.get((lid, name))
            own = obs.mask if obs is not None and obs.present else LesionMask.empty(tp.geometry)
            bbox = _union_slices(_mask_slices(own), box)
            start = [s.start for s in bbox]
            crop = np.zeros([s.stop - s.start for s in bbox], dtype=bool)
            if not own.is_empty:
                crop[tuple(slice(a - s, b - s) for a, b, s in
                           zip(own.start, own.stop, start, strict=True))] = own.array
            target = crop[tuple(slice(b.start - s, b.stop - s) for b, s in zip(box, start, strict=True))]
            if painted in hidden:
                target[erased] = False
            else:
                target[sub_changed] = sub_new[sub_changed] == painted
            mask = LesionMask.from_crop(tp.geometry, start, crop)
            if obs is not None and obs.present and mask.start == own.start and mask.array.shape == own.array.shape \
                    and np.array_equal(mask.array, own.array):
                continue  # e.g. painted where it already was (hidden under another lesion)
            if obs is None or not obs.present:
                review = None
                if obs is not None and obs.review in ("disappeared", "merged"):
                    review = "accepted"
                obs = self.set_result(lid, name, LesionResult(lid, mask, "ok"), review=review, source="manual")
                obs.provenance.record_edit(when, user)
            else:
                obs.result = replace(obs.result, mask=mask)
                if obs.result.status in ("empty", "lost") and not mask.is_empty:
                    obs.result.status = "ok"
                elif mask.is_empty:
                    obs.result.status = "empty"
                obs.provenance.record_edit(when, user)
                obs.revision += 1
            out.changed.append(lid)
        self._repaint(tp, box)
        out.region = tuple(box)
        self._touch()
        return out

    def sync_label_array(self, timepoint: int | str, array: np.ndarray, *, region: tuple[slice, ...] | None = None,
                         user: str | None = None) -> EditResult:
        """Keep a labels layer that has its **own** array in step with the study, whatever changed it
        (paint, fill, undo, redo, scripts): the differences to the study's display map (inside
        ``region``) are taken in as edits (:meth:`apply_label_edit`), then the study's rendering is
        written back into ``array`` where it differs (a hidden overlap shown again, a remapped id).
        Returns the edit (``region``: what to refresh)."""
        name = self._name(timepoint)
        res = self.apply_label_edit(name, array, region=region, user=user)
        if res.region is not None:
            shown = self[name].labels.array[res.region]
            view = array[res.region]
            differs = view != shown
            if differs.any():
                view[differs] = shown[differs]
        return res

    # -------------------------------------------------------------- status
    def lesion_ids_by_timepoint(self) -> dict[str, list[int]]:
        """Timepoint name -> ascending lesion ids present there, in study order."""
        return {name: [lid for lid, o in self.observations(name).items() if o.present] for name in self.names}

    def status(self, lesion_id: int, timepoint: str) -> LesionStatus:
        lid = int(lesion_id)
        name = self._name(timepoint)
        if (lid, name) in self._not_evaluable:
            return "not_evaluable"
        obs = self._obs.get((lid, name))
        if obs is not None:
            return "present" if obs.present else "absent"
        return "absent" if name in self._evaluated else "not_evaluable"

    def table_status(self, lesion_id: int, timepoint: str) -> str:
        """Reader-facing status (one of :data:`TABLE_STATUSES`) of a lesion at a timepoint.

        "not tracked" (no observation and the timepoint was never evaluated) is distinct from
        "disappeared" (the reader said so, or it was present before and is absent now) and from
        "lost" (the tracker did not find it and nobody has looked yet).
        """
        lid = self._require_lesion(lesion_id)
        name = self._name(timepoint)
        if (lid, name) in self._not_evaluable:
            return "not evaluable"
        obs = self._obs.get((lid, name))
        if obs is None:
            if name not in self._evaluated:
                return "not tracked"
            k = self.index_of(name)
            before = any(self.status(lid, n) == "present" for n in self.names[:k])
            return "disappeared" if before else "absent"  # evaluated there, not (yet) seen
        if obs.review == "merged":
            return "merged"
        if obs.review == "disappeared":
            return "disappeared"
        if obs.mask.is_empty:  # tracked and not found: "lost" until the reader says it is gone
            return "lost" if obs.review == "unverified" else "disappeared"
        if obs.review == "unverified":
            return "unverified"
        if obs.review == "new":
            return "new"
        return "present"

    def is_new_at(self, lesion_id: int, timepoint: str) -> bool:
        """A confirmed new lesion at this follow-up (review ``"new"`` and present)."""
        obs = self.observation(lesion_id, timepoint)
        return obs is not None and obs.review == "new" and obs.present and self.index_of(self._name(timepoint)) > 0

    def new_lesion_ids(self, timepoint: str) -> list[int]:
        return [lid for lid in self.lesion_ids if self.is_new_at(lid, timepoint)]

    def lesions(self) -> list[Lesion]:
        """Snapshots of every lesion with its status at each timepoint (in study order)."""
        out = []
        for lid in self.lesion_ids:
            info = self._info[lid]
            status = {name: self.status(lid, name) for name in self.names}
            review = {name: o.review_label for name in self.names if (o := self._obs.get((lid, name))) is not None}
            out.append(Lesion(lid, info.name, status, info.site, info.role, review))
        return out

    def lesion(self, lesion_id: int) -> Lesion:
        for les in self.lesions():
            if les.id == lesion_id:
                return les
        raise StudyError(f"no lesion with id {lesion_id}; ids in the study: {self.lesion_ids}")

    def set_not_evaluable(self, lesion_id: int, timepoint: str, value: bool = True) -> None:
        """Mark (or unmark) a lesion as not evaluable at a timepoint (e.g. outside the field of view)."""
        key = (_check_id(lesion_id), self[timepoint].name)
        if value:
            self._not_evaluable.add(key)
        else:
            self._not_evaluable.discard(key)
        self._touch()

    def remove_lesion(self, lesion_id: int) -> int:
        """Remove a lesion from the study (every timepoint, its display voxels cleared in place) and
        forget its name and marks. Its id is never handed out again.

        Returns the number of voxels its own masks had. Other lesions' ids and masks are untouched
        (where they overlapped the removed one they show again).
        """
        lid = self._require_lesion(lesion_id)
        cleared = 0
        for tp in self._timepoints:
            obs = self._obs.pop((lid, tp.name), None)
            if obs is not None:
                cleared += obs.mask.voxels
                if tp.labels is not None:
                    self._repaint(tp, _mask_slices(obs.mask))
        del self._info[lid]
        self._not_evaluable = {(i, tp) for i, tp in self._not_evaluable if i != lid}
        self._touch()
        return cleared

    def carry_over(self, old: Study) -> list[str]:
        """Take over what ``old`` knew, for the timepoints both have (same name and grid): every
        lesion's name, site and role, each lesion's own mask there (overlaps kept), review,
        prompts, provenance and marks, the candidates, the id counter, the engine, notes and the
        session id/folder. For those timepoints ``old``'s observations replace the ones imported
        here (their display maps are redrawn in place); other timepoints keep theirs. For a study
        rebuilt when timepoints are added or removed. Returns the shared timepoint names."""
        shared = [n for n in self.names if n in old.names and self[n].geometry.same_grid(old[n].geometry)]
        for lid, info in old._info.items():
            self._register(lid)
            self._info[lid] = _LesionInfo(info.name, info.site, info.role)
        for name in shared:
            for key in [k for k in self._obs if k[1] == name]:
                del self._obs[key]
            self._evaluated.discard(name)
        for (lid, name), obs in old._obs.items():
            if name in shared:
                self._obs[(lid, name)] = replace(obs, prompts=list(obs.prompts))
        self._not_evaluable = {(lid, n) for lid, n in self._not_evaluable if n not in shared} | {
            (lid, n) for lid, n in old._not_evaluable if n in shared}
        self._evaluated |= {n for n in old._evaluated if n in shared}
        for name in shared:
            if name in old._candidates:
                self._candidates[name] = [dict(c) for c in old._candidates[name]]
        self.reserve_ids(old.id_counter)
        self.engine, self.notes = dict(old.engine), dict(old.notes)
        self.session_id, self.session_folder = old.session_id, old.session_folder
        for name in shared:
            tp = self[name]
            self._repaint(tp, tuple(slice(0, n) for n in tp.geometry.shape))
        self._touch()
        return shared

    def take_lesion(self, lesion_id: int) -> dict:
        """Remove a lesion and return everything about it (name, site, role, every observation with
        its mask, prompts, review and provenance, its not-evaluable marks), for an undo:
        :meth:`put_back_lesion` restores it exactly. Its id stays used meanwhile."""
        lid = self._require_lesion(lesion_id)
        info = self._info[lid]
        record = {
            "id": lid,
            "info": _LesionInfo(info.name, info.site, info.role),
            "observations": {name: replace(o, prompts=list(o.prompts)) for name in self.names
                             if (o := self._obs.get((lid, name))) is not None},
            "not_evaluable": sorted(tp for i, tp in self._not_evaluable if i == lid),
        }
        self.remove_lesion(lid)
        return record

    def put_back_lesion(self, record: Mapping) -> None:
        """Undo :meth:`take_lesion` (the id must not be in use again, which the counter guarantees)."""
        lid = int(record["id"])
        if lid in self._info:
            raise StudyError(f"lesion {lid} exists; it cannot be put back twice")
        self._register(lid)
        info = record["info"]
        self._info[lid] = _LesionInfo(info.name, info.site, info.role)
        for name, obs in record["observations"].items():
            if name not in self.names:
                continue
            self._obs[(lid, name)] = obs
            self._repaint(self[name], _mask_slices(obs.mask))
        self._not_evaluable |= {(lid, tp) for tp in record["not_evaluable"] if tp in self.names}
        self._touch()

    # -------------------------------------------------------------- measurements
    def measurements(self, lesion_ids: Iterable[int] | None = None) -> list:
        """Lesion table rows (:class:`~.measurements.LesionMeasurement`), one per lesion per
        evaluable timepoint, each measured on the lesion's **own** mask (overlaps kept apart).

        A lesion not evaluable at a timepoint (marked so, or not tracked there) gets no row; one
        absent, disappeared or merged gets a row with ``present=False`` (0 mm for RECIST). Rows are
        cached per observation revision, so after an edit only the changed lesion is measured again.
        """
        from .measurements import LesionMeasurement, measure_lesion_mask

        ids = self.lesion_ids if lesion_ids is None else [int(i) for i in lesion_ids]
        rows = []
        for k, tp in enumerate(self._timepoints):
            for lid in ids:
                if lid not in self._info or self.status(lid, tp.name) == "not_evaluable":
                    continue
                name = self.lesion_name(lid)
                obs = self._obs.get((lid, tp.name))
                if obs is None or not obs.present:
                    rows.append(LesionMeasurement(lesion_id=lid, timepoint=k, present=False, name=name,
                                                  date=tp.acquisition_date, image=tp.name))
                    continue
                key = (lid, tp.name)
                cached = self._measure_cache.get(key)
                if cached is not None and cached[0] is obs.mask:
                    row = cached[1]
                else:
                    row = measure_lesion_mask(obs.mask, tp.image, lesion_id=lid)
                    self._measure_cache[key] = (obs.mask, row)
                rows.append(replace(row, timepoint=k, name=name, date=tp.acquisition_date, image=tp.name))
        return rows

    #: Columns of :meth:`review_rows` (one row per lesion per timepoint).
    REVIEW_COLUMNS: tuple[str, ...] = (
        "lesion_id", "name", "site", "role", "timepoint", "index", "date", "status", "review", "volume_ml",
        "long_axis_mm", "short_axis_mm", "recist_mm", "engine_status", "engine_notes", "source", "engine",
        "engine_version", "package_version", "model", "folds", "tta", "parameters", "prompt", "tracked_from",
        "edits", "last_edit", "user",
    )

    def review_rows(self) -> list[dict]:
        """The lesion table with provenance, one row per lesion per timepoint (columns
        :attr:`REVIEW_COLUMNS`; plain values for CSV/JSON; sizes empty where not measured).
        ``recist_mm`` is the diameter RECIST uses (short axis for lymph nodes)."""
        import json

        rows = {(r.lesion_id, r.timepoint): r for r in self.measurements()}
        out = []
        for lid in self.lesion_ids:
            info = self._info[lid]
            for k, name in enumerate(self.names):
                m = rows.get((lid, k))
                obs = self._obs.get((lid, name))
                p = obs.provenance if obs is not None else None
                measured = m is not None and m.present
                row = {
                    "lesion_id": lid, "name": self.lesion_name(lid), "site": info.site, "role": info.role,
                    "timepoint": name, "index": k, "date": self[name].acquisition_date or "",
                    "status": self.table_status(lid, name), "review": obs.review_label if obs else "",
                    "volume_ml": round(m.volume_ml, 4) if measured else ("0" if m is not None else ""),
                    "long_axis_mm": round(m.long_axis_mm, 2) if measured else ("0" if m is not None else ""),
                    "short_axis_mm": round(m.short_axis_mm, 2) if measured else ("0" if m is not None else ""),
                    "recist_mm": (round(m.short_axis_mm if info.site == "lymph node" else m.long_axis_mm, 2)
                                  if measured else ("0" if m is not None else "")),
                    "engine_status": obs.result.status if obs else "",
                    "engine_notes": "; ".join(obs.result.messages) if obs else "",
                }
                if p is None:
                    row.update({c: "" for c in self.REVIEW_COLUMNS if c not in row})
                else:
                    row.update({
                        "source": p.source, "engine": p.engine or "", "engine_version": p.engine_version or "",
                        "package_version": p.package_version or "", "model": p.model or "",
                        "folds": " ".join(map(str, p.folds)) if p.folds else "",
                        "tta": "" if p.tta is None else ("on" if p.tta else "off"),
                        "parameters": json.dumps(_plain(p.parameters), sort_keys=True) if p.parameters else "",
                        "prompt": json.dumps(p.prompt) if p.prompt else "", "tracked_from": p.tracked_from or "",
                        "edits": p.edits, "last_edit": p.last_edit or "", "user": p.user,
                    })
                out.append(row)
        return out

    def review_csv(self) -> str:
        """:meth:`review_rows` as CSV text (for the clipboard or a file)."""
        import csv
        import io

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(self.REVIEW_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.review_rows())
        return buf.getvalue()

    # -------------------------------------------------------------- snapshots
    def snapshot_state(self) -> dict:
        """Everything a session save needs, copied (cheap: masks are shared, never changed in place).

        Call on the thread that changes the study; the returned dict can be written from a worker.
        """
        lesions = [
            {"id": lid, "name": i.name, "site": i.site, "role": i.role}
            for lid, i in sorted(self._info.items())
        ]
        obs = []
        for name in self.names:
            for lid, o in self.observations(name).items():
                obs.append({
                    "lesion_id": lid,
                    "timepoint": name,
                    "mask": o.mask,
                    "engine_status": o.result.status,
                    "messages": list(o.result.messages),
                    "engine_details": dict(o.result.provenance),
                    "review": o.review,
                    "merged_into": o.merged_into,
                    "prompts": _prompt_dicts(o.prompts),
                    "provenance": o.provenance.to_dict(),
                    "unequivocal_progression": o.unequivocal_progression,
                })
        return {
            "patient_id": self.patient_id,
            "session_id": self.session_id,
            "timepoints": [
                {"name": tp.name, "date": tp.acquisition_date, "image": tp.image,
                 "evaluated": tp.name in self._evaluated}
                for tp in self._timepoints
            ],
            "lesions": lesions,
            "observations": obs,
            "not_evaluable": sorted([lid, tp] for lid, tp in self._not_evaluable),
            "candidates": {name: [dict(c) for c in items] for name, items in self._candidates.items()},
            "next_id": self._next_id,
            "engine": dict(self.engine),
            "notes": dict(self.notes),
            "revision": self._revision,
        }

    def restore_state(self, state: Mapping) -> None:
        """Put back lesions, observations, marks and the id counter from a :meth:`snapshot_state`
        dict whose ``"mask"`` entries are :class:`~.results.LesionMask` objects on this study's
        grids (the session reader builds it). Replaces every lesion of this study."""
        from .prompts import prompts_from_json_dict

        self._info.clear()
        self._obs.clear()
        self._measure_cache.clear()
        for entry in state.get("lesions", []):
            lid = self._register(entry["id"])
            site, role = entry.get("site", "other"), entry.get("role", "not assessed")
            if site not in SITES or role not in ROLES:
                raise StudyError(f"lesion {lid}: unknown site {site!r} or role {role!r}")
            self._info[lid] = _LesionInfo(str(entry.get("name", "")), site, role)
        for entry in state.get("observations", []):
            lid = self._require_lesion(entry["lesion_id"])
            name = self._name(entry["timepoint"])
            mask = entry["mask"]
            self[name].geometry.require_same_grid(mask.geometry, what=f"lesion {lid}'s mask and {name}")
            prompts = []
            for d in entry.get("prompts", []):
                prompts.extend(prompts_from_json_dict({str(lid): {k: v for k, v in d.items() if k != "positive"}}))
            result = LesionResult(lid, mask, entry.get("engine_status", "ok"), list(entry.get("messages", [])),
                                  dict(entry.get("engine_details", {})))
            merged = entry.get("merged_into")
            self._obs[(lid, name)] = Observation(
                lid, name, result, entry.get("review", "unverified"), None if merged is None else int(merged),
                prompts, Provenance.from_dict(entry.get("provenance", {})),
                bool(entry.get("unequivocal_progression", False)))
        self._not_evaluable = {(int(lid), self._name(tp)) for lid, tp in state.get("not_evaluable", [])}
        self.reserve_ids(int(state.get("next_id", 1)))
        self.engine = dict(state.get("engine", {}))
        self.notes = dict(state.get("notes", {}))
        if state.get("session_id"):
            self.session_id = str(state["session_id"])
        self._evaluated = {tp["name"] for tp in state.get("timepoints", []) if tp.get("evaluated")}
        self._candidates = {self._name(n): [dict(c) for c in items] for n, items in state.get("candidates", {}).items()}
        for tp in self._timepoints:
            if tp.labels is not None or tp.name in self._evaluated or any(k[1] == tp.name for k in self._obs):
                tp.labels = self.render_labels(tp.name)
        self._touch()

    def __repr__(self) -> str:
        parts = [f"{tp.name}({tp.acquisition_date or 'undated'})" for tp in self._timepoints]
        return f"Study({self.patient_id!r}: {', '.join(parts)}; lesions {self.lesion_ids})"

