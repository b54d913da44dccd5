"""The training input pipeline on grain: records -> per-task examples -> mixture -> static-shape batches.

::

    per family f:  MapDataset.source(examples_f) -> shuffle(seed_f) -> repeat() -> random_map(make example)
    MapDataset.mix([...], weights) -> batch(per_host_batch, drop_remainder) -> [process_index::process_count]
      -> to_iter_dataset(ReadOptions(num_threads, prefetch_batches)) [-> mp_prefetch(num_workers)]

Each batch is a dict of numpy arrays with static shapes (B = per-host batch, L = ``max_src_len``,
T = ``max_tgt_len``, S = ``image_size``), the input of `imtcxr_jax.train.steps`:

* ``src`` (B, L) int32: [BOS] + instruction ids + [EOS], right-padded with PAD (spec §9.3);
* ``images`` (B, S, S, 3) float32 in [-1, 1];
* ``prev`` (B, T) int32: [BOS] + target ids; ``target`` (B, T) int32: target ids + [EOS]; both PAD-padded;
* ``task`` (B,) int32: index into `TASK_FAMILIES`.

Why this shape (DESIGN.md decision 5, jax-ecosystem notes §3): ``mix`` is a deterministic interleave, so the
randomness comes from shuffling each family before repeating it (a new permutation every epoch);
``random_map`` seeds one numpy Generator per element index, so augmentation is reproducible and resumable;
each host takes every ``process_count``-th batch of ``batch_size / process_count`` elements, so at every step
the hosts' batches, concatenated in process order (what ``jax.make_array_from_process_local_data`` builds),
are exactly the single-process global batch: the same elements in the same order, hence the same
micro-batches under gradient accumulation and the same BatchNorm statistics. (Slicing elements
``[process_index::process_count]`` before batching would give each host the same elements but interleave
their order.) Each host builds only its own batches. The iterator state (``get_state()`` / ``set_state()``) is a small
JSON-able dict; restoring it resumes the identical batch sequence. Because batching happens in the
MapDataset stage, worker processes (``num_workers > 0``) each build whole batches by index, and the sequence
does not depend on the worker count; a saved state is still per-worker, so resume with the same count.

**One family per batch** (``batch_by_family``): each family is batched on its own, its instructions and
targets padded only to its longest example (rounded up to a multiple of ``length_multiple``) instead of
``max_src_len`` / ``max_tgt_len``, and whole batches are mixed by weight: a yes/no answer no longer pays for a
report's decoder length, nor a short question for the evidence prompt's encoder length (padding is masked, so
the model's outputs do not change).
Each family's batches are sliced per host before the mix, and the mix is the same on every host, so the hosts
still assemble the single-process global batch at every step. The train step compiles once per shape. The
weights then count batches, not examples, and since the loss is a token mean per batch, a short-answer family
weighs more per token than in a mixed batch. Families whose padded lengths coincide share one compiled
step, so a coarser ``length_multiple`` trades a little padding for fewer compilations (the main job: 16,
which gives the yes/no answers the box answers' shape).

Lengths: report targets are cut to the first 128 words (as the original does) when the text is built. Token
lengths do not depend on augmentation (a box is always 4 bins, a polygon 2N), so every example is measured
once, before training: an example whose instruction or target still does not fit ``max_src_len`` /
``max_tgt_len`` is left out of its family's source, counted per family and per task in
`PipelineReport.skipped` (logged; or an error with ``too_long="error"``); nothing is truncated mid-structure.

Config keys (`PipelineConfig`; `default_config()` gives them as an ``ml_collections.ConfigDict``):

============================  ================  =================================================================
key                           default           meaning
============================  ================  =================================================================
image_size                    512               canvas side S in pixels
resize_mode                   "letterbox"       "letterbox" (keep aspect, pad) or "stretch" (the original's)
pad_value                     0                 grey level of the letterbox padding and of the jitter fill
max_src_len                   128               L: instruction tokens incl. BOS and EOS
max_tgt_len                   192               T: target tokens + 1 (EOS / BOS)
batch_size                    32                global batch; each of the process_count hosts gets 1/process_count
weights                       cls .15 loc .20   relative mixture weight per family; a family left out or at 0
                              seg .15 rep .50   is not trained
batch_by_family               False             one family per batch, targets padded per family (above)
length_multiple               8                 with batch_by_family: a family's lengths are its longest
                                                example's rounded up to a multiple of this
augment                       True              training jitter on (False: resize only)
rotate_deg                    3.0               jitter: rotation in [-r, r] degrees
scale                         0.05              jitter: scale factor in [1 - s, 1 + s]
translate                     0.03              jitter: shift in [-t, t] canvas sides per axis
brightness                    0.1               jitter: brightness factor in [1 - b, 1 + b]
contrast                      0.1               jitter: contrast factor in [1 - c, 1 + c]
evidence_fraction             0.5               share of report examples prompted with ground-truth evidence
presence_questions            "sampled"         "sampled": each record's labels plus as many absent ones (the
                                                original's rows); "all": every label of the records' vocabulary
                                                for every record (the same image asked about each finding in
                                                turn, so that the answer must depend on the label asked about)
group_by_record               ""                comma-separated families whose epochs shuffle records, not
                                                examples: a record's questions stay adjacent, so one batch asks
                                                the same image about the left and the right lung, or about each
                                                finding (`RecordGroupedOrder`)
too_long                      "skip"            "skip" (count, log, leave out) or "error"
num_workers                   0                 0: threads only; > 0: grain worker processes (mp_prefetch)
num_threads                   4                 grain reader threads
prefetch_batches              8                 batches buffered ahead by the reader threads
image_cache_mb                0                 keep up to this many MB of images read and resized (per
                                                process), so that later epochs only draw the jitter: the same
                                                arrays, without the file read, decode and resize
============================  ================  =================================================================
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import math
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grain
import ml_collections
import numpy as np
from PIL import Image

from imtcxr_jax.data import augment
from imtcxr_jax.data.sources import (
    ExampleRef,
    Record,
    classification_examples,
    enumerate_examples,
    label_vocabulary,
    localization_examples,
    record_evidence,
    report_examples,
    segmentation_examples,
)
from imtcxr_jax.tasks import classification, localization, report, segmentation
from imtcxr_jax.tasks.common import TASK_FAMILIES, Task, TaskSample, parse_families
from imtcxr_jax.text.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer, TrainedTokenizer

log = logging.getLogger(__name__)

DEFAULT_WEIGHTS = {"classification": 0.15, "localization": 0.20, "segmentation": 0.15, "report": 0.50}
TOO_LONG_POLICIES = ("skip", "error")
PRESENCE_QUESTIONS = ("sampled", "all")
MAX_REPORTED_SKIPS = 5

Batch = dict[str, np.ndarray]


# ------------------------------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """The pipeline's knobs; the module docstring's table documents every key."""

    image_size: int = 512
    resize_mode: str = "letterbox"
    pad_value: int = 0
    max_src_len: int = 128
    max_tgt_len: int = 192
    batch_size: int = 32
    weights: Mapping[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    batch_by_family: bool = False
    length_multiple: int = 8
    augment: bool = True
    rotate_deg: float = 3.0
    scale: float = 0.05
    translate: float = 0.03
    brightness: float = 0.1
    contrast: float = 0.1
    evidence_fraction: float = 0.5
    presence_questions: str = "sampled"
    group_by_record: str = ""
    too_long: str = "skip"
    num_workers: int = 0
    num_threads: int = 4
    prefetch_batches: int = 8
    image_cache_mb: int = 0

    def __post_init__(self) -> None:
        minimum = {
            "image_size": 16,
            "max_src_len": 3,
            "max_tgt_len": 2,
            "batch_size": 1,
            "prefetch_batches": 1,
            "length_multiple": 1,
        }
        minimum |= {"num_workers": 0, "num_threads": 0, "pad_value": 0, "image_cache_mb": 0}
        for name, lowest in minimum.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < lowest:
                raise ValueError(f"data config: {name} must be an integer >= {lowest}, got {value!r}")
        if self.pad_value > 255:
            raise ValueError(
                f"data config: pad_value must be a grey level in [0, 255], got {self.pad_value!r}"
            )
        if self.resize_mode not in augment.RESIZE_MODES:
            raise ValueError(
                f"data config: resize_mode {self.resize_mode!r} is not one of {augment.RESIZE_MODES}"
            )
        for name in ("augment", "batch_by_family"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"data config: {name} must be True or False, got {getattr(self, name)!r}")
        if self.presence_questions not in PRESENCE_QUESTIONS:
            raise ValueError(
                f"data config: presence_questions {self.presence_questions!r} is not one of {PRESENCE_QUESTIONS}"
            )
        _ = self.grouped_families  # checks the names
        if self.too_long not in TOO_LONG_POLICIES:
            raise ValueError(f"data config: too_long {self.too_long!r} is not one of {TOO_LONG_POLICIES}")
        if not 0.0 <= self.evidence_fraction <= 1.0:
            raise ValueError(
                f"data config: evidence_fraction must be in [0, 1], got {self.evidence_fraction!r}"
            )
        weights = dict(self.weights)
        for family, weight in weights.items():
            if family not in TASK_FAMILIES:
                raise ValueError(
                    f"data config: weights has unknown task family {family!r}; expected {TASK_FAMILIES}"
                )
            if (
                isinstance(weight, bool)
                or not isinstance(weight, int | float)
                or not (0 <= weight < math.inf)
            ):
                raise ValueError(
                    f"data config: weights.{family} must be a finite number >= 0, got {weight!r}"
                )
        if not any(weights.values()):
            raise ValueError("data config: every task family has weight 0; nothing to train on")
        object.__setattr__(self, "weights", {f: float(weights.get(f, 0.0)) for f in TASK_FAMILIES})
        _ = self.jitter  # JitterConfig validates the strengths

    @property
    def grouped_families(self) -> tuple[str, ...]:
        """The families named in ``group_by_record`` (comma-separated)."""
        return parse_families(self.group_by_record, "data config: group_by_record")

    @property
    def jitter(self) -> augment.JitterConfig:
        return augment.JitterConfig(
            self.rotate_deg, self.scale, self.translate, self.brightness, self.contrast
        )

    @classmethod
    def from_config(
        cls, config: PipelineConfig | Mapping[str, Any] | ml_collections.ConfigDict | None
    ) -> PipelineConfig:
        """From a mapping or ConfigDict of the keys above (missing keys take the defaults); an unknown key
        raises ValueError naming it."""
        if config is None:
            return cls()
        if isinstance(config, cls):
            return config
        values = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"data config: unknown key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)} | {
            "weights": dict(self.weights)
        }


def default_config() -> ml_collections.ConfigDict:
    """The defaults as a ConfigDict, for the experiment configs (``config.data = default_config()``)."""
    return ml_collections.ConfigDict(PipelineConfig().to_dict())


# ------------------------------------------------------------------------------------------------------------
# One example: text, image, ids


def build_sample(
    record: Record, ref: ExampleRef, transform: augment.CanvasTransform
) -> tuple[TaskSample, Any]:
    """The instruction/target text of ``ref`` and its ground truth as the task parser returns it.

    Coordinates are on the canvas of ``transform`` (boxes sorted by x0 then y0, so that several boxes have a
    canonical order; polygons keep their point order). Truth: which diseases -> tuple of labels; presence ->
    bool; location / severity -> str; box -> (k, 4) canvas pixels; segmentation -> (N, 2) canvas pixels;
    report -> the target text without its leading space.
    """
    task, size = Task(ref.task), transform.canvas_size
    if task is Task.DISEASES:
        return classification.diseases_sample(record.labels), record.labels
    if task is Task.PRESENCE:
        return classification.presence_sample(ref.subject, ref.flag), ref.flag
    if task is Task.LOCATION:
        location = record.attributes[ref.subject][0]
        return classification.location_sample(ref.subject, location), location
    if task is Task.SEVERITY:
        severity = record.attributes[ref.subject][1]
        return classification.severity_sample(ref.subject, severity), severity
    if task is Task.BOX:
        boxes = transform.boxes_to_canvas(record.boxes(ref.subject))
        boxes = boxes[np.lexsort((boxes[:, 1], boxes[:, 0]))]
        return localization.box_sample(ref.subject, boxes, size, size), boxes
    if task is Task.SEGMENTATION:
        points = transform.to_canvas(record.polygons[ref.subject])
        return segmentation.segmentation_sample(ref.subject, points, size, size), points
    if task is Task.REPORT:
        if record.report is None:
            raise ValueError(f"{record.where}: a report example for a record without a report")
        evidence = record_evidence(record) if ref.flag else None
        sample = report.report_sample(record.report, evidence)
        return sample, sample.target[1:]
    raise ValueError(f"unknown task {ref.task!r}")


def token_ids(tokenizer: Tokenizer, sample: TaskSample) -> tuple[list[int], list[int]]:
    """(source ids = [BOS] + instruction + [EOS], target ids without BOS/EOS) of a sample (spec §9.3)."""
    return tokenizer.encode_source(sample.instruction), tokenizer.encode(sample.target)


def frame(src: Sequence[int], target: Sequence[int], max_src_len: int, max_tgt_len: int) -> Batch:
    """Right-padded int32 arrays ``src`` (L,), ``prev`` (T,) = [BOS] + target, ``target`` (T,) = target +
    [EOS]. The caller has checked that they fit."""
    out = {
        "src": np.full(max_src_len, PAD_ID, np.int32),
        "prev": np.full(max_tgt_len, PAD_ID, np.int32),
        "target": np.full(max_tgt_len, PAD_ID, np.int32),
    }
    out["src"][: len(src)] = src
    out["prev"][: len(target) + 1] = [BOS_ID, *target]
    out["target"][: len(target) + 1] = [*target, EOS_ID]
    return out


def load_image(path: Path) -> np.ndarray:
    """uint8 pixels of an image file: (H, W) for grey, (H, W, 3|4) for colour. 16-bit greys are scaled to
    8 bits (many radiograph PNGs are 16-bit)."""
    with Image.open(path) as image:
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            array = np.asarray(image, dtype=np.float64)
            top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
            return np.clip(np.rint(array * (255.0 / top)), 0, 255).astype(np.uint8)
        if image.mode not in ("L", "RGB", "RGBA"):
            image = image.convert("RGB")
        return np.asarray(image, dtype=np.uint8)


@dataclasses.dataclass(frozen=True, eq=False)
class Sample:
    """One example fully built: its text, ground truth (canvas coordinates), transform and arrays."""

    ref: ExampleRef
    text: TaskSample
    truth: Any
    transform: augment.CanvasTransform
    arrays: Batch  # src, images, prev, target, task (unbatched)


class ExampleMaker:
    """Builds examples from `ExampleRef`s: grain's ``random_map`` calls it with one Generator per element.

    Plain data and a tokenizer, so it pickles into grain worker processes.
    """

    def __init__(
        self,
        records: Sequence[Record],
        image_dir: str | Path,
        tokenizer: Tokenizer,
        config: PipelineConfig,
        *,
        augment_images: bool,
    ):
        self.records = list(records)
        # A folder, or an image source with open_image(record.image) -> file (a built dataset: data.tfds.TfdsImages).
        self.image_dir = image_dir if hasattr(image_dir, "open_image") else Path(image_dir)
        self.tokenizer = tokenizer
        self.config = config
        self.augment_images = augment_images
        # Lengths L and T per family when batches hold one family (`batch_by_family`); else max_src_len and
        # max_tgt_len.
        self.source_lengths: dict[str, int] = {}
        self.target_lengths: dict[str, int] = {}
        self._init_cache()

    def _init_cache(self) -> None:
        # Images read and resized, by record index, up to config.image_cache_mb (per process: each grain
        # worker process fills its own). A cached image gives exactly the arrays a fresh read would.
        self._fitted: dict[int, augment.FittedImage] = {}
        self._cached_bytes = 0
        self._cache_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:  # grain worker processes start with an empty cache (no lock)
        return {
            k: v for k, v in self.__dict__.items() if k not in ("_fitted", "_cached_bytes", "_cache_lock")
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_cache()

    def fit(self, ref: ExampleRef) -> augment.CanvasTransform:
        """The resize of ``ref``'s image (no jitter, no file read)."""
        record = self.records[ref.record]
        return augment.fit_transform(
            record.width, record.height, self.config.image_size, self.config.resize_mode
        )

    def lengths(self, ref: ExampleRef) -> tuple[int, int]:
        """(source tokens incl. BOS/EOS, target tokens + 1): what must fit max_src_len / max_tgt_len. Does not
        read the image: token lengths do not depend on it."""
        text, _ = build_sample(self.records[ref.record], ref, self.fit(ref))
        src, target = token_ids(self.tokenizer, text)
        return len(src), len(target) + 1

    def fitted_image(self, ref: ExampleRef) -> augment.FittedImage:
        """``ref``'s image read and resized for the canvas, from the in-memory cache when it is there."""
        fitted = self._fitted.get(ref.record)
        if fitted is not None:
            return fitted
        record = self.records[ref.record]
        opened = hasattr(self.image_dir, "open_image")
        path = record.image if opened else self.image_dir / record.image
        try:
            pixels = load_image(self.image_dir.open_image(path) if opened else path)
        except OSError as error:
            raise OSError(f"{record.where}: cannot read image {path} ({error})") from error
        fitted = augment.fit_image(pixels, self.config.image_size, mode=self.config.resize_mode)
        fitted.content.setflags(write=False)  # shared by every later example of this record
        with self._cache_lock:  # two reader threads may have read the same image: keep one, count it once
            budget = self.config.image_cache_mb * 2**20
            if ref.record not in self._fitted and self._cached_bytes + fitted.nbytes <= budget:
                self._fitted[ref.record] = fitted
                self._cached_bytes += fitted.nbytes
        return fitted

    def sample(self, ref: ExampleRef, rng: np.random.Generator | None = None) -> Sample:
        """Read and (with ``rng`` and augmentation on) jitter the image, then build text and arrays."""
        record = self.records[ref.record]
        config = self.config
        images, transform = augment.prepare_fitted(
            self.fitted_image(ref),
            rng=rng if self.augment_images else None,
            jitter=config.jitter if self.augment_images else None,
            pad_value=config.pad_value,
        )
        text, truth = build_sample(record, ref, transform)
        src, target = token_ids(self.tokenizer, text)
        if len(src) > config.max_src_len or len(target) + 1 > config.max_tgt_len:
            # Lengths are screened before training; reaching this means the screening was bypassed.
            raise ValueError(f"{record.where}: {ref} is longer than max_src_len / max_tgt_len")
        source_length = self.source_lengths.get(ref.family, config.max_src_len)
        target_length = self.target_lengths.get(ref.family, config.max_tgt_len)
        arrays = frame(src, target, source_length, target_length)
        arrays["images"] = images
        arrays["task"] = np.int32(TASK_FAMILIES.index(ref.family))
        return Sample(ref, text, truth, transform, arrays)

    def __call__(self, ref: ExampleRef, rng: np.random.Generator) -> Batch:
        return self.sample(ref, rng).arrays


