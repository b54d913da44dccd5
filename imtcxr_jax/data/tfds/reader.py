"""Reading built datasets: records without the images, and the images by record for the training pipeline.

`read_records(data_dir, name, split)` returns `DatasetRecord`s (a `sources.Record` with provenance) and a
`sources.RejectReport`; `TfdsImages(data_dir)` opens the stored image bytes of a record
(``record.image`` = ``"<dataset>/<split>/<index>/<key>"``) through ``tfds.data_source`` -- the object the
training pipeline takes in place of an image folder. `task_source` joins several datasets into one list of
records for training or evaluation.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import tensorflow_datasets as tfds

from imtcxr_jax.data.sources import ManifestError, RejectReport
from imtcxr_jax.data.tfds.common import RECORDS_FILE, BadRow, DatasetRecord, to_dataset_record


def dataset_dir(data_dir: str | Path, name: str) -> Path:
    """``data_dir/name/<version>``: the newest version built (TFDS layout). FileNotFoundError if none."""
    root = Path(data_dir) / name
    versions = sorted(
        (p for p in root.glob("*.*.*") if (p / "dataset_info.json").is_file()),
        key=lambda p: tuple(int(part) for part in p.name.split(".")),
    )
    if not versions:
        raise FileNotFoundError(f"{root}: no built dataset (run `imtcxr data build {name} ...` first)")
    return versions[-1]


def read_records(
    data_dir: str | Path, name: str, split: str, *, strict: bool = False
) -> tuple[list[DatasetRecord], RejectReport]:
    """The records of one split of a built dataset, from ``records-<split>.jsonl`` (line k = example k).

    Rows that fail validation (a file edited or corrupted after the build) are counted in the report, or
    with ``strict=True`` raise `ManifestError`. A split that was not built raises FileNotFoundError listing
    the splits there are.
    """
    folder = dataset_dir(data_dir, name)
    path = folder / RECORDS_FILE.format(split=split)
    if not path.is_file():
        have = sorted(p.name[len("records-") : -len(".jsonl")] for p in folder.glob("records-*.jsonl"))
        raise FileNotFoundError(f"{folder}: no split {split!r} (built splits: {have})")
    report = RejectReport(str(path))
    records: list[DatasetRecord] = []
    with path.open("rb") as lines:
        for index, raw in enumerate(lines):
            report.rows += 1
            where = f"{path}:{index + 1}"
            try:
                row = json.loads(raw)
                image = f"{name}/{split}/{index}/{row['key']}"
                records.append(to_dataset_record(row, image))
            except (ValueError, KeyError, TypeError, BadRow) as error:
                reason = error.reason if isinstance(error, BadRow) else "malformed_json"
                message = error.message if isinstance(error, BadRow) else repr(error)
                if strict:
                    raise ManifestError(where, reason, message) from None
                report.add(reason, where, message)
    report.accepted = len(records)
    return records, report


class TfdsImages:
    """Opens the stored image of a `DatasetRecord` (``open_image(record.image)`` -> a binary file object).

    Data sources are opened lazily and per process (the object pickles without them, for grain workers).
    The stored key is checked against the one the record names.
    """

    def __init__(self, data_dir: str | Path):
        self.data_dir = Path(data_dir)
        self._sources: dict[tuple[str, str], Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"data_dir": self.data_dir, "_sources": {}}

    def _source(self, name: str, split: str) -> Any:
        source = self._sources.get((name, split))
        if source is None:
            builder = tfds.builder_from_directory(str(dataset_dir(self.data_dir, name)))
            source = self._sources[(name, split)] = builder.as_data_source(split=split)
        return source

    def example(self, image: str) -> dict[str, Any]:
        try:
            name, split, index, key = image.split("/", 3)
            position = int(index)
        except ValueError:
            raise ValueError(
                f"{image!r} is not a built-dataset image ('<dataset>/<split>/<index>/<key>')"
            ) from None
        example = self._source(name, split)[position]
        stored = example["key"].decode() if isinstance(example["key"], bytes) else str(example["key"])
        if stored != key:
            raise OSError(
                f"{self.data_dir}/{name} {split}[{position}] holds {stored!r}, the record names {key!r}"
            )
        return example

    def open_image(self, image: str) -> BinaryIO:
        return io.BytesIO(self.example(image)["image"])


def task_source(
    data_dir: str | Path, names: Sequence[str], split: str, *, strict: bool = False
) -> tuple[list[DatasetRecord], TfdsImages, list[RejectReport]]:
    """Records of ``split`` of several built datasets, in ``names`` order, with the image opener."""
    records: list[DatasetRecord] = []
    reports = []
    for name in names:
        part, report = read_records(data_dir, name, split, strict=strict)
        records += part
        reports.append(report)
    return records, TfdsImages(data_dir), reports
