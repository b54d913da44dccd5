"""What every real-dataset builder shares: the stored schema, image encoding, validation, rejects, the report.

**Stored schema** (one TFDS example per image, ArrayRecord, written in generation order: ``disable_shuffling``):

* ``key`` (text): the image's id in its dataset (dicom_id, image_id, file name, ...), unique per dataset;
* ``image`` (bytes): the encoded image. JPEG and PNG files are stored as their **original bytes** (after a
  full decode proves they are readable); DICOM and raw images are windowed / converted once at build time
  and stored as PNG (8-bit for DICOM, through `image_io.read_image`; 16-bit for JSRT's 12-bit raw data). The
  training pipeline reads only these bytes: the original download is not needed after a build.
* ``image_format`` (text): ``"jpeg"`` or ``"png"``;
* ``record`` (text): a JSON object in the manifest format of `sources` (``width``, ``height``, ``labels``,
  ``findings``, ``polygons``, ``ctr``, ``pcr``, ``report``; coordinates in pixels of the stored image) plus
  ``dataset``, ``split``, ``key``, ``patient``, ``families`` (the task families the dataset's ground truth
  supports: a segmentation-only dataset must not teach "no finding"), ``source`` (file and row it came from)
  and ``extras`` (dataset-specific: view position, phrases, ...).

Next to the TFDS files each split gets ``records-<split>.jsonl`` (the same JSON objects, line k = example k)
so that the records load without reading the images, and the build writes ``build_report.json``.

**Bad rows.** A parser yields `Item`s for good rows and `Rejected` for bad ones; loading the image and
validating the row (the same checks as `sources.load_records`) may reject an item too. Rejects are counted by
reason in a `BuildLog` (`REJECT_REASONS`: those of `sources` plus ``malformed_row`` and ``malformed_rle``),
the first messages kept (each names the file, row and field), printed at the end of a build and written to
``build_report.json``; the build goes on. With ``strict=True`` the first reject raises `BuildError`. A whole
image is rejected when one of its rows is bad (keeping it would give it incomplete ground truth). Rows left
out by a documented policy (a lateral view, a low-quality CheXmask row) are not errors: they are counted
under ``skipped`` with the reason.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image
from tqdm import tqdm

from imtcxr_jax.data import image_io, sources
from imtcxr_jax.data.sources import Record, RejectReport
from imtcxr_jax.data.tfds import harmonise

log = logging.getLogger(__name__)

RECORDS_FILE = "records-{split}.jsonl"
BUILD_REPORT = "build_report.json"
FAMILIES = sources.FAMILIES
REJECT_REASONS = (*sources.REJECT_REASONS, "malformed_row", "malformed_rle")
# Images are stored at their original size; read_image downscales only past this side (none of the datasets
# comes near it), and a downscaled image is rejected rather than have its coordinates silently rescaled.
MAX_SIDE = 16384
PNG_COMPRESSION = 1  # zlib level: fast builds; PNG stays lossless

FEATURES = tfds.features.FeaturesDict(
    {
        "key": tfds.features.Text(),
        "image": tfds.features.Tensor(shape=(), dtype=np.object_),
        "image_format": tfds.features.Text(),
        "record": tfds.features.Text(),
    }
)


# ------------------------------------------------------------------------------------------------------------
# Records


@dataclasses.dataclass(frozen=True, eq=False)
class DatasetRecord(Record):
    """A `sources.Record` read from a built dataset, with its provenance.

    ``image`` is ``"<dataset>/<split>/<index>/<key>"``, which `TfdsImages` resolves to the stored bytes;
    ``where`` names the original file and row.
    """

    dataset: str = ""
    split: str = ""
    key: str = ""
    patient: str = ""
    families: tuple[str, ...] = FAMILIES
    extras: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class BuildError(ValueError):
    """The first bad row of a ``strict`` build: names the file, row and field, and the reason."""

    def __init__(self, where: str, reason: str, message: str):
        super().__init__(f"{where}: {reason}: {message}")
        self.where, self.reason, self.message = where, reason, message


class BadRow(Exception):
    """Raised inside a builder for one bad row/image; becomes a reject with ``reason``."""

    def __init__(self, reason: str, message: str):
        if reason not in REJECT_REASONS:
            raise ValueError(f"unknown reject reason {reason!r}; expected one of {REJECT_REASONS}")
        super().__init__(message)
        self.reason, self.message = reason, message


@dataclasses.dataclass(frozen=True)
class Rejected:
    """A bad row found while parsing the annotation files."""

    reason: str
    where: str
    message: str


@dataclasses.dataclass(frozen=True)
class EncodedImage:
    data: bytes
    format: str  # "jpeg" | "png"
    width: int
    height: int


@dataclasses.dataclass
class Item:
    """One image to write: its annotations in the manifest format, in pixels of the original image.

    ``load`` returns the encoded image (default: `encode_file` of ``manual_dir / image``); it may raise
    `BadRow` or `image_io.ImageReadError`.
    """

    key: str
    split: str
    image: str  # path relative to the manual dir (or a description), for messages and extras
    where: str  # "file.csv:12" (several rows: the first, "+n")
    row: dict[str, Any]
    patient: str = ""
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)
    load: Callable[[], EncodedImage] | None = None
    # Optional check run on the loaded image (e.g. a stated size); raises BadRow.
    check: Callable[[EncodedImage], None] | None = None
    families: tuple[str, ...] | None = None  # default: the builder's FAMILIES


# ------------------------------------------------------------------------------------------------------------
# Build log


@dataclasses.dataclass
class BuildLog:
    """Rejects by reason (a `sources.RejectReport`), policy skips and notes of one build."""

    source: str
    strict: bool = False
    report: RejectReport = dataclasses.field(init=False)
    skipped: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    notes: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    written: dict[str, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.report = RejectReport(self.source)

    def reject(self, reason: str, where: str, message: str) -> None:
        if reason not in REJECT_REASONS:
            raise ValueError(f"unknown reject reason {reason!r}")
        if self.strict:
            raise BuildError(where, reason, message)
        self.report.add(reason, where, message)

    def skip(self, why: str, count: int = 1) -> None:
        self.skipped[why] += count

    def note(self, what: str, count: int = 1) -> None:
        self.notes[what] += count

    def summary(self) -> str:
        lines = [self.report.summary()]
        lines += [f"  skipped by policy, {why}: {n}" for why, n in sorted(self.skipped.items())]
        lines += [f"  note, {what}: {n}" for what, n in sorted(self.notes.items())]
        lines += [f"  written {split}: {n}" for split, n in self.written.items()]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.report.to_dict(),
            "skipped": dict(self.skipped),
            "notes": dict(self.notes),
            "written": dict(self.written),
        }


# ------------------------------------------------------------------------------------------------------------
# Images


def _pil_size(data: bytes, fmt: str, where: str) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(data)) as image:
            if (image.format or "").lower() != fmt:
                raise BadRow(
                    "unreadable_image", f"{where}: expected a {fmt.upper()} file, got {image.format}"
                )
            image.load()  # a full decode: a truncated file fails here, not in training
            return image.size
    except BadRow:
        raise
    except Exception as error:  # PIL raises several types for broken files
        raise BadRow("unreadable_image", f"{where}: cannot decode ({error})") from None


def encode_file(path: Path) -> EncodedImage:
    """A PNG/JPEG file as its original bytes (decoded once to check it); DICOM (or anything else
    `image_io.read_image` reads) windowed to 8-bit and encoded as PNG."""
    if not path.is_file():
        raise BadRow("missing_image", f"image file {path} does not exist")
    with path.open("rb") as f:
        head = f.read(8)
    if head.startswith(b"\xff\xd8\xff") or head.startswith(b"\x89PNG\r\n\x1a\n"):
        fmt = "jpeg" if head.startswith(b"\xff\xd8") else "png"
        data = path.read_bytes()
        width, height = _pil_size(data, fmt, str(path))
        return EncodedImage(data, fmt, width, height)
    try:
        loaded = image_io.read_image(path, max_side=MAX_SIDE, max_decode_pixels=MAX_SIDE * MAX_SIDE)
    except image_io.ImageReadError as error:
        raise BadRow("unreadable_image", str(error)) from None
    if loaded.downscaled_from is not None:
        raise BadRow(
            "image_size_mismatch", f"{path}: {loaded.width}x{loaded.height} is larger than {MAX_SIDE}"
        )
    return encode_pixels(loaded.pixels)


def encode_pixels(pixels: np.ndarray) -> EncodedImage:
    """uint8 (H, W) / (H, W, 3) or uint16 (H, W) pixels -> a lossless PNG."""
    pixels = np.asarray(pixels)
    if pixels.dtype == np.uint16 and pixels.ndim == 2:
        image = Image.fromarray(pixels)  # mode "I;16"
    elif pixels.dtype == np.uint8 and pixels.ndim in (2, 3):
        image = Image.fromarray(pixels)
    else:
        raise ValueError(f"cannot encode pixels of dtype {pixels.dtype} and shape {pixels.shape} as PNG")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESSION)
    return EncodedImage(buffer.getvalue(), "png", pixels.shape[1], pixels.shape[0])


def file_index(root: Path, suffixes: Iterable[str]) -> dict[str, Path]:
    """File stem -> path for every file under ``root`` with one of ``suffixes`` (lower-case, with the dot).

    Raises ValueError when two files share a stem (the id -> file mapping would be ambiguous)."""
    suffixes = {s.lower() for s in suffixes}
    index: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in suffixes and path.is_file():
            if path.stem in index:
                raise ValueError(f"two image files named {path.stem}: {index[path.stem]} and {path}")
            index[path.stem] = path
    return index


# ------------------------------------------------------------------------------------------------------------
# Rows, labels, splits


def harmonise_label(dataset: str, label: str) -> str:
    """A label as the dataset spells it -> the harmonised label (`harmonise.LABELS`); BadRow if unknown."""
    table = harmonise.LABELS[dataset]
    name = table.get(label.strip())
    if name is None:
        raise BadRow(
            "unknown_label",
            f"label {label!r} is not in the {dataset} label table (harmonise.LABELS); known: {sorted(table)}",
        )
    return name


def labels_field(labels: Iterable[str]) -> list[str]:
    """Distinct labels in first-seen order; ``[]`` stands for no finding (``"no finding"`` is dropped when
    other labels are present only if the caller says so; here it must be alone)."""
    names = list(dict.fromkeys(labels))
    if "no finding" in names and len(names) > 1:
        raise BadRow("unknown_label", f"labels {names} put 'no finding' next to findings")
    return [] if names == ["no finding"] else names


def patient_split(dataset: str, patient: str, fractions: Sequence[float] = harmonise.PATIENT_SPLIT) -> str:
    """Deterministic patient-level split: sha256 of ``dataset:patient`` mapped to [0, 1), cut at the
    cumulative ``fractions`` (train, validation, test). The same patient always lands in the same split."""
    if not patient:
        raise ValueError("patient_split needs a patient id")
    digest = hashlib.sha256(f"{dataset}:{patient}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    train, validation, _ = fractions
    return "train" if u < train else "validation" if u < train + validation else "test"


def split_name(word: str) -> str:
    name = harmonise.SPLIT_NAMES.get(word.strip().lower())
    if name is None:
        raise BadRow("bad_field", f"split {word!r} is not one of {sorted(harmonise.SPLIT_NAMES)}")
    return name


def number(text: str, field: str) -> float:
    """A finite float from a CSV cell; BadRow ``bad_field`` naming the field otherwise."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise BadRow("bad_field", f"field {field!r} is {text!r}, expected a number") from None
    if not math.isfinite(value):
        raise BadRow("bad_field", f"field {field!r} is {text!r}, expected a finite number")
    return value