# ------------------------------------------------------------------------------------------------------------
# Length screening


@dataclasses.dataclass
class PipelineReport:
    """What went into the pipeline: examples kept per family, and those left out for being too long."""

    examples: dict[str, int] = dataclasses.field(default_factory=dict)  # family -> kept
    skipped: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)  # family
    skipped_by_task: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)  # Task
    skipped_examples: list[str] = dataclasses.field(default_factory=list)  # first few, with lengths
    longest_target: dict[str, int] = dataclasses.field(default_factory=dict)  # family -> tokens + 1, kept
    longest_source: dict[str, int] = dataclasses.field(default_factory=dict)  # family -> tokens, kept

    def summary(self) -> str:
        kept = ", ".join(f"{family} {count}" for family, count in self.examples.items())
        text = f"examples: {kept}"
        if self.skipped:
            by_task = ", ".join(f"{task} {count}" for task, count in sorted(self.skipped_by_task.items()))
            text += f"; too long, left out: {sum(self.skipped.values())} ({by_task}); first: {self.skipped_examples[0]}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "examples": dict(self.examples),
            "skipped": dict(self.skipped),
            "skipped_by_task": dict(self.skipped_by_task),
            "skipped_examples": list(self.skipped_examples),
            "longest_target": dict(self.longest_target),
            "longest_source": dict(self.longest_source),
        }


