"""Training records: load a dataset folder, validate every row, and enumerate each task family's examples.

**Folder format** (what ``imtcxr data phantom`` writes; real datasets are converted to it): ``DIR/manifest.jsonl``
holds one JSON object per line, images lie under ``DIR`` at the relative paths the rows name. Fields:

* ``image`` (str, required): path relative to ``DIR``; ``width``, ``height`` (int, required): its size in
  pixels (checked against the file's header);
* ``labels`` (list of str, required): disease labels, or ``["no finding"]`` / ``[]`` for a normal study;
* ``findings`` (list, optional): ``{label, severity, location, box}`` with ``severity`` one of mild / moderate /
  severe or null, ``location`` a location word of `classification.LOCATIONS` (``"right lower"``) or the
  phantom's ``{"side": ..., "zone": ...}`` or null, ``box`` ``[x0, y0, x1, y1]`` pixels or null; every finding
  label must be among ``labels``;
* ``polygons`` (object, optional): structure (``left_lung``, ``right_lung``, ``heart``, ``pneumothorax``, or
  the spaced names) -> ``[[x, y], ...]`` pixels, at least 3 points;
* ``ctr``, ``pcr`` (number >= 0 or null, optional); ``report`` (str or null, optional).

Other fields are ignored. Coordinates must lie inside the image (never clamped: a box outside its image is a
labelling error, not something to repair).

**Bad rows** are never dropped silently. `load_records` returns the good records and a `RejectReport` that
counts the rejected rows by reason (`REJECT_REASONS`) and keeps the first few messages, each naming the file
and line; it is also logged. With ``strict=True`` the first bad row raises `ManifestError` instead.

**Examples** are small references (`ExampleRef`: record index, task, subject, flag) so that a grain source over
millions of them stays cheap; the text is built later, after the image is augmented (boxes and polygons move
with it). Per family (`enumerate_examples`):

* classification: per record "which diseases"; "is X present?" for every label it has (yes) and as many labels
  it does not have (no, at least one), drawn deterministically from the dataset's label vocabulary; "where is
  X?" and "how severe is X?" for every finding label with that attribute;
* localization: one per (record, finding label with at least one box): every box of the label;
* segmentation: one per (record, structure polygon);
* report: one per record with a report; a deterministic half (by seed) prompted with the ground-truth evidence
  (`record_evidence`: findings with location and severity, CTR, PCR) so the model learns to use evidence, the
  rest with the plain instruction.

A label can appear in several findings (a bilateral effusion is two, one per side); the questions are asked per
label, so `Record.attributes` merges them: the most severe severity, and the location as the common side and
zone ("right" + "left" -> "bilateral"; differing zones -> the side alone).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import numbers
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from imtcxr_jax import geometry
from imtcxr_jax.tasks import classification, segmentation
from imtcxr_jax.tasks.common import Task, normalize_label, vocabulary_set
from imtcxr_jax.tasks.report import Evidence, Finding

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.jsonl"
MAX_REPORTED_EXAMPLES = 5  # messages kept per reject reason

REJECT_REASONS = (
    "malformed_json",  # a line that is not a JSON object
    "bad_field",  # a required field missing, or a field of the wrong type
    "missing_image",  # the image file does not exist
    "unreadable_image",  # the file exists but is not an image PIL can open
    "image_size_mismatch",  # width/height differ from the file's
    "unknown_label",  # a disease label outside the vocabulary, or inconsistent labels / findings
    "unknown_attribute",  # a severity or location outside its vocabulary
    "invalid_box",  # not 4 finite numbers, x0 > x1 / y0 > y1, or outside the image
    "invalid_polygon",  # unknown structure, fewer than 3 points, non-finite, or outside the image
    "invalid_measurement",  # ctr / pcr not a finite number >= 0
)

SEVERITY_ORDER = {name: rank for rank, name in enumerate(classification.SEVERITIES)}
FAMILIES = ("classification", "localization", "segmentation", "report")


# ------------------------------------------------------------------------------------------------------------
# Records


@dataclasses.dataclass(frozen=True)
class RecordFinding:
    """One finding of a record; text fields normalised (lower-case)."""

    label: str
    severity: str | None = None  # classification.SEVERITIES
    location: str | None = None  # classification.LOCATIONS
    box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1 in original pixels


@dataclasses.dataclass(frozen=True, eq=False)
class Record:
    """One validated image with its ground truth, coordinates in original pixels."""

    image: str  # path relative to the dataset folder
    width: int
    height: int
    labels: tuple[str, ...]  # present disease labels, normalised; () = no finding
    findings: tuple[RecordFinding, ...] = ()
    polygons: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)  # "left lung" -> (N, 2)
    ctr: float | None = None
    pcr: float | None = None
    report: str | None = None
    where: str = ""  # "manifest.jsonl:12", for messages

    def boxes(self, label: str) -> np.ndarray:
        """Every box of ``label`` in manifest order, float64 (k, 4); (0, 4) when it has none."""
        rows = [f.box for f in self.findings if f.label == label and f.box is not None]
        return np.asarray(rows, dtype=np.float64).reshape(-1, 4)

    @property
    def box_labels(self) -> tuple[str, ...]:
        """Finding labels with at least one box, in first-appearance order."""
        return tuple(dict.fromkeys(f.label for f in self.findings if f.box is not None))

    @property
    def attributes(self) -> dict[str, tuple[str | None, str | None]]:
        """Finding label -> (location, severity), merged over the findings of that label (module docstring)."""
        by_label: dict[str, list[RecordFinding]] = {}
        for finding in self.findings:
            by_label.setdefault(finding.label, []).append(finding)
        return {
            label: (
                _merge_locations([f.location for f in group]),
                _merge_severities([f.severity for f in group]),
            )
            for label, group in by_label.items()
        }


def _merge_severities(severities: Sequence[str | None]) -> str | None:
    known = [s for s in severities if s is not None]
    return max(known, key=SEVERITY_ORDER.__getitem__) if known else None


def _split_location(location: str) -> tuple[str, str] | None:
    """``"right lower"`` -> ("right", "lower"); ``"left"`` -> ("left", ""); None if not side [+ zone]."""
    side, _, zone = location.partition(" ")
    if side in classification.SIDES and (not zone or zone in classification.ZONES):
        return side, zone
    return None


def _merge_locations(locations: Sequence[str | None]) -> str | None:
    known = list(dict.fromkeys(loc for loc in locations if loc is not None))
    if len(known) <= 1:
        return known[0] if known else None
    parts = [_split_location(loc) for loc in known]
    if any(part is None for part in parts):
        return known[0]  # words such as "base" do not combine: keep the first finding's
    sides = {side for side, _ in parts}  # type: ignore[misc]
    zones = {zone for _, zone in parts}  # type: ignore[misc]
    side = sides.pop() if len(sides) == 1 else "bilateral"
    zone = zones.pop() if len(zones) == 1 else ""
    return f"{side} {zone}" if zone else side


def record_evidence(record: Record) -> Evidence:
    """The ground-truth evidence of a record for the evidence-prompted report (`tasks.report.Evidence`):
    its labels in record order with merged location and severity, and its CTR and PCR when known."""
    attributes = record.attributes
    findings = []
    for label in record.labels:
        location, severity = attributes.get(label, (None, None))
        findings.append(Finding(label, location, severity))
    return Evidence(tuple(findings), record.ctr, record.pcr)


# ------------------------------------------------------------------------------------------------------------
# Loading and validation


class ManifestError(ValueError):
    """A bad manifest row under ``strict=True``; the message names the file, the line and the reason."""

    def __init__(self, where: str, reason: str, message: str):
        super().__init__(f"{where}: {reason}: {message}")
        self.where, self.reason, self.message = where, reason, message


class _Reject(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


@dataclasses.dataclass
class RejectReport:
    """What `load_records` rejected: counts by reason and the first messages of each (``file:line: ...``)."""

    source: str
    rows: int = 0  # non-blank lines read
    accepted: int = 0
    counts: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    @property
    def rejected(self) -> int:
        return sum(self.counts.values())

    def add(self, reason: str, where: str, message: str) -> None:
        self.counts[reason] += 1
        kept = self.examples.setdefault(reason, [])
        if len(kept) < MAX_REPORTED_EXAMPLES:
            kept.append(f"{where}: {message}")

    def summary(self) -> str:
        """One line per reason with its count and first message."""
        head = f"{self.source}: {self.accepted} of {self.rows} rows accepted, {self.rejected} rejected"
        lines = [head] + [
            f"  {reason}: {count} (first: {self.examples[reason][0]})"
            for reason, count in sorted(self.counts.items())
        ]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, for run logs."""
        return {
            "source": self.source,
            "rows": self.rows,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "counts": dict(self.counts),
            "examples": self.examples,
        }