def xywh_box(x: str, y: str, w: str, h: str, what: str) -> list[float]:
    """``x, y, width, height`` cells -> ``[x0, y0, x1, y1]``; a negative or zero size is ``invalid_box``."""
    try:
        values = [float(v) for v in (x, y, w, h)]
    except (TypeError, ValueError):
        raise BadRow("invalid_box", f"{what}: box {[x, y, w, h]} is not 4 numbers (x, y, w, h)") from None
    if not all(math.isfinite(v) for v in values) or values[2] <= 0 or values[3] <= 0:
        raise BadRow("invalid_box", f"{what}: box (x, y, w, h) {values} needs finite values and w, h > 0")
    return [values[0], values[1], values[0] + values[2], values[1] + values[3]]


def xyxy_box(values: Sequence[Any], what: str) -> list[float]:
    try:
        box = [float(v) for v in values]
    except (TypeError, ValueError):
        raise BadRow("invalid_box", f"{what}: box {list(values)} is not 4 numbers") from None
    if len(box) != 4 or not all(math.isfinite(v) for v in box) or box[0] > box[2] or box[1] > box[3]:
        raise BadRow(
            "invalid_box", f"{what}: box {list(values)} is not x0 <= x1, y0 <= y1 (4 finite numbers)"
        )
    return box