def screen_examples(
    refs: Sequence[ExampleRef], maker: ExampleMaker, family: str, report_: PipelineReport
) -> list[ExampleRef]:
    """The refs whose tokens fit the configured lengths; the others are counted in ``report_`` (or, with
    ``too_long="error"``, the first raises ValueError naming the record)."""
    config = maker.config
    kept, longest, longest_source = [], 0, 0
    for ref in refs:
        src_len, tgt_len = maker.lengths(ref)
        if src_len <= config.max_src_len and tgt_len <= config.max_tgt_len:
            kept.append(ref)
            longest = max(longest, tgt_len)
            longest_source = max(longest_source, src_len)
            continue
        message = (
            f"{maker.records[ref.record].where}: {ref.task} {ref.subject!r}: source {src_len} tokens "
            f"(max_src_len {config.max_src_len}), target {tgt_len} (max_tgt_len {config.max_tgt_len})"
        )
        if config.too_long == "error":
            raise ValueError(f"example too long: {message}")
        report_.skipped[family] += 1
        report_.skipped_by_task[ref.task] += 1
        if len(report_.skipped_examples) < MAX_REPORTED_SKIPS:
            report_.skipped_examples.append(message)
    report_.examples[family] = len(kept)
    report_.longest_target[family] = longest
    report_.longest_source[family] = longest_source
    return kept