def load_records(
    folder: str | Path,
    *,
    strict: bool = False,
    labels: Collection[str] = classification.DISEASES,
    manifest_name: str = MANIFEST_NAME,
    check_images: bool = True,
) -> tuple[list[Record], RejectReport]:
    """Read ``folder/manifest.jsonl`` into validated `Record`s, in file order.

    ``labels`` is the disease vocabulary. ``check_images`` opens every image's header (existence, size);
    without it only existence is checked. Blank lines are skipped. Bad rows are counted in the returned
    `RejectReport` (and logged) or, with ``strict=True``, the first raises `ManifestError`. A missing manifest
    raises FileNotFoundError.
    """
    folder = Path(folder)
    manifest = folder / manifest_name
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: manifest not found (expected one JSON object per line)")
    report = RejectReport(str(manifest))
    records: list[Record] = []
    with manifest.open("rb") as lines:  # bytes: a line that is not UTF-8 is one bad row, not a bad file
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            report.rows += 1
            where = f"{manifest}:{number}"
            try:
                records.append(_parse_row(raw, folder, where, labels, check_images))
            except _Reject as reject:
                if strict:
                    raise ManifestError(where, reject.reason, reject.message) from None
                report.add(reject.reason, where, reject.message)
    report.accepted = len(records)
    if report.rejected:
        log.warning("rejected manifest rows:\n%s", report.summary())
    return records, report


