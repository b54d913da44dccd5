"""The evidence workflow (DESIGN.md decision 8): one image in, every intermediate answer with its evidence and a
report out, as one JSON document per image.

The chain, for a batch of images (each stage asks its questions for every image at once, batched):

  1. classification  " is {label} in this image?" for every label of the vocabulary (P(yes) from one
                     teacher-forced decoder step), and " what disease does this image have?" decoded under
                     the list constraint; the lungs and the heart are segmented in the same stage (they do not
                     depend on the findings);
  2. attributes      for every positive finding (P(yes) >= threshold): "where is X?" and "what is the level of
                     X?" under phrase constraints over the task vocabularies, and a box (box constraint); the
                     pneumothorax polygon when pneumothorax is positive;
  3. measurements    CTR from the heart and lung polygons, PCR from the pneumothorax polygon and its lung
                     (`imtcxr_jax.geometry`);
  4. report          the evidence prompt (`tasks.report.report_instruction`) -> beam search -> report;
  5. flags           consistency checks between the report (read by the CheXpert-style labeler), the findings
                     and the measurements, and findings whose confidence is below the review threshold.

Batching. Questions of one stage are grouped by how they are decoded (one constraint and length each), and
each group runs in batches of `WorkflowOptions.batch_size` rows spanning images and findings. Batch rows are
padded to a power of two (or to the full batch size with ``bucket_batches=False``) and instructions to a
multiple of 16 tokens, so that the jitted encoder and beam search compile once per kind of question and shape
bucket, not once per call. Each image is preprocessed once, uploaded to the device once, and its ResNet
trunk runs once (`IMTCXR.encode_images`, in batches of images): every question about it gathers its row of
those features and runs only the transformer encoder (the encoder's output depends on the instruction).
Box and polygon questions compute only the logits of EOS and the 1000 bins at each step instead of the
whole vocabulary (``project_allowed``).

Confidence. A decoded answer's confidence is exp(score), the beam search's length-normalised log-probability
where every step of a constrained answer is normalised over the tokens its constraint allows there
(``normalize_over="allowed"``, see `decoding/beam_search.py`): the model's confidence among well-formed
answers, as a presence answer's confidence is the probability of the answer given among the two allowed,
P(" yes") / (P(" yes") + P(" no")) of the first answer token, or its complement. The report is free text:
its steps are normalised over the whole vocabulary (there the allowed set is the vocabulary).

Coordinates. The model sees a square canvas (`data.augment.prepare_image`, letterbox or stretch as trained);
every box and polygon in the document is mapped back through the `CanvasTransform` to the original image's
pixels (x right, y down, the image spans [0, width] x [0, height]) and clipped to it. A question's raw answer
keeps the model's own words (canvas bins); its parsed value is in original pixels.

The document (``schema_version`` 1), JSON-able (no NaN)::

    {
      "schema_version": 1,
      "image": {"path": str | null, "width": int, "height": int},        # original pixels
      "model": {...},                                                    # provenance given by the caller
      "settings": {"threshold": float, "review_threshold": float, "beam_size": int, "image_size": int,
                   "resize_mode": "letterbox" | "stretch", "pad_value": int, "num_points": int,
                   "max_report_len": int, "max_prompt_len": int, "labels": [str, ...]},
      "questions": [                                                     # every question asked, in order
        {"task": "presence" | "diseases" | "location" | "severity" | "box" | "segmentation" | "report",
         "subject": str,                          # label or structure; "" for the disease list and report
         "instruction": str,                      # exactly the text given to the tokenizer
         "answer": str,                           # the decoded answer ("yes"/"no" for presence)
         "parsed": bool | str | [str] | [x0, y0, x1, y1] | [[x, y], ...] | null,   # null when unparseable
         "confidence": float,                     # in [0, 1]
         "error": str | null,                     # why the answer does not parse (null when it does)
         # presence only: "p_yes": float
         # report only: "prompt": "evidence" | "findings" (attributes left out) | "plain", "note": str | null
        }, ...],
      "findings": [{"label": str, "confidence": float | null, "severity": str | null,
                    "location": str | null, "box": [x0, y0, x1, y1] | null}, ...],
      "segmentation": {"right lung" | "left lung" | "heart" | "pneumothorax": [[x, y], ...]},
      "measurements": {"ctr": float | null, "ctr_reason": str | null, "ctr_severity": str | null,
                       "pcr": float | null, "pcr_reason": str | null, "pcr_side": "right" | "left" | null},
      "flags": [{"kind": str, "message": str, "label": str (some kinds)}, ...],
      "report": str | null
    }

Flag kinds:

* ``review``: a finding whose confidence is below the review threshold;
* ``report_contradicts_evidence``: the labeler reads the report as denying a finding of the evidence,
  asserting one the evidence lacks (a label asked and found absent), or calling the study normal; or the
  report puts a finding of the evidence on the other side, alone or beside its own (`report_sides`), or
  grades it otherwise than the evidence's severity (`report_severities`: "large" for a moderate one);
* ``report_contradicts_measurement``: the report on cardiomegaly disagrees with the CTR (> 0.51 or not);
* ``measurement_contradicts_finding``: CTR > 0.51 without the cardiomegaly finding, or the reverse;
* ``classification_disagreement``: the disease list and the presence answers name different labels;
* ``unparseable_answer``: an answer that does not parse (only free-text reports can: the rest is
  constrained);
* ``empty_box``: a box of zero area (a point, a line, or a box that lies in the letterbox padding);
* ``evidence_prompt_shortened``: the evidence prompt was longer than the model was trained on
  (``max_prompt_len``), so the attributes, or all the evidence, were left out of it;
* ``consistency_not_checked``: no labeler was available to read the report.

Editing. A user may edit ``findings`` (remove one, change a severity or location) and ``measurements``
(ctr, pcr) of a document; `regenerate_reports` (or `regenerate_report` for one) then asks the report question
again from the edited evidence, replaces the report question and ``report``, and recomputes ``flags``. Nothing
else is asked again. `check_edited_document` says what is wrong with an edit before the model runs. From the
command line: ``imtcxr analyze DOCUMENT.json ...`` (`imtcxr_jax.analyze`).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from imtcxr_jax import geometry
from imtcxr_jax.data import augment
from imtcxr_jax.decoding.beam_search import beam_search, encode, encode_images, first_token_log_probs
from imtcxr_jax.decoding.constraints import BoxConstraint, Constraint, PhraseConstraint, PolygonConstraint
from imtcxr_jax.models.imtcxr import IMTCXR
from imtcxr_jax.tasks import classification, localization, report, segmentation
from imtcxr_jax.tasks.common import Task, Unparseable, normalize_label
from imtcxr_jax.text.tokenizer import PAD_ID, Tokenizer

SCHEMA_VERSION = 1
ANATOMY = ("right lung", "left lung", "heart")  # what CTR needs
PNEUMOTHORAX = "pneumothorax"
LENGTH_BUCKET = 16  # instructions are padded to a multiple of this many tokens (fewer compilations)
COORDINATE_DECIMALS = 2
CONFIDENCE_DECIMALS = 6


# ------------------------------------------------------------------------------------------------------------
# Options


@dataclasses.dataclass(frozen=True)
class WorkflowOptions:
    """What the workflow asks and how it decodes.

    labels: the disease vocabulary asked about ("is X in this image?"), normalised; "no finding" is not a
    label. located / graded / boxed: the labels whose findings get a location, a severity, a box question
    (None: every label); a model is best asked only what it was trained on (`questions_from_records`).
    threshold: P(yes) from which a label is a finding. review_threshold: findings with a lower confidence are
    flagged for review. image_size / resize_mode / pad_value: the canvas the model was trained on.
    max_report_len: report tokens before the forced EOS. max_prompt_len: the longest evidence prompt (tokens
    incl. BOS/EOS) asked; a longer one falls back to the plain instruction (flagged). batch_size: rows per
    model call; bucket_batches pads a short last batch to a power of two instead of the full size.
    """

    labels: tuple[str, ...] = tuple(d for d in classification.DISEASES if d != classification.NO_FINDING)
    located: tuple[str, ...] | None = None
    graded: tuple[str, ...] | None = None
    boxed: tuple[str, ...] | None = None
    threshold: float = 0.5
    review_threshold: float = 0.75
    ask_disease_list: bool = True
    segment_pneumothorax: bool = True
    num_points: int = 30
    beam_size: int = 1
    max_report_len: int = 95
    max_prompt_len: int = 128
    image_size: int = 512
    resize_mode: str = "letterbox"
    pad_value: int = 0
    batch_size: int = 16
    bucket_batches: bool = True

    def __post_init__(self) -> None:
        labels = tuple(dict.fromkeys(normalize_label(label, "label") for label in self.labels))
        if not labels or classification.NO_FINDING in labels:
            raise ValueError(f"labels: got {self.labels!r}, expected disease labels (not 'no finding')")
        object.__setattr__(self, "labels", labels)
        for name in ("located", "graded", "boxed"):
            subset = getattr(self, name)
            if subset is not None:
                subset = tuple(normalize_label(label, name) for label in subset)
                object.__setattr__(self, name, tuple(label for label in labels if label in subset))
        for name in ("threshold", "review_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}: got {value!r}, expected a probability in [0, 1]")
        minimum = {
            "num_points": segmentation.MIN_POINTS,
            "beam_size": 1,
            "max_report_len": 1,
            "max_prompt_len": 3,
            "image_size": 16,
            "batch_size": 1,
            "pad_value": 0,
        }
        for name, lowest in minimum.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
                raise ValueError(f"{name}: got {value!r}, expected an integer >= {lowest}")
        if self.resize_mode not in augment.RESIZE_MODES:
            raise ValueError(f"resize_mode: got {self.resize_mode!r}, expected one of {augment.RESIZE_MODES}")

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> WorkflowOptions:
        """The options of a training config (`config.data` canvas and lengths, `config.beam_size`) plus
        `overrides`."""
        data = config.data
        values = {
            "image_size": int(data.image_size),
            "resize_mode": str(data.resize_mode),
            "pad_value": int(data.pad_value),
            "max_report_len": int(data.max_tgt_len) - 1,  # max_tgt_len counts the EOS
            "max_prompt_len": int(data.max_src_len),
            "beam_size": int(config.beam_size),
        }
        return cls(**(values | overrides))

    def asks(self, subset: str, label: str) -> bool:
        """Whether the `subset` ("located", "graded", "boxed") question is asked for `label`'s finding."""
        chosen = getattr(self, subset)
        return chosen is None or label in chosen

    def settings(self) -> dict[str, Any]:
        """The document's ``settings``: what `regenerate_reports` needs to ask again exactly as before."""
        names = (
            "threshold",
            "review_threshold",
            "beam_size",
            "image_size",
            "resize_mode",
            "pad_value",
            "num_points",
            "max_report_len",
            "max_prompt_len",
        )
        return {name: getattr(self, name) for name in names} | {"labels": list(self.labels)}