# ------------------------------------------------------------------------------------------------------------
# Training


@dataclasses.dataclass(eq=False)
class TrainDataset:
    """The training stream: iterate it for batches; ``report`` says what went in and what was left out.

    ``iter(train_dataset)`` is a grain ``DatasetIterator``: ``get_state()`` returns a JSON-able dict and
    ``set_state(state)`` resumes the identical batch sequence.
    """

    dataset: grain.IterDataset
    report: PipelineReport
    config: PipelineConfig
    per_host_batch: int
    # (instruction, target) length of each family's batches; one entry "all" when families share batches
    lengths: dict[str, tuple[int, int]]

    def __iter__(self) -> grain.DatasetIterator:
        return iter(self.dataset)

    def batch_shapes(self) -> dict[str, dict[str, tuple[tuple[int, ...], np.dtype]]]:
        """Per entry of ``lengths``, the (shape, dtype) of each array of this host's batches: every shape the
        stream will produce, known before the first batch (the loop compiles the train step for them)."""
        b, side = self.per_host_batch, self.config.image_size
        int32 = np.dtype(np.int32)
        return {
            name: {
                "src": ((b, source), int32),
                "images": ((b, side, side, 3), np.dtype(np.float32)),
                "prev": ((b, target), int32),
                "target": ((b, target), int32),
                "task": ((b,), int32),
            }
            for name, (source, target) in self.lengths.items()
        }