def _parse_row(
    raw: bytes, folder: Path, where: str, vocabulary: Collection[str], check_images: bool
) -> Record:
    try:
        row = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise _Reject("malformed_json", f"not UTF-8 ({error})") from None
    except json.JSONDecodeError as error:
        raise _Reject("malformed_json", f"not valid JSON ({error})") from None
    if not isinstance(row, dict):
        raise _Reject("malformed_json", f"expected a JSON object, got {type(row).__name__}")

    image = _field(row, "image", str)
    width, height = _size(row, "width"), _size(row, "height")
    _check_image(folder / image, width, height, check_images)

    labels = _labels(_field(row, "labels", list), vocabulary)
    findings = tuple(
        _finding(item, k, width, height, vocabulary)
        for k, item in enumerate(_optional(row, "findings", list) or [])
    )
    for finding in findings:
        if finding.label not in labels:
            raise _Reject(
                "unknown_label", f"finding label {finding.label!r} is not among labels {list(labels)}"
            )
    polygons = {
        _structure(name): _polygon(points, name, width, height)
        for name, points in (_optional(row, "polygons", dict) or {}).items()
    }
    report = _optional(row, "report", str)
    if report is not None and not report.split():
        raise _Reject("bad_field", "field 'report' is empty; use null for no report")
    return Record(
        image=image,
        width=width,
        height=height,
        labels=labels,
        findings=findings,
        polygons=polygons,
        ctr=_measurement(row, "ctr"),
        pcr=_measurement(row, "pcr"),
        report=report,
        where=where,
    )


def _field(row: dict, name: str, kind: type) -> Any:
    if name not in row:
        raise _Reject("bad_field", f"field {name!r} is missing")
    return _optional(row, name, kind)


def _optional(row: dict, name: str, kind: type) -> Any:
    value = row.get(name)
    if value is not None and not isinstance(value, kind):
        raise _Reject("bad_field", f"field {name!r} is {value!r}, expected a {kind.__name__}")
    return value


def _size(row: dict, name: str) -> int:
    value = _field(row, name, int)
    if isinstance(value, bool) or value is None or value < 1:
        raise _Reject("bad_field", f"field {name!r} is {value!r}, expected a positive number of pixels")
    return value


def _check_image(path: Path, width: int, height: int, open_header: bool) -> None:
    if not path.is_file():
        raise _Reject("missing_image", f"image file {path} does not exist")
    if not open_header:
        return
    try:
        with Image.open(path) as image:
            size = image.size
    except Exception as error:  # PIL raises several types for broken files
        raise _Reject("unreadable_image", f"image file {path} cannot be read ({error})") from None
    if size != (width, height):
        raise _Reject(
            "image_size_mismatch", f"image file {path} is {size[0]}x{size[1]}, the row says {width}x{height}"
        )