def questions_from_records(records: Sequence[Any]) -> dict[str, tuple[str, ...]]:
    """What a model trained on `records` (`data.sources.Record`) was taught to answer, as `WorkflowOptions`
    keywords: ``labels`` (every label present), ``located`` / ``graded`` / ``boxed`` (labels with a location, a
    severity, a box in some finding). Asking a question never trained gives an answer that means nothing."""
    labels = [label for record in records for label in record.labels if label != classification.NO_FINDING]
    findings = [finding for record in records for finding in record.findings]

    def having(field: str) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f.label for f in findings if getattr(f, field) is not None))

    return {
        "labels": tuple(dict.fromkeys(labels)),
        "located": having("location"),
        "graded": having("severity"),
        "boxed": having("box"),
    }


# ------------------------------------------------------------------------------------------------------------
# Images


@dataclasses.dataclass(frozen=True, eq=False)
class PreparedImage:
    """An image on the model's canvas, with the way back to its original pixels.

    `transform` maps the pixels given to `prepare_image` onto the canvas; when those pixels are a downscaled
    copy of the original (`image_io.read_image` caps the longer side), `width` x `height` is the original
    size and coordinates are scaled up to it.
    """

    path: str | None
    width: int  # original pixels
    height: int
    canvas: np.ndarray  # float32 (S, S, 3) in [-1, 1]
    transform: augment.CanvasTransform

    @property
    def scale(self) -> np.ndarray:
        """(sx, sy): original pixels per pixel of the image that was put on the canvas."""
        source_w, source_h = self.transform.source_size
        return np.array([self.width / source_w, self.height / source_h])

    def points_from_canvas(self, points: np.ndarray) -> np.ndarray:
        """Canvas points (N, 2) -> original pixels, clipped to the image."""
        return self.transform.from_canvas(points) * self.scale

    def boxes_from_canvas(self, boxes: np.ndarray) -> np.ndarray:
        """Canvas boxes (k, 4) -> original pixels, clipped to the image."""
        return self.transform.boxes_from_canvas(boxes) * np.tile(self.scale, 2)