def validate(row: Mapping[str, Any], where: str) -> Record:
    """The checks of `sources.load_records` on a manifest-format row (without the image file check),
    vocabulary `harmonise.vocabulary`. Raises BadRow."""
    vocabulary = harmonise.vocabulary()
    try:
        width, height = sources._size(row, "width"), sources._size(row, "height")
        labels = sources._labels(sources._field(row, "labels", list), vocabulary)
        findings = tuple(
            sources._finding(item, k, width, height, vocabulary)
            for k, item in enumerate(sources._optional(row, "findings", list) or [])
        )
        for finding in findings:
            if finding.label not in labels:
                raise sources._Reject(
                    "unknown_label", f"finding label {finding.label!r} is not among labels {list(labels)}"
                )
        polygons = {
            sources._structure(name): sources._polygon(points, name, width, height)
            for name, points in (sources._optional(row, "polygons", dict) or {}).items()
        }
        report = sources._optional(row, "report", str)
        if report is not None and not report.split():
            raise sources._Reject("bad_field", "field 'report' is empty; use null for no report")
        return Record(
            image=str(row.get("image", "")),
            width=width,
            height=height,
            labels=labels,
            findings=findings,
            polygons=polygons,
            ctr=sources._measurement(row, "ctr"),
            pcr=sources._measurement(row, "pcr"),
            report=report,
            where=where,
        )
    except sources._Reject as reject:
        raise BadRow(reject.reason, reject.message) from None