def _labels(items: list, vocabulary: Collection[str]) -> tuple[str, ...]:
    names = []
    for item in items:
        if not isinstance(item, str):
            raise _Reject("bad_field", f"label {item!r} is not a string")
        names.append(_label(item, vocabulary))
    if len(set(names)) != len(names):
        raise _Reject("unknown_label", f"labels {items!r} repeat a label")
    findings = [name for name in names if name != classification.NO_FINDING]
    if findings and len(findings) != len(names):
        raise _Reject("unknown_label", f"labels {items!r} put 'no finding' next to findings")
    return tuple(findings)


def _label(label: str, vocabulary: Collection[str]) -> str:
    try:
        name = normalize_label(label, "disease label")
    except ValueError as error:
        raise _Reject("unknown_label", str(error)) from None
    if name not in vocabulary_set(vocabulary):
        raise _Reject("unknown_label", f"disease label {label!r} is not in the label vocabulary")
    return name


def _finding(item: Any, index: int, width: int, height: int, vocabulary: Collection[str]) -> RecordFinding:
    what = f"findings[{index}]"
    if not isinstance(item, dict) or not isinstance(item.get("label"), str):
        raise _Reject("bad_field", f"{what} is {item!r}, expected an object with a string 'label'")
    label = _label(item["label"], vocabulary)
    if label == classification.NO_FINDING:
        raise _Reject("unknown_label", f"{what}: 'no finding' is not a finding")
    severity = item.get("severity")
    if severity is not None:
        if not isinstance(severity, str) or severity.strip().lower() not in classification.SEVERITIES:
            raise _Reject(
                "unknown_attribute",
                f"{what}: severity {severity!r} is not one of {classification.SEVERITIES}",
            )
        severity = severity.strip().lower()
    return RecordFinding(
        label, severity, _location(item.get("location"), what), _box(item.get("box"), what, width, height)
    )


def _location(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict):  # the phantom's {"side": ..., "zone": ...}
        side, zone = value.get("side"), value.get("zone") or ""
        if not isinstance(side, str) or not isinstance(zone, str):
            raise _Reject("unknown_attribute", f"{what}: location {value!r} needs string 'side' and 'zone'")
        value = f"{side} {zone}"
    if not isinstance(value, str):
        raise _Reject("unknown_attribute", f"{what}: location {value!r} is not a string or {{side, zone}}")
    try:
        return classification.location_target(value).strip()
    except ValueError as error:
        raise _Reject("unknown_attribute", f"{what}: {error}") from None


def _box(value: Any, what: str, width: int, height: int) -> tuple[float, float, float, float] | None:
    if value is None:
        return None
    try:
        box = geometry.validate_box(value, f"{what} box")
    except ValueError as error:
        raise _Reject("invalid_box", str(error)) from None
    if box[0] < 0 or box[1] < 0 or box[2] > width or box[3] > height:
        raise _Reject("invalid_box", f"{what} box {box.tolist()} is outside the {width}x{height} image")
    return tuple(float(v) for v in box)  # type: ignore[return-value]


def _structure(name: Any) -> str:
    try:
        return segmentation.structure_name(name)
    except (ValueError, AttributeError) as error:
        raise _Reject("invalid_polygon", str(error)) from None


def _polygon(points: Any, name: str, width: int, height: int) -> np.ndarray:
    try:
        array = np.asarray(points, dtype=np.float64)
        if array.ndim == 1 and array.size % 2 == 0:  # a flat x, y, x, y, ... list
            array = array.reshape(-1, 2)
        polygon = geometry.validate_polygon(array, f"polygon {name!r}")
    except (TypeError, ValueError) as error:
        raise _Reject("invalid_polygon", str(error)) from None
    inside = (polygon >= 0).all() and (polygon[:, 0] <= width).all() and (polygon[:, 1] <= height).all()
    if not inside:
        raise _Reject("invalid_polygon", f"polygon {name!r} has points outside the {width}x{height} image")
    return polygon


def _measurement(row: dict, name: str) -> float | None:
    value = row.get(name)
    if value is None:
        return None
    valid = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not valid or value < 0:
        raise _Reject("invalid_measurement", f"field {name!r} is {value!r}, expected a finite number >= 0")
    return float(value)


# ------------------------------------------------------------------------------------------------------------
# Examples


class ExampleRef(NamedTuple):
    """One training example, by reference: built into text and arrays when it is read.

    ``task`` is a `tasks.common.Task` value; ``subject`` the disease label or structure asked about ("" for
    the which-diseases question and the report); ``flag`` the presence answer (True = present) or, for
    reports, whether the instruction is the evidence prompt.
    """

    record: int
    task: str
    subject: str = ""
    flag: bool = False

    @property
    def family(self) -> str:
        return Task(self.task).family