def supported_examples(refs: Sequence[ExampleRef], records: Sequence[Record]) -> list[ExampleRef]:
    """The refs whose record's ground truth supports their family: a record from a built dataset
    (`data.tfds.DatasetRecord`) names its ``families`` (a segmentation-only dataset has no disease labels, so
    it must not teach "no finding"); plain records support all."""
    return [ref for ref in refs if ref.family in getattr(records[ref.record], "families", TASK_FAMILIES)]


def _derived_seed(seed: int, purpose: int, family: str) -> int:
    """Independent 32-bit seeds per purpose (shuffle, augment) and family, from the run seed."""
    sequence = np.random.SeedSequence([seed, purpose, TASK_FAMILIES.index(family)])
    return int(sequence.generate_state(1)[0])


class RecordGroupedOrder(Sequence):
    """An endless sequence of `refs`, epoch after epoch, each epoch in a new order of *records*: the examples
    of one record stay adjacent, in their given order (``group_by_record``).

    Why: with every example shuffled on its own, "segment the left lung" and "segment the right lung" of one
    image land in different batches, and each step's gradient mostly says "draw a lung". Side by side in a
    batch, what the two answers share cancels and what tells them apart remains. (In the main job it did not
    end the left/right confusion by step 800; `first_token_weight` did, see the README.) The order of epoch e
    is a permutation of the records drawn from (seed, e): deterministic, and indexable without state, so the
    iterator's state still resumes it exactly.
    """

    def __init__(self, refs: Sequence[ExampleRef], seed: int):
        if not refs:
            raise ValueError("RecordGroupedOrder needs at least one example")
        self._refs = list(refs)
        by_record: dict[int, list[int]] = {}
        for position, ref in enumerate(self._refs):
            by_record.setdefault(ref.record, []).append(position)
        self._groups = [np.asarray(positions) for positions in by_record.values()]
        self._seed = seed

    def __len__(self) -> int:
        return sys.maxsize  # endless, as MapDataset.repeat() makes it

    @functools.lru_cache(maxsize=4)  # noqa: B019 (a few epochs' orders per dataset, kept for its lifetime)
    def epoch_order(self, epoch: int) -> np.ndarray:
        """Positions into `refs` in epoch `epoch`'s order."""
        permutation = np.random.default_rng([self._seed, epoch]).permutation(len(self._groups))
        return np.concatenate([self._groups[g] for g in permutation])

    def __getitem__(self, index: int) -> ExampleRef:  # type: ignore[override]
        epoch, position = divmod(index, len(self._refs))
        return self._refs[self.epoch_order(epoch)[position]]