def to_dataset_record(row: Mapping[str, Any], image: str) -> DatasetRecord:
    """A stored record JSON object -> `DatasetRecord` (validated again: a corrupt file is an error)."""
    record = validate(row, row.get("source", ""))
    return DatasetRecord(
        **{f.name: getattr(record, f.name) for f in dataclasses.fields(Record)} | {"image": image},
        dataset=row["dataset"],
        split=row["split"],
        key=row["key"],
        patient=row.get("patient", ""),
        families=tuple(row["families"]),
        extras=row.get("extras", {}),
    )


# ------------------------------------------------------------------------------------------------------------
# The builder


class CxrBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the real-dataset builders: a subclass sets ``name``, ``FAMILIES``, the docs and ``_items``.

    ``_items(manual_dir)`` yields `Item` / `Rejected` for every image of every split (only annotations are
    read there; images are loaded while writing). Build with ``download_and_prepare(download_config=
    tfds.download.DownloadConfig(manual_dir=...))`` or `imtcxr_jax.data.tfds.build`.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "First release."}
    FAMILIES: tuple[str, ...] = FAMILIES
    HOMEPAGE = ""
    DESCRIPTION = ""

    def __init__(self, *, strict: bool = False, progress: bool = True, **kwargs: Any):
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)
        self.strict, self.progress = strict, progress
        self.build_log: BuildLog | None = None
        self._empty_splits: set[str] = set()
        self._rows: dict[str, list[dict[str, Any]]] = {}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION or (self.__doc__ or "").strip(),
            features=FEATURES,
            homepage=self.HOMEPAGE,
            disable_shuffling=True,  # example k of a split is the k-th generated (records-<split>.jsonl)
        )

    def _items(self, manual_dir: Path) -> Iterator[Item | Rejected]:
        raise NotImplementedError

    def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
        manual_dir = Path(dl_manager.manual_dir)
        self.build_log = log_ = BuildLog(f"{self.name} ({manual_dir})", strict=self.strict)
        by_split: dict[str, list[Item]] = collections.defaultdict(list)
        keys: dict[str, str] = {}
        for item in self._items(manual_dir):
            if isinstance(item, Rejected):
                log_.report.rows += 1
                log_.reject(item.reason, item.where, item.message)
                continue
            if item.load is None and not (manual_dir / item.image).is_file():
                log_.report.rows += 1
                log_.reject(
                    "missing_image", item.where, f"image file {manual_dir / item.image} does not exist"
                )
                continue
            if item.key in keys:
                log_.report.rows += 1
                log_.reject("bad_field", item.where, f"image {item.key!r} also appears at {keys[item.key]}")
                continue
            keys[item.key] = item.where
            by_split[item.split].append(item)
        self._manual_dir = manual_dir
        for split in sorted(self._empty_splits & set(by_split)):  # second try: reject them here
            log_.note(f"split {split} not written: every image rejected")
            for item in by_split.pop(split):
                log_.report.rows += 1
                try:
                    self._example(item, split)
                except BadRow as bad:
                    log_.reject(bad.reason, item.where, bad.message)
        self._rows = {split: [] for split in by_split}
        return {split: self._generate_examples(split, items) for split, items in sorted(by_split.items())}

    def _generate_examples(self, split: str, items: list[Item]) -> Iterator[tuple[int, dict[str, Any]]]:
        assert self.build_log is not None
        log_, rows = self.build_log, self._rows[split]
        progress = tqdm(items, desc=f"{self.name} {split}", unit="img", disable=not self.progress)
        for item in progress:
            log_.report.rows += 1
            try:
                stored = self._example(item, split)
            except BadRow as bad:
                log_.reject(bad.reason, item.where, bad.message)
                continue
            rows.append(stored[1])
            log_.report.accepted += 1
            yield len(rows) - 1, stored[0]
        log_.written[split] = len(rows)

    def _example(self, item: Item, split: str) -> tuple[dict[str, Any], dict[str, Any]]:
        try:
            image = item.load() if item.load is not None else encode_file(self._manual_dir / item.image)
        except image_io.ImageReadError as error:
            raise BadRow("unreadable_image", str(error)) from None
        if item.check is not None:
            item.check(image)
        row = {**item.row, "width": image.width, "height": image.height}
        validate(row, item.where)
        row.update(
            dataset=self.name,
            split=split,
            key=item.key,
            patient=item.patient,
            families=list(item.families or self.FAMILIES),
            source=item.where,
            image=item.image,
            extras=item.extras,
        )
        text = json.dumps(row, separators=(",", ":"))
        return {"key": item.key, "image": image.data, "image_format": image.format, "record": text}, row

    def download_and_prepare(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().download_and_prepare(*args, **kwargs)
        except AssertionError as error:  # TFDS refuses a split without examples: build again without it
            empty = {
                split for split, n in (self.build_log.written if self.build_log else {}).items() if n == 0
            }
            if "No examples were yielded" not in str(error) or not empty or self._empty_splits:
                raise
            self._empty_splits = empty
            super().download_and_prepare(*args, **kwargs)
        if self.build_log is None:  # already built: nothing generated in this call
            return
        folder = Path(self.data_dir)
        for split, rows in self._rows.items():
            with (folder / RECORDS_FILE.format(split=split)).open("w") as f:
                for row in rows:
                    f.write(json.dumps(row, separators=(",", ":")) + "\n")
        (folder / BUILD_REPORT).write_text(json.dumps(self.build_log.to_dict(), indent=2) + "\n")


# ------------------------------------------------------------------------------------------------------------
# CSV helpers


def read_csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) of a CSV (``.csv`` or ``.csv.gz``), header included as line 1."""
    import csv
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="", encoding="utf-8-sig") as f:
        yield from enumerate(csv.reader(f), start=1)


def find_file(root: Path, names: Sequence[str], what: str) -> Path:
    """The first of ``names`` (optionally ``.gz``) under ``root`` (searched recursively); FileNotFoundError
    naming what is missing and the manual download instructions' expectation."""
    for name in names:
        for candidate in (name, f"{name}.gz"):
            direct = root / candidate
            if direct.is_file():
                return direct
            found = sorted(root.rglob(candidate))
            if found:
                return found[0]
    raise FileNotFoundError(f"{root}: no {what} (expected one of {', '.join(names)}, possibly .gz)")