def label_vocabulary(records: Sequence[Record]) -> tuple[str, ...]:
    """The disease labels present in ``records``, in `classification.DISEASES` order (then any others, sorted):
    the labels the presence negatives are drawn from."""
    present = {label for record in records for label in record.labels}
    known = [name for name in classification.DISEASES if name in present]
    return (*known, *sorted(present - set(known)))


def _rng(seed: int, *path: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *path]))


def classification_examples(
    records: Sequence[Record],
    *,
    seed: int = 0,
    negative_labels: Sequence[str] | None = None,
    all_presence: bool = False,
) -> list[ExampleRef]:
    """Which diseases, presence yes/no, location, severity (module docstring).

    Negatives per record: as many as it has labels (at least one), drawn without replacement from
    ``negative_labels`` (default: `label_vocabulary` of the records) minus its own labels, by a generator
    seeded with (``seed``, record index). ``all_presence=True`` asks about every vocabulary label instead
    (evaluation: a score per label per image).
    """
    vocabulary = tuple(negative_labels) if negative_labels is not None else label_vocabulary(records)
    examples: list[ExampleRef] = []
    for index, record in enumerate(records):
        examples.append(ExampleRef(index, Task.DISEASES.value))
        absent = [label for label in vocabulary if label not in record.labels]
        if all_presence:
            present = set(record.labels)
            examples += [
                ExampleRef(index, Task.PRESENCE.value, label, label in present) for label in vocabulary
            ]
        else:
            examples += [ExampleRef(index, Task.PRESENCE.value, label, True) for label in record.labels]
            count = min(len(absent), max(1, len(record.labels)))
            chosen = _rng(seed, 1, index).choice(len(absent), size=count, replace=False) if count else []
            examples += [ExampleRef(index, Task.PRESENCE.value, absent[k], False) for k in sorted(chosen)]
        for label, (location, severity) in record.attributes.items():
            if location is not None:
                examples.append(ExampleRef(index, Task.LOCATION.value, label))
            if severity is not None:
                examples.append(ExampleRef(index, Task.SEVERITY.value, label))
    return examples


def localization_examples(records: Sequence[Record]) -> list[ExampleRef]:
    """One per (record, finding label with at least one box)."""
    return [
        ExampleRef(index, Task.BOX.value, label)
        for index, record in enumerate(records)
        for label in record.box_labels
    ]


def segmentation_examples(records: Sequence[Record]) -> list[ExampleRef]:
    """One per (record, structure polygon), structures in `segmentation.STRUCTURES` order."""
    return [
        ExampleRef(index, Task.SEGMENTATION.value, structure)
        for index, record in enumerate(records)
        for structure in segmentation.STRUCTURES
        if structure in record.polygons
    ]


def report_examples(
    records: Sequence[Record], *, seed: int = 0, evidence_fraction: float = 0.5
) -> list[ExampleRef]:
    """One per record with a report; ``round(evidence_fraction * n)`` of them, chosen by a permutation seeded
    with ``seed``, use the evidence prompt."""
    if not 0.0 <= evidence_fraction <= 1.0:
        raise ValueError(f"evidence_fraction must be in [0, 1], got {evidence_fraction!r}")
    indices = [index for index, record in enumerate(records) if record.report is not None]
    order = _rng(seed, 2).permutation(len(indices))
    with_evidence = {indices[k] for k in order[: round(evidence_fraction * len(indices))]}
    return [ExampleRef(index, Task.REPORT.value, "", index in with_evidence) for index in indices]


def enumerate_examples(
    records: Sequence[Record],
    family: str,
    *,
    seed: int = 0,
    negative_labels: Sequence[str] | None = None,
    evidence_fraction: float = 0.5,
    all_presence: bool = False,
) -> list[ExampleRef]:
    """The training examples of one task family (one of `FAMILIES`), deterministic in ``seed``.
    ``all_presence``: see `classification_examples`."""
    if family == "classification":
        return classification_examples(
            records, seed=seed, negative_labels=negative_labels, all_presence=all_presence
        )
    if family == "localization":
        return localization_examples(records)
    if family == "segmentation":
        return segmentation_examples(records)
    if family == "report":
        return report_examples(records, seed=seed, evidence_fraction=evidence_fraction)
    raise ValueError(f"unknown task family {family!r}; expected one of {FAMILIES}")