def _padded_length(longest: int, multiple: int, limit: int) -> int:
    """A family's padded length: its longest example rounded up to a multiple of ``multiple``, at most
    ``limit``."""
    return min(-(-longest // multiple) * multiple, limit)


def make_train_dataset(
    records: Sequence[Record],
    image_dir: str | Path,
    tokenizer: Tokenizer,
    config: PipelineConfig | Mapping[str, Any] | ml_collections.ConfigDict | None,
    *,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> TrainDataset:
    """The infinite, deterministic training stream of this host (module docstring).

    Raises ValueError for a batch size not divisible by ``process_count``, a bad process index, or a family
    with a weight > 0 but no examples (naming it).
    """
    config = PipelineConfig.from_config(config)
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    seed = int(seed)
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index {process_index} / process_count {process_count}: expected 0 <= index < count"
        )
    if config.batch_size % process_count:
        raise ValueError(
            f"data config: batch_size {config.batch_size} is not divisible by process_count {process_count}"
        )
    per_host_batch = config.batch_size // process_count
    maker = ExampleMaker(records, image_dir, tokenizer, config, augment_images=config.augment)
    pipeline_report = PipelineReport()
    datasets, weights = [], []
    for family in TASK_FAMILIES:
        weight = config.weights[family]
        if weight == 0:
            continue
        refs = enumerate_examples(
            records, family, seed=seed, evidence_fraction=config.evidence_fraction,
            all_presence=config.presence_questions == "all",
        )  # fmt: skip
        refs = screen_examples(supported_examples(refs, records), maker, family, pipeline_report)
        if not refs:
            raise ValueError(
                f"task family {family!r} has weight {weight} but no examples in the {len(records)} records "
                "(set its weight to 0 to train without it)"
            )
        shuffle_seed = _derived_seed(seed, 0, family)
        if family in config.grouped_families:
            dataset = grain.MapDataset.source(RecordGroupedOrder(refs, shuffle_seed))
        else:
            # after the shuffle: a new permutation every epoch
            dataset = grain.MapDataset.source(refs).shuffle(seed=shuffle_seed).repeat()
        dataset = dataset.random_map(maker, seed=_derived_seed(seed, 1, family))
        if config.batch_by_family:
            # Host p takes this family's batches p, p + P, ... (see the mixed case below), before the mix.
            maker.source_lengths[family] = _padded_length(
                pipeline_report.longest_source[family], config.length_multiple, config.max_src_len
            )
            maker.target_lengths[family] = _padded_length(
                pipeline_report.longest_target[family], config.length_multiple, config.max_tgt_len
            )
            dataset = dataset.batch(per_host_batch, drop_remainder=True)[process_index::process_count]
        datasets.append(dataset)
        weights.append(weight)
    if pipeline_report.skipped:
        log.warning("input pipeline: %s", pipeline_report.summary())
    else:
        log.info("input pipeline: %s", pipeline_report.summary())

    mixed = grain.MapDataset.mix(datasets, weights) if len(datasets) > 1 else datasets[0]
    if config.batch_by_family:
        log.info(
            "input pipeline: one family per batch, instruction lengths %s, target lengths %s",
            maker.source_lengths, maker.target_lengths,
        )  # fmt: skip
        batched = mixed
    else:
        # Host p takes batches p, p + P, ...: at step k it holds global elements k G + p B .. (p + 1) B - 1.
        batched = mixed.batch(per_host_batch, drop_remainder=True)[process_index::process_count]
    read_options = grain.ReadOptions(
        num_threads=config.num_threads, prefetch_buffer_size=config.prefetch_batches
    )
    stream = batched.to_iter_dataset(read_options)
    if config.num_workers > 0:
        _mark_absl_flags_parsed()
        stream = stream.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.num_workers))
    if config.batch_by_family:
        lengths = {f: (maker.source_lengths[f], maker.target_lengths[f]) for f in maker.source_lengths}
    else:
        lengths = {"all": (config.max_src_len, config.max_tgt_len)}
    return TrainDataset(stream, pipeline_report, config, per_host_batch, lengths)