class CsvTable:
    """A CSV with a header: cells by column name, names checked once (missing column -> FileNotFoundError
    style ValueError naming the file and the columns it has)."""

    def __init__(self, path: Path, required: Sequence[str], *, strip_names: bool = True):
        self.path = path
        rows = read_csv_rows(path)
        try:
            _, header = next(rows)
        except StopIteration:
            raise ValueError(f"{path}: empty file, expected a header with {list(required)}") from None
        self.header = [h.strip() if strip_names else h for h in header]
        missing = [name for name in required if name not in self.header]
        if missing:
            raise ValueError(f"{path}: header {header} lacks the columns {missing}")
        self.columns = {name: self.header.index(name) for name in self.header}
        self._rows = rows

    def __iter__(self) -> Iterator[tuple[str, dict[str, str] | None]]:
        """(where, row) per data line; row is None for a line with the wrong number of cells."""
        for line, cells in self._rows:
            where = f"{self.path.name}:{line}"
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) != len(self.header):
                yield where, None
                continue
            yield where, {name: cells[k].strip() for name, k in self.columns.items()}

    def wrong_width(self, where: str) -> Rejected:
        return Rejected("malformed_row", where, f"expected {len(self.header)} cells ({self.header})")


_SPACES = re.compile(r"\s+")


def clean_text(text: str) -> str:
    return _SPACES.sub(" ", text).strip()