def prepare_image(
    pixels: np.ndarray,
    options: WorkflowOptions,
    path: str | None = None,
    original_size: tuple[int, int] | None = None,
) -> PreparedImage:
    """uint8 pixels (H, W) or (H, W, 1|3|4) -> `PreparedImage` on the canvas the model was trained on.

    original_size: (width, height) of the original when `pixels` is a downscaled copy of it (as
    `LoadedImage.width/height`); coordinates are then reported in the original's pixels. Raises ValueError
    for pixels that are not a uint8 image, or an original size of another aspect ratio, naming `path`.
    """
    where = path or "image"
    try:
        canvas, transform = augment.prepare_image(
            np.asarray(pixels), options.image_size, mode=options.resize_mode, pad_value=options.pad_value
        )
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from error
    width, height = transform.source_size
    if original_size is not None:
        original_w, original_h = (int(v) for v in original_size)
        # A downscaled copy rounds each side to whole pixels: allow one pixel of rounding per side.
        scale = max(original_w / width, original_h / height)
        if (
            min(original_w, original_h) < 1
            or abs(original_w / scale - width) > 1
            or abs(original_h / scale - height) > 1
        ):
            raise ValueError(
                f"{where}: pixels of {width}x{height} are not a scaled copy of a {original_w}x{original_h} image"
            )
        width, height = original_w, original_h
    return PreparedImage(path, width, height, canvas, transform)


# ------------------------------------------------------------------------------------------------------------
# The workflow