def _mark_absl_flags_parsed() -> None:
    """grain 0.2.18 reads an absl flag in mp_prefetch and crashes when no absl.app parsed the flags
    (google/grain#1355, fixed after 0.2.18). Marking them parsed (defaults) is the documented workaround."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


# ------------------------------------------------------------------------------------------------------------
# Evaluation


@dataclasses.dataclass(frozen=True, eq=False)
class EvalExample:
    """One held-out question with its framed ids and ground truth (canvas coordinates, see `build_sample`).
    The image is read on demand (`EvalSet.images`)."""

    ref: ExampleRef
    text: TaskSample
    truth: Any
    transform: augment.CanvasTransform  # canvas <-> original pixels (no jitter)
    arrays: Batch  # src (L,), prev (T,), target (T,), task ()

    @property
    def family(self) -> str:
        return self.ref.family

    @property
    def task(self) -> Task:
        return Task(self.ref.task)


@dataclasses.dataclass(eq=False)
class EvalSet:
    """Held-out examples in a fixed order (family, then record), with the lengths report."""

    examples: list[EvalExample]
    report: PipelineReport
    maker: ExampleMaker

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[EvalExample]:
        return iter(self.examples)

    def __getitem__(self, index: int) -> EvalExample:
        return self.examples[index]

    def images(self, examples: Sequence[EvalExample]) -> np.ndarray:
        """float32 (n, S, S, 3) canvases of the examples (each distinct image read once)."""
        cache: dict[int, np.ndarray] = {}
        for example in examples:
            if example.ref.record not in cache:
                cache[example.ref.record] = self.maker.sample(example.ref).arrays["images"]
        return np.stack([cache[example.ref.record] for example in examples])

    def batches(self, batch_size: int) -> Iterator[tuple[Batch, list[EvalExample]]]:
        """Static-shape batches in order, with the examples they hold. The last batch is filled up by
        repeating its last example; only the real examples are listed with it."""
        for start in range(0, len(self.examples), batch_size):
            chunk = self.examples[start : start + batch_size]
            padded = chunk + [chunk[-1]] * (batch_size - len(chunk))
            batch = {
                key: np.stack([e.arrays[key] for e in padded]) for key in ("src", "prev", "target", "task")
            }
            batch["images"] = self.images(padded)
            yield batch, chunk


def make_eval_examples(
    records: Sequence[Record],
    image_dir: str | Path,
    tokenizer: Tokenizer,
    config: PipelineConfig | Mapping[str, Any] | ml_collections.ConfigDict | None,
    *,
    families: Sequence[str] = TASK_FAMILIES,
    labels: Sequence[str] | None = None,
    report_prompts: Sequence[str] = ("plain", "evidence"),
) -> EvalSet:
    """Held-out examples per family, deterministic and without augmentation.

    Classification asks "is X present?" about every label of ``labels`` (default: the records' label
    vocabulary) for every record, so that a score per (image, label) exists; the other questions are those of
    training. Reports are asked once per prompt kind in ``report_prompts`` ("plain", "evidence"). Examples too
    long for the configured lengths are left out and counted in the report, as in training.
    """
    config = PipelineConfig.from_config(config)
    maker = ExampleMaker(records, image_dir, tokenizer, config, augment_images=False)
    vocabulary = tuple(labels) if labels is not None else label_vocabulary(records)
    unknown_prompts = set(report_prompts) - {"plain", "evidence"}
    if unknown_prompts:
        raise ValueError(
            f"report_prompts: unknown kinds {sorted(unknown_prompts)}; expected 'plain', 'evidence'"
        )
    pipeline_report = PipelineReport()
    examples: list[EvalExample] = []
    for family in families:
        if family == "classification":
            refs = classification_examples(records, negative_labels=vocabulary, all_presence=True)
        elif family == "localization":
            refs = localization_examples(records)
        elif family == "segmentation":
            refs = segmentation_examples(records)
        elif family == "report":
            plain = report_examples(records, evidence_fraction=0.0)
            refs = [ref._replace(flag=kind == "evidence") for ref in plain for kind in report_prompts]
        else:
            raise ValueError(f"unknown task family {family!r}; expected one of {TASK_FAMILIES}")
        for ref in screen_examples(supported_examples(refs, records), maker, family, pipeline_report):
            transform = maker.fit(ref)
            text, truth = build_sample(records[ref.record], ref, transform)
            src, target = token_ids(tokenizer, text)
            arrays = frame(src, target, config.max_src_len, config.max_tgt_len)
            arrays["task"] = np.int32(TASK_FAMILIES.index(family))
            examples.append(EvalExample(ref, text, truth, transform, arrays))
    if pipeline_report.skipped:
        log.warning("eval examples: %s", pipeline_report.summary())
    return EvalSet(examples, pipeline_report, maker)


# ------------------------------------------------------------------------------------------------------------
# Tokenizer


def task_texts(records: Sequence[Record], labels: Sequence[str] | None = None) -> list[str]:
    """Every instruction and target text the tasks produce for ``records`` (box and polygon targets are bins,
    which the BPE never sees), plus each vocabulary word (labels, locations, severities, structures) in its
    templates."""
    vocabulary = tuple(labels) if labels is not None else label_vocabulary(records)
    texts: list[str] = []
    refs = classification_examples(records, negative_labels=vocabulary, all_presence=True)
    refs += localization_examples(records) + segmentation_examples(records)
    refs += [
        ref._replace(flag=flag)
        for ref in report_examples(records, evidence_fraction=0.0)
        for flag in (False, True)
    ]
    for ref in refs:
        record = records[ref.record]
        text, _ = build_sample(record, ref, augment.fit_transform(record.width, record.height, 64, "stretch"))
        texts += [text.instruction, text.target]
    for label in vocabulary:
        texts += [classification.presence_instruction(label), classification.presence_target(label, True)]
        texts += [classification.presence_target(label, False), classification.location_instruction(label)]
        texts += [classification.severity_instruction(label), localization.box_instruction(label)]
    texts += [classification.location_target(location) for location in classification.LOCATIONS]
    texts += [classification.severity_target(severity) for severity in classification.SEVERITY_LEVELS]
    texts += [segmentation.segmentation_instruction(structure) for structure in segmentation.STRUCTURES]
    return texts


def build_tokenizer(
    records: Sequence[Record], vocab_size: int, *, labels: Sequence[str] | None = None, min_frequency: int = 2
) -> TrainedTokenizer:
    """Train the ``trained`` tokenizer (a byte-level BPE) on `task_texts` of ``records``.

    The vocabulary words are repeated ``min_frequency`` times so that each can become a token even when the
    records hold it once. ``vocab_size`` counts the 1,000 bins (see `TrainedTokenizer.train`).
    """
    texts = task_texts(records, labels)
    vocabulary_texts = task_texts([], labels if labels is not None else label_vocabulary(records))
    return TrainedTokenizer.train(
        texts + vocabulary_texts * min_frequency, vocab_size=vocab_size, min_frequency=min_frequency
    )