def run_workflow(
    model: IMTCXR,
    tokenizer: Tokenizer,
    images: Sequence[PreparedImage],
    options: WorkflowOptions,
    *,
    labeler: Any | None = None,
    check_report: bool = True,
    provenance: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The evidence documents (module docstring) of `images`, in order.

    labeler: a `CheXpertLabeler` for the report checks (default: the one reading the shared phrase lists, if
    they are there); check_report=False skips those checks. provenance: copied into each document's
    ``model`` (e.g. the checkpoint and its step).
    """
    if not images:
        return []
    plan = _Plan(model, tokenizer, options)
    asker = _Asker(model, tokenizer, images, options)
    states = [_ImageState(image, options) for image in images]

    # Stage 1: classification, and the anatomy CTR needs (independent of the findings).
    presence = [
        _Question(i, Task.PRESENCE, label, classification.presence_instruction(label))
        for i, label in itertools.product(range(len(images)), options.labels)
    ]
    lists = [
        _Question(i, Task.DISEASES, "", classification.diseases_instruction()) for i in range(len(images))
    ]
    anatomy = [
        _Question(i, Task.SEGMENTATION, name, segmentation.segmentation_instruction(name))
        for i, name in itertools.product(range(len(images)), ANATOMY)
    ]
    _record(states, presence, asker.ask_yes_no(presence, plan.yes_no_ids), plan)
    if plan.disease_list is not None:
        _record(states, lists, asker.ask(lists, plan.disease_list), plan)
    _record(states, anatomy, asker.ask(anatomy, plan.polygon), plan)
    for state in states:
        state.decide_findings()

    # Stage 2: attributes and a box per finding, the pneumothorax polygon; one batch per kind of answer.
    stage: dict[str, list[_Question]] = {"location": [], "severity": [], "box": [], "polygon": []}
    for i, state in enumerate(states):
        for label in state.findings:
            if options.asks("located", label):
                stage["location"].append(
                    _Question(i, Task.LOCATION, label, classification.location_instruction(label))
                )
            if options.asks("graded", label):
                stage["severity"].append(
                    _Question(i, Task.SEVERITY, label, classification.severity_instruction(label))
                )
            if options.asks("boxed", label):
                stage["box"].append(_Question(i, Task.BOX, label, localization.box_instruction(label)))
        if PNEUMOTHORAX in state.findings and options.segment_pneumothorax:
            instruction = segmentation.segmentation_instruction(PNEUMOTHORAX)
            stage["polygon"].append(_Question(i, Task.SEGMENTATION, PNEUMOTHORAX, instruction))
    for kind, questions in stage.items():
        _record(states, questions, asker.ask(questions, getattr(plan, kind)), plan)

    # Stages 3-4: measurements, then the report from the evidence.
    documents = [state.document(provenance) for state in states]
    for document in documents:
        document["measurements"] = measure(document)
    _ask_reports(asker, plan, documents, range(len(documents)))

    # Stage 5: consistency flags.
    labeler = _labeler(labeler) if check_report else None
    for document in documents:
        document["flags"] = document_flags(document, labeler, check_report=check_report)
    return documents


def regenerate_report(
    model: IMTCXR,
    tokenizer: Tokenizer,
    document: Mapping[str, Any],
    image: np.ndarray | PreparedImage,
    *,
    labeler: Any | None = None,
    check_report: bool = True,
    batch_size: int = 1,
    bucket_batches: bool = True,
) -> dict[str, Any]:
    """A copy of `document` whose report is asked again from its (edited) ``findings`` and ``measurements``:
    `regenerate_reports` of one document."""
    return regenerate_reports(
        model, tokenizer, [document], [image], labeler=labeler, check_report=check_report,
        batch_size=batch_size, bucket_batches=bucket_batches,
    )[0]  # fmt: skip


def regenerate_reports(
    model: IMTCXR,
    tokenizer: Tokenizer,
    documents: Sequence[Mapping[str, Any]],
    images: Sequence[np.ndarray | PreparedImage],
    *,
    labeler: Any | None = None,
    check_report: bool = True,
    batch_size: int = 16,
    bucket_batches: bool = True,
) -> list[dict[str, Any]]:
    """Copies of `documents` whose reports are asked again from their (edited) ``findings`` and
    ``measurements``, the report questions of all of them batched (of documents with equal ``settings``).

    Only the report question is asked: every other question, the findings, segmentation and measurements are
    kept as they are; the report question entry and ``report`` are replaced and ``flags`` recomputed. Each
    document's report is asked with the settings it records (beam size, lengths, canvas), so that an unedited
    document gets its report again. `images[k]` is document k's original image as uint8 pixels, or a scaled
    copy of them (`LoadedImage.pixels` of a large image), or its `PreparedImage`. Raises ValueError for any
    document that `check_edited_document` refuses, naming the document's index and the problem.
    batch_size / bucket_batches: as in `WorkflowOptions` (the shape the report questions run in).
    """
    if len(documents) != len(images):
        raise ValueError(f"regenerate_reports: {len(documents)} documents but {len(images)} images")
    checked = []
    for index, (document, image) in enumerate(zip(documents, images, strict=True)):
        try:
            checked.append(_checked_edit(document, image, batch_size, bucket_batches))
        except ValueError as error:
            raise ValueError(f"document{f' {index}' if len(documents) > 1 else ''}: {error}") from error
    groups: dict[WorkflowOptions, list[int]] = {}
    for index, (_, options, _) in enumerate(checked):
        groups.setdefault(options, []).append(index)
    for options, indices in groups.items():
        asker = _Asker(model, tokenizer, [checked[i][2] for i in indices], options)
        _ask_reports(
            asker, _Plan(model, tokenizer, options), [checked[i][0] for i in indices], range(len(indices))
        )
    labeler = _labeler(labeler) if check_report else None
    for edited, _, _ in checked:
        edited["flags"] = document_flags(edited, labeler, check_report=check_report)
    return [edited for edited, _, _ in checked]


def check_edited_document(document: Any, image: np.ndarray | PreparedImage) -> PreparedImage:
    """Whether `regenerate_reports` can ask `document`'s report again with `image`: ValueError naming what is
    wrong (not an evidence document of this schema version, settings or evidence that are not valid, an
    image of another size), without running the model. Returns the image on the document's canvas, to give
    `regenerate_reports` instead of `image` (it is then not prepared again)."""
    try:
        return _checked_edit(document, image, batch_size=1, bucket_batches=True)[2]
    except ValueError as error:
        raise ValueError(f"document: {error}") from error


def _checked_edit(
    document: Any, image: np.ndarray | PreparedImage, batch_size: int, bucket_batches: bool
) -> tuple[dict[str, Any], WorkflowOptions, PreparedImage]:
    """(a validated deep copy of `document`, the options its report is asked with, its prepared image)."""
    if not isinstance(document, Mapping):
        raise ValueError(f"expected a JSON object, got {type(document).__name__}")
    if document.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"schema_version {document.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    for key, kind in (("image", dict), ("settings", dict), ("questions", list)):
        if not isinstance(document.get(key), kind):
            raise ValueError(f"{key} must be a JSON {'object' if kind is dict else 'array'}")
    for index, question in enumerate(document["questions"]):
        if not (
            isinstance(question, dict)
            and all(isinstance(question.get(key), str) for key in ("task", "subject"))
            and "parsed" in question
            and isinstance(question.get("error"), str | None)
        ):
            raise ValueError(f"questions[{index}]: expected an object with task, subject, parsed and error")
    settings = dict(document["settings"])
    known = set(WorkflowOptions().settings())
    if set(settings) != known:
        missing, unknown = sorted(known - set(settings)), sorted(set(settings) - known)
        problems = [f"lacks {missing}"] * bool(missing) + [f"has unknown {unknown}"] * bool(unknown)
        raise ValueError(f"settings {' and '.join(problems)}")
    if not isinstance(settings["labels"], list) or not all(isinstance(x, str) for x in settings["labels"]):
        raise ValueError("settings.labels must be a list of strings")
    try:
        options = WorkflowOptions(
            **{k: v for k, v in settings.items() if k != "labels"},
            labels=tuple(settings["labels"]),
            batch_size=batch_size,
            bucket_batches=bucket_batches,
        )
    except (TypeError, ValueError) as error:
        raise ValueError(f"settings: {error}") from error
    width, height = (document["image"].get(key) for key in ("width", "height"))
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (width, height)):
        raise ValueError(f"image.width/height must be positive integers, got {width!r}/{height!r}")
    path = document["image"].get("path")
    prepared = (
        image if isinstance(image, PreparedImage) else prepare_image(image, options, path, (width, height))
    )
    if (prepared.width, prepared.height) != (width, height):
        raise ValueError(
            f"image: got {prepared.width}x{prepared.height} pixels, the document is of a {width}x{height} image"
        )
    edited = copy.deepcopy(dict(document))
    _check_evidence(edited, options)
    return edited, options, prepared


# ------------------------------------------------------------------------------------------------------------
# Questions, answers and how they are decoded


@dataclasses.dataclass(frozen=True)
class _Question:
    image: int  # index into the images of the run
    task: Task
    subject: str  # label or structure; "" for the disease list and the report
    instruction: str


@dataclasses.dataclass(frozen=True)
class _Answer:
    text: str
    confidence: float
    p_yes: float | None = None  # presence answers only


@dataclasses.dataclass(frozen=True)
class _Decoding:
    """How one kind of answer is decoded: the constraint (None = free text) and the most tokens."""

    name: str
    constraint: Constraint | None
    max_len: int
    no_repeat_ngram_size: int = 0  # n-gram blocking would forbid legitimately repeated bins and separators
    project_allowed: bool = False  # logits of the constraint's candidate tokens only (bins + EOS)


class _Plan:
    """The decodings of every kind of question, built once per run from the tokenizer and the options."""

    def __init__(self, model: IMTCXR, tokenizer: Tokenizer, options: WorkflowOptions):
        vocab, longest = model.cfg.vocab_size, model.cfg.max_target_positions - 1
        if tokenizer.vocab_size != vocab:
            raise ValueError(f"tokenizer: {tokenizer.vocab_size} ids, the model has {vocab}")
        self.options = options

        def phrases(words: Iterable[str]) -> list[list[int]]:
            return [tokenizer.encode(" " + word) for word in words]

        def phrase(name: str, words: Sequence[str], **list_mode: Any) -> _Decoding:
            constraint = PhraseConstraint(phrases(words), vocab_size=vocab, **list_mode)
            return _Decoding(name, constraint, min(constraint.max_steps, longest))

        yes, no = tokenizer.encode(" yes"), tokenizer.encode(" no")
        if yes[0] == no[0]:
            raise ValueError("tokenizer: ' yes' and ' no' start with the same token; P(yes) is undefined")
        self.yes_no_ids = (yes[0], no[0])
        self.location = phrase("location", classification.LOCATIONS)
        self.severity = phrase("severity", classification.SEVERITIES)  # a present finding is not "normal"
        box = BoxConstraint(vocab_size=vocab, num_boxes=1)
        self.box = _Decoding("box", box, 4, project_allowed=True)
        points = options.num_points
        polygon = PolygonConstraint(vocab_size=vocab, num_points=points)
        self.polygon = _Decoding("polygon", polygon, 2 * points, project_allowed=True)
        self.report = _Decoding("report", None, min(options.max_report_len, longest), no_repeat_ngram_size=3)
        self.list_vocabulary = (*options.labels, classification.NO_FINDING)
        self.disease_list = (
            phrase(
                "disease list",
                self.list_vocabulary,
                separator=_separator(tokenizer, options.labels),
                solo=[len(options.labels)],
            )
            if options.ask_disease_list
            else None
        )


def _separator(tokenizer: Tokenizer, labels: Sequence[str]) -> int:
    """The token id of "," that joins the disease list " a, b" (the space belongs to the next label)."""
    comma = tokenizer.encode(",")
    first, second = labels[0], labels[-1] if len(labels) > 1 else labels[0]
    joined = tokenizer.encode(f" {first}, {second}")
    if len(comma) != 1 or joined != [*tokenizer.encode(" " + first), *comma, *tokenizer.encode(" " + second)]:
        raise ValueError(
            "tokenizer: the disease list ' a, b' does not split into ' a' + ',' + ' b'; set "
            "ask_disease_list=False to classify by the presence questions alone"
        )
    return comma[0]


class _Asker:
    """Runs questions about the images of one run on the model, in static-shape batches."""

    def __init__(
        self, model: IMTCXR, tokenizer: Tokenizer, images: Sequence[PreparedImage], options: WorkflowOptions
    ):
        self.model, self.tokenizer, self.options = model, tokenizer, options
        self.graphdef, self.state = nnx.split(model)
        # The ResNet trunk runs once per image (in bucketed batches of images); each question batch gathers
        # its images' rows of these features on the device.
        canvases = np.stack([image.canvas for image in images])
        chunks = []
        for start in range(0, len(canvases), options.batch_size):
            chunk = canvases[start : start + options.batch_size]
            rows = _bucket(len(chunk), options.batch_size) if options.bucket_batches else options.batch_size
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], rows - len(chunk), axis=0)])
            chunks.append(encode_images(self.graphdef, self.state, jnp.asarray(padded))[: len(chunk)])
        self.features = jnp.concatenate(chunks) if len(chunks) > 1 else chunks[0]

    def ask_yes_no(self, questions: Sequence[_Question], ids: tuple[int, int]) -> list[_Answer]:
        """Presence answers from P(" yes") vs P(" no") of the first answer token."""
        answers = []
        for batch, src, features in self._batches(questions):
            log_probs = np.asarray(
                first_token_log_probs(
                    self.graphdef, self.state, src, image_features=features, ids=jnp.asarray(ids)
                )
            )
            for yes, no in log_probs[: len(batch)].astype(np.float64):
                # P(yes) renormalised over {yes, no}: a sigmoid of the log-odds, capped against overflow.
                p_yes = 1.0 / (1.0 + math.exp(min(no - yes, 700.0)))
                text = "yes" if p_yes >= 0.5 else "no"
                answers.append(_Answer(text, max(p_yes, 1.0 - p_yes), p_yes))
        return answers

    def ask(self, questions: Sequence[_Question], decoding: _Decoding) -> list[_Answer]:
        """Answers decoded by beam search under `decoding`'s constraint; the best hypothesis of each."""
        answers = []
        for batch, src, features in self._batches(questions):
            enc = encode(self.graphdef, self.state, src, image_features=features)
            result = beam_search(
                self.model,
                enc,
                beam_size=self.options.beam_size,
                max_len=decoding.max_len,
                constraint=decoding.constraint,
                no_repeat_ngram_size=decoding.no_repeat_ngram_size,
                normalize_over="allowed",  # the confidence convention of the document (module docstring)
                project_allowed=decoding.project_allowed,
                split=(self.graphdef, self.state),
            )
            tokens, scores = np.asarray(result.tokens[:, 0]), np.asarray(result.scores[:, 0], np.float64)
            for row, score in zip(tokens[: len(batch)], scores[: len(batch)], strict=True):
                # A slot without a finished hypothesis has score -inf: confidence 0, an empty answer.
                answers.append(_Answer(self.tokenizer.decode(row.tolist()), float(np.exp(score))))
        return answers

    def _batches(self, questions: Sequence[_Question]):
        """(questions, src (B, L), image features (B, h, w, C)) per batch; B and L padded to their buckets."""
        size = self.options.batch_size
        for start in range(0, len(questions), size):
            batch = list(questions[start : start + size])
            rows = _bucket(len(batch), size) if self.options.bucket_batches else size
            padded = batch + [batch[-1]] * (rows - len(batch))  # repeated rows: results dropped
            ids = [self.tokenizer.encode_source(q.instruction) for q in padded]
            limit = self.model.cfg.max_source_positions
            longest = max(len(i) for i in ids)
            if longest > limit:
                raise ValueError(f"instruction of {longest} tokens exceeds max_source_positions {limit}")
            length = min(-(-longest // LENGTH_BUCKET) * LENGTH_BUCKET, limit)
            src = np.full((rows, length), PAD_ID, np.int32)
            for row, token_ids in enumerate(ids):
                src[row, : len(token_ids)] = token_ids
            features = jnp.take(self.features, jnp.asarray([q.image for q in padded]), axis=0)
            yield batch, jnp.asarray(src), features


def _bucket(count: int, limit: int) -> int:
    """The smallest power of two >= count, at most `limit`."""
    return min(1 << max(count - 1, 0).bit_length(), limit)


# ------------------------------------------------------------------------------------------------------------
# Per-image state and the document


class _ImageState:
    """What the workflow knows about one image while it runs."""

    def __init__(self, image: PreparedImage, options: WorkflowOptions):
        self.image, self.options = image, options
        self.questions: list[dict[str, Any]] = []
        self.values: dict[tuple[Task, str], Any] = {}  # (task, subject) -> parsed value (None: unparseable)
        self.confidence: dict[tuple[Task, str], float] = {}
        self.findings: list[str] = []  # positive labels, vocabulary order

    def decide_findings(self) -> None:
        """Positive labels: P(yes) >= threshold; without presence questions, the disease list's labels."""
        presence = [q for q in self.questions if q["task"] == Task.PRESENCE.value]
        if presence:
            self.findings = [q["subject"] for q in presence if q["p_yes"] >= self.options.threshold]
        else:
            self.findings = list(self.values.get((Task.DISEASES, ""), None) or [])

    def finding_confidence(self, label: str) -> float:
        """P(yes) of the label's presence question; without one, the confidence of the disease list."""
        presence = next(
            (q for q in self.questions if q["task"] == Task.PRESENCE.value and q["subject"] == label), None
        )
        return presence["p_yes"] if presence is not None else self.confidence[(Task.DISEASES, "")]

    def document(self, provenance: Mapping[str, Any] | None) -> dict[str, Any]:
        image = self.image
        findings = [
            {
                "label": label,
                "confidence": _round(self.finding_confidence(label), CONFIDENCE_DECIMALS),
                "severity": self.values.get((Task.SEVERITY, label)),
                "location": self.values.get((Task.LOCATION, label)),
                "box": copy.deepcopy(self.values.get((Task.BOX, label))),
            }
            for label in self.findings
        ]
        polygons = {
            name: copy.deepcopy(self.values[(Task.SEGMENTATION, name)])
            for name in (*ANATOMY, PNEUMOTHORAX)
            if self.values.get((Task.SEGMENTATION, name)) is not None
        }
        return {
            "schema_version": SCHEMA_VERSION,
            "image": {"path": image.path, "width": image.width, "height": image.height},
            "model": dict(provenance or {}),
            "settings": self.options.settings(),
            "questions": self.questions,
            "findings": findings,
            "segmentation": polygons,
            "measurements": {},
            "flags": [],
            "report": None,
        }


def _record(
    states: list[_ImageState], questions: Sequence[_Question], answers: Sequence[_Answer], plan: _Plan
) -> None:
    """Parse each answer and file it, with its question, under its image."""
    for question, answer in zip(questions, answers, strict=True):
        state = states[question.image]
        value = _parse(question, answer.text, state.image, plan)
        entry: dict[str, Any] = {
            "task": question.task.value,
            "subject": question.subject,
            "instruction": question.instruction,
            "answer": answer.text,
            "parsed": None if isinstance(value, Unparseable) else value,
            "confidence": _round(answer.confidence, CONFIDENCE_DECIMALS),
            "error": value.reason if isinstance(value, Unparseable) else None,
        }
        if answer.p_yes is not None:
            entry["p_yes"] = _round(answer.p_yes, CONFIDENCE_DECIMALS)
        state.questions.append(entry)
        key = (question.task, question.subject)
        state.values[key] = entry["parsed"]
        state.confidence[key] = entry["confidence"]


def _parse(question: _Question, text: str, image: PreparedImage, plan: _Plan) -> Any:
    """The JSON value of an answer, coordinates in original pixels; or `Unparseable`."""
    size = image.transform.canvas_size
    task = question.task
    if task is Task.PRESENCE:
        return classification.parse_presence(text)
    if task is Task.DISEASES:
        value = classification.parse_diseases(text, plan.list_vocabulary)
        return value if isinstance(value, Unparseable) else list(value)
    if task is Task.LOCATION:
        return classification.parse_location(text)
    if task is Task.SEVERITY:
        return classification.parse_severity(text, classification.SEVERITIES)
    if task is Task.BOX:
        boxes = localization.parse_boxes(text, size, size)
        if isinstance(boxes, Unparseable):
            return boxes
        return _rounded(image.boxes_from_canvas(boxes)[0])
    if task is Task.SEGMENTATION:
        points = segmentation.parse_polygon(text, size, size, num_points=plan.options.num_points)
        if isinstance(points, Unparseable):
            return points
        return [_rounded(point) for point in image.points_from_canvas(points)]
    if task is Task.REPORT:
        return report.parse_report(text)
    raise ValueError(f"no parser for task {task}")


def _round(value: float, decimals: int) -> float:
    return round(float(value), decimals) + 0.0  # + 0.0: never "-0.0"


def _rounded(values: Iterable[float]) -> list[float]:
    return [_round(v, COORDINATE_DECIMALS) for v in values]


# ------------------------------------------------------------------------------------------------------------
# Measurements


def measure(document: Mapping[str, Any]) -> dict[str, Any]:
    """CTR and PCR from the document's polygons (original pixels), each with the reason when undefined.

    PCR is measured against the lung field on the pneumothorax's side: the side of its location answer when
    that names one, else the lung whose centre is nearer the pneumothorax's (PA view: the patient's right lung
    is on the image's left). The phantoms' lung fields include the pneumothorax, as PCR expects.
    """
    polygons = {name: np.asarray(points, np.float64) for name, points in document["segmentation"].items()}
    out: dict[str, Any] = {
        "ctr": None,
        "ctr_reason": None,
        "ctr_severity": None,
        "pcr": None,
        "pcr_reason": None,
        "pcr_side": None,
    }
    missing = [name for name in ANATOMY if name not in polygons]
    if missing:
        out["ctr_reason"] = f"no polygon of the {' and '.join(missing)}"
    else:
        try:
            ctr = geometry.cardiothoracic_ratio(
                polygons["heart"], polygons["left lung"], polygons["right lung"]
            )
        except ValueError as error:
            ctr = geometry.CardiothoracicRatio(None, str(error))
        out["ctr"] = None if ctr.value is None else _round(ctr.value, 4)
        out["ctr_reason"] = ctr.reason
        out["ctr_severity"] = geometry.ctr_severity(out["ctr"])
    labels = {finding["label"] for finding in document["findings"]}
    if PNEUMOTHORAX not in labels:
        out["pcr_reason"] = "no pneumothorax among the findings"
    elif PNEUMOTHORAX not in polygons:
        out["pcr_reason"] = "no pneumothorax polygon"
    else:
        side = _pneumothorax_side(document, polygons)
        lung = f"{side} lung"
        if lung not in polygons:
            out["pcr_reason"] = f"no polygon of the {lung}"
        else:
            try:
                pcr = geometry.pneumothorax_ratio(polygons[PNEUMOTHORAX], polygons[lung])
            except ValueError as error:
                pcr = geometry.PneumothoraxRatio(None, str(error))
            out["pcr"] = None if pcr.value is None else _round(pcr.value, 4)
            out["pcr_reason"], out["pcr_side"] = pcr.reason, side
    return out


def _location_side(location: str | None) -> str | None:
    """The side a location answer starts with, "right" or "left" ("left apical"); else None (bilateral, a
    zone alone, no location)."""
    first = (location or "").split()[:1]
    return first[0] if first and first[0] in ("right", "left") else None


def _pneumothorax_side(document: Mapping[str, Any], polygons: Mapping[str, np.ndarray]) -> str:
    location = next((f["location"] for f in document["findings"] if f["label"] == PNEUMOTHORAX), None)
    side = _location_side(location)
    if side is not None:
        return side
    centre = polygons[PNEUMOTHORAX][:, 0].mean()
    distance = {
        side: abs(polygons[f"{side} lung"][:, 0].mean() - centre)
        for side in ("right", "left")
        if f"{side} lung" in polygons
    }
    if distance:
        return min(distance, key=distance.__getitem__)
    return "right" if centre < document["image"]["width"] / 2 else "left"  # PA: patient's right on the left


# ------------------------------------------------------------------------------------------------------------
# The report


def _check_evidence(document: dict[str, Any], options: WorkflowOptions) -> None:
    """Validate and normalise edited ``findings`` / ``measurements`` in place (ValueError naming the value)."""
    findings = document.get("findings")
    if not isinstance(findings, list) or not all(isinstance(f, dict) and "label" in f for f in findings):
        raise ValueError("findings must be a list of objects with a 'label'")
    for finding in findings:
        for key in ("severity", "location", "box", "confidence"):
            finding.setdefault(key, None)
        confidence, box = finding["confidence"], finding["box"]
        if confidence is not None and not _is_number(confidence):
            raise ValueError(
                f"findings: {finding['label']!r} has confidence {confidence!r}, expected a number or null"
            )
        if box is not None and not (isinstance(box, list) and len(box) == 4 and all(map(_is_number, box))):
            raise ValueError(
                f"findings: {finding['label']!r} has box {box!r}, expected [x0, y0, x1, y1] or null"
            )
    measurements = document.setdefault("measurements", {})
    if not isinstance(measurements, dict):
        raise ValueError(f"measurements must be a JSON object, got {type(measurements).__name__}")
    for name in ("ctr", "pcr"):
        value = measurements.get(name)
        if value is not None and not _is_number(value):
            raise ValueError(f"measurements.{name} must be a number or null, got {value!r}")
    _evidence(document, options)  # raises for unknown labels, locations, severities or bad numbers


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _evidence(document: Mapping[str, Any], options: WorkflowOptions, *, attributes: bool = True) -> str:
    """The evidence prompt of a document's findings (with their location and severity unless `attributes`
    is False) and measurements."""
    findings = tuple(
        report.Finding(f["label"], f.get("location"), f.get("severity"))
        if attributes
        else report.Finding(f["label"])
        for f in document["findings"]
    )
    measurements = document.get("measurements", {})
    evidence = report.Evidence(findings, measurements.get("ctr"), measurements.get("pcr"))
    labels = (*options.labels, *classification.DISEASES)
    return report.report_instruction(evidence, labels=labels)


def _report_prompt(
    document: Mapping[str, Any], options: WorkflowOptions, tokenizer: Tokenizer, limit: int
) -> tuple[str, str, str | None]:
    """(prompt, kind, note): the full evidence prompt if it fits `limit` tokens (incl. BOS/EOS, the length the
    model was trained with), else the findings without their attributes, else the plain instruction."""
    full = _evidence(document, options)
    length = len(tokenizer.encode_source(full))
    if length <= limit:
        return full, "evidence", None
    too_long = f"the evidence prompt has {length} tokens (limit {limit})"
    labels_only = _evidence(document, options, attributes=False)
    if len(tokenizer.encode_source(labels_only)) <= limit:
        return labels_only, "findings", f"{too_long}; locations and severities were left out of it"
    return report.report_instruction(), "plain", f"{too_long}; the plain instruction was asked"


def _ask_reports(asker: _Asker, plan: _Plan, documents: list[dict[str, Any]], indices: Iterable[int]) -> None:
    """Ask the report question of each document (image `indices[k]` of the asker) and file the answer."""
    limit = min(plan.options.max_prompt_len, asker.model.cfg.max_source_positions)
    questions, kinds, notes = [], [], []
    for document, index in zip(documents, indices, strict=True):
        prompt, kind, note = _report_prompt(document, plan.options, asker.tokenizer, limit)
        questions.append(_Question(index, Task.REPORT, "", prompt))
        kinds.append(kind)
        notes.append(note)
    answers = asker.ask(questions, plan.report)
    for document, question, answer, kind, note in zip(
        documents, questions, answers, kinds, notes, strict=True
    ):
        value = report.parse_report(answer.text)
        entry = {
            "task": Task.REPORT.value,
            "subject": "",
            "instruction": question.instruction,
            "answer": answer.text,
            "parsed": None if isinstance(value, Unparseable) else value,
            "confidence": _round(answer.confidence, CONFIDENCE_DECIMALS),
            "error": value.reason if isinstance(value, Unparseable) else None,
            "prompt": kind,
            "note": note,
        }
        document["questions"] = [q for q in document["questions"] if q["task"] != Task.REPORT.value] + [entry]
        document["report"] = entry["parsed"]


# ------------------------------------------------------------------------------------------------------------
# Consistency flags

# Labels -> the CheXpert observation the labeler reports them under.
_OBSERVATION = {
    "atelectasis": "Atelectasis",
    "cardiomegaly": "Cardiomegaly",
    "consolidation": "Consolidation",
    "edema": "Edema",
    "enlarged cardiomediastinum": "Enlarged Cardiomediastinum",
    "fracture": "Fracture",
    "lung lesion": "Lung Lesion",
    "mass": "Lung Lesion",
    "nodule": "Lung Lesion",
    "lung opacity": "Lung Opacity",
    "pleural effusion": "Pleural Effusion",
    "pleural other": "Pleural Other",
    "pleural thickening": "Pleural Other",
    "pneumonia": "Pneumonia",
    "pneumothorax": "Pneumothorax",
    "support devices": "Support Devices",
}


@functools.cache
def _default_labeler() -> Any | None:
    from imtcxr_jax.evaluation.labeler import CheXpertLabeler

    try:
        return CheXpertLabeler()
    except FileNotFoundError:
        return None


def _labeler(labeler: Any | None) -> Any | None:
    return labeler if labeler is not None else _default_labeler()


_NEGATIONS = ("no", "not", "without", "negative", "resolved", "free")


def _affirmative_mentions(text: str, label: str) -> Iterator[tuple[list[str], int]]:
    """(the sentence's words, the index of the name) for each mention of `label`'s last word ("effusion" or
    "effusions" for "pleural effusion") in each sentence of the report with no negation before its first
    mention ("No right pneumothorax." mentions none)."""
    term = label.lower().split()[-1]
    for sentence in re.split(r"[.;\n]", text.lower()):
        words = re.findall(r"[a-z]+", sentence)
        named = [k for k, word in enumerate(words) if word in (term, term + "s")]
        if named and not any(word in _NEGATIONS for word in words[: named[0]]):
            yield from ((words, k) for k in named)


def report_sides(text: str, label: str) -> set[str]:
    """The sides ("left", "right", "bilateral") the report gives `label`: at each affirmative mention
    (`_affirmative_mentions`) the side word nearest before the name within 3 words ("small right apical
    pneumothorax"; both sides there: "bilateral"), else the nearest after it ("pneumothorax on the right")."""
    sides: set[str] = set()
    for words, k in _affirmative_mentions(text, label):
        before = [w for w in reversed(words[max(0, k - 3) : k]) if w in classification.SIDES]
        after = [w for w in words[k + 1 : k + 4] if w in classification.SIDES]
        if {"left", "right"} <= set(before):  # "left and right pneumothorax"
            sides.add("bilateral")
        elif before or after:
            sides.add((before or after)[0])
    return sides


# A report's size and severity words and the grade of `classification.SEVERITIES` each stands for: radiologists
# grade air and fluid small / moderate / large and most else mild / moderate / severe.
SEVERITY_GRADES = {
    "minimal": "mild", "trace": "mild", "tiny": "mild", "small": "mild", "mild": "mild",
    "moderate": "moderate",
    "large": "severe", "severe": "severe", "marked": "severe", "extensive": "severe", "massive": "severe",
}  # fmt: skip


def report_severities(text: str, label: str) -> dict[str, str]:
    """The severity words the report gives `label`, each with its grade (`SEVERITY_GRADES`): at each
    affirmative mention (`_affirmative_mentions`) the nearest such word before the name within 4 words
    ("large left apical pneumothorax" -> {"large": "severe"})."""
    found: dict[str, str] = {}
    for words, k in _affirmative_mentions(text, label):
        graded = [w for w in reversed(words[max(0, k - 4) : k]) if w in SEVERITY_GRADES]
        if graded:
            found[graded[0]] = SEVERITY_GRADES[graded[0]]
    return found


def _finding_side(finding: Mapping[str, Any], measurements: Mapping[str, Any]) -> str | None:
    """The side of a finding, "left" or "right": its location's side word ("left apical"), else, for a
    pneumothorax, the side of its measured outline; None for a bilateral finding or when nothing says."""
    location = finding.get("location") or ""
    side = _location_side(location)
    if side is not None or location.startswith("bilateral"):
        return side
    return measurements.get("pcr_side") if finding["label"] == PNEUMOTHORAX else None


def document_flags(
    document: Mapping[str, Any], labeler: Any | None, *, check_report: bool = True
) -> list[dict[str, Any]]:
    """The consistency flags of a document (module docstring), computed from its content alone, so that an
    edited document is checked the same way. `labeler` None (with check_report) flags that the report
    could not be checked."""
    settings, findings = document["settings"], document["findings"]
    found = {f["label"] for f in findings}
    asked = {q["subject"] for q in document["questions"] if q["task"] == Task.PRESENCE.value}
    flags: list[dict[str, Any]] = []

    def flag(kind: str, message: str, **extra: Any) -> None:
        flags.append({"kind": kind, "message": message, **extra})

    for finding in findings:
        confidence = finding.get("confidence")
        if confidence is not None and confidence < settings["review_threshold"]:
            flag(
                "review",
                f"{finding['label']}: confidence {confidence:.2f} is below the review threshold "
                f"{settings['review_threshold']:.2f}",
                label=finding["label"],
            )
        box = finding.get("box")
        if box is not None and (box[2] <= box[0] or box[3] <= box[1]):
            flag(
                "empty_box",
                f"{finding['label']}: the box has no area (a point or a line, or it lies in the padding)",
                label=finding["label"],
            )
    for question in document["questions"]:
        if question["error"] is not None:
            what = " ".join(filter(None, (question["task"], question["subject"])))
            flag("unparseable_answer", f"{what}: {question['error']}", label=question["subject"])
        if question["task"] == Task.REPORT.value and question.get("note"):
            flag("evidence_prompt_shortened", question["note"])
    disease_list = next(
        (q["parsed"] for q in document["questions"] if q["task"] == Task.DISEASES.value), None
    )
    if disease_list is not None and asked and set(disease_list) != found:
        flag(
            "classification_disagreement",
            f"the disease list says {', '.join(disease_list) or 'no finding'}; "
            f"the presence answers say {', '.join(sorted(found)) or 'no finding'}",
        )

    ctr = document["measurements"].get("ctr")
    enlarged = None if ctr is None else ctr > geometry.CTR_CARDIOMEGALY_THRESHOLD
    cardiomegaly_known = "cardiomegaly" in asked or "cardiomegaly" in found
    if enlarged is not None and cardiomegaly_known and enlarged != ("cardiomegaly" in found):
        said = "found" if "cardiomegaly" in found else "not found"
        flag(
            "measurement_contradicts_finding",
            f"CTR {ctr:.2f} but cardiomegaly is {said}",
            label="cardiomegaly",
        )

    text = document.get("report")
    if not check_report or not text:
        return flags
    for finding in findings:
        side = _finding_side(finding, document["measurements"])
        said = report_sides(text, finding["label"])
        # The other side named anywhere: a report that says both (findings "right", impression "left") needs
        # review as much as one that says only the wrong side. "Bilateral" is left alone (not a side).
        if side is not None and "bilateral" not in said and ({"left", "right"} - {side}) & said:
            flag(
                "report_contradicts_evidence",
                f"the report puts the {finding['label']} on the {' and '.join(sorted(said))}; the evidence has "
                f"it on the {side}",
                label=finding["label"],
            )
        # Any other grade named, alone or beside the evidence's own ("large" in the findings, "small" in the
        # impression, for a moderate pneumothorax). Not for nodules and masses: reports give their size in cm,
        # and "large" there describes the lesion against others, not a grade.
        severity = finding.get("severity")
        graded = report_severities(text, finding["label"])
        if (
            finding["label"] not in ("nodule", "mass")
            and severity in classification.SEVERITIES
            and (set(graded.values()) - {severity})
        ):
            flag(
                "report_contradicts_evidence",
                f"the report calls the {finding['label']} {' and '.join(sorted(graded))}; the evidence grades it "
                f"{severity}",
                label=finding["label"],
            )
    if labeler is None:
        flag(
            "consistency_not_checked",
            "the report was not checked: the labeler's phrase lists are not available",
        )
        return flags
    read = labeler.label(text)
    known = found | asked
    denied = False
    for observation in dict.fromkeys(_OBSERVATION[label] for label in known if label in _OBSERVATION):
        labels = sorted(label for label in known if _OBSERVATION.get(label) == observation)
        present = [label for label in labels if label in found]
        value = read.get(observation)
        if present and value == 0:
            denied = True
            flag(
                "report_contradicts_evidence",
                f"the report denies {observation.lower()}; the evidence has {', '.join(present)}",
                label=present[0],
            )
        elif not present and value == 1:
            flag(
                "report_contradicts_evidence",
                f"the report asserts {observation.lower()}; the evidence has no {' or '.join(labels)}",
                label=labels[0],
            )
    if found and read.get("No Finding") == 1 and not denied:  # not twice for one denial
        flag(
            "report_contradicts_evidence",
            f"the report reads as a normal study; the evidence has {', '.join(sorted(found))}",
        )
    if (
        enlarged is not None
        and read.get("Cardiomegaly") in (0, 1)
        and enlarged != (read["Cardiomegaly"] == 1)
    ):
        said = "cardiomegaly" if read["Cardiomegaly"] == 1 else "no cardiomegaly"
        flag(
            "report_contradicts_measurement",
            f"the report says {said} while CTR is {ctr:.2f}",
            label="cardiomegaly",
        )
    return flags
