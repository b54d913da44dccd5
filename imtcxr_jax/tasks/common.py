"""What the four instruction tasks share: task names, samples, the unparseable value, text normalisation.

Every task module formats *targets* (raising ValueError on bad inputs, naming the value) and *parses* the
decoded model output back into typed values. Parsers are total: any output (empty text, words where bins are
expected, bins where words are expected, unknown labels, wrong counts) gives an `Unparseable` carrying the raw
text and a reason, never an exception, so evaluation never crashes on a bad answer.

Instructions and targets are text. Location answers are written as ``<bin_k>`` words (imtcxr_jax.text.coords),
which the tokenizer maps to the last 1000 vocabulary ids without BPE. Leading spaces are part of the text
because the BPE is leading-space sensitive (spec §9.1, §16 item 21).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import re
from collections.abc import Collection, Iterable, Sequence

import numpy as np

from imtcxr_jax.text.coords import NUM_BINS, text_to_bins

# What a parser accepts: decoded text (bins as `<bin_k>` words), or bin indices as a 1-D int sequence/array.
ModelOutput = str | Sequence[int] | np.ndarray


class Task(enum.StrEnum):
    """The instruction tasks. `family` groups them as the training mixture does (DESIGN.md data flow)."""

    REPORT = "report"  # describe the image
    DISEASES = "diseases"  # what disease does this image have?
    PRESENCE = "presence"  # is X in this image?
    LOCATION = "location"  # where is X?
    SEVERITY = "severity"  # what is the level of X?
    BOX = "box"  # give the accurate bbox of X.
    SEGMENTATION = "segmentation"  # please segment the X from the given image.

    @property
    def family(self) -> str:
        """One of ``classification``, ``localization``, ``segmentation``, ``report``."""
        return _FAMILY[self]


_FAMILY = {
    Task.REPORT: "report",
    Task.DISEASES: "classification",
    Task.PRESENCE: "classification",
    Task.LOCATION: "classification",
    Task.SEVERITY: "classification",
    Task.BOX: "localization",
    Task.SEGMENTATION: "segmentation",
}

# The task families in the order of a batch's `task` index (the input pipeline and the train step).
TASK_FAMILIES = ("classification", "localization", "segmentation", "report")


def check_families(names: Iterable[str], key: str) -> tuple[str, ...]:
    """``names`` as a tuple; ValueError naming the config ``key`` when one is not a task family."""
    names = tuple(names)
    if unknown := sorted(set(names) - set(TASK_FAMILIES)):
        raise ValueError(
            f"{key}: unknown task families {unknown}, expected a comma-separated subset of "
            f"{', '.join(TASK_FAMILIES)}"
        )
    return names


def parse_families(text: str, key: str) -> tuple[str, ...]:
    """The task families of a comma-separated config string ("" names none), checked (`check_families`)."""
    if not isinstance(text, str):
        raise ValueError(f"{key}: expected a comma-separated string of task families, got {text!r}")
    return check_families((name.strip() for name in text.split(",") if name.strip()), key)


@dataclasses.dataclass(frozen=True)
class TaskSample:
    """One training or inference example as text: the instruction (source) and the expected answer (target).

    Both strings are exactly what goes to the tokenizer, leading spaces included (spec §12.3).
    """

    task: Task
    instruction: str
    target: str


@dataclasses.dataclass(frozen=True)
class Unparseable:
    """A model output that does not have the shape the task expects. ``raw`` is the output as text."""

    raw: str
    reason: str


# ------------------------------------------------------------------------------------------------------------
# Normalisation (spec §9.2)

_LEADING_PUNCTUATION = ",.!?*#:;~"
_WHITESPACE_RUN = re.compile(r"\s{2,}")


def pre_question(text: str, max_words: int | None = None) -> str:
    """The original's ``pre_question`` (spec §9.2).

    Lower-case; strip leading ``,.!?*#:;~``; ``-`` and ``/`` become spaces; runs of two or more whitespace
    characters become one space (a single tab or newline stays, as in the original); strip a trailing newline
    and surrounding spaces; keep the first ``max_words`` space-separated words.
    """
    text = text.lower().lstrip(_LEADING_PUNCTUATION).replace("-", " ").replace("/", " ")
    text = _WHITESPACE_RUN.sub(" ", text).rstrip("\n").strip(" ")
    words = text.split(" ")
    if max_words is not None and len(words) > max_words:
        text = " ".join(words[:max_words])
    return text


def pre_caption(text: str, max_words: int | None = None) -> str:
    """The original's ``pre_caption``: `pre_question` plus ``<person>`` -> ``person`` (spec §9.2)."""
    return pre_question(text.replace("<person>", "person"), max_words)


def normalize_whitespace(text: str) -> str:
    """Collapse every whitespace run to one space and strip the ends."""
    return " ".join(text.split())


def normalize_label(label: str, what: str = "label") -> str:
    """A label (disease, structure, location, ...) as it appears in instructions and targets.

    `pre_caption` (lower-case; ``-`` and ``/`` to spaces; leading ``,.!?*#:;~`` dropped) followed by full
    whitespace normalisation. For plain labels such as ``Pleural Effusion`` this is just lower-casing, which is
    all the original applies to the location and severity questions; the box, segmentation and yes/no templates
    apply pre_caption/pre_question (spec §12.3). An empty label raises ValueError.
    """
    if not isinstance(label, str):
        raise ValueError(f"{what} must be a string, got {label!r}")
    normalized = normalize_whitespace(pre_caption(label))
    if not normalized:
        raise ValueError(f"{what} is empty after normalisation: {label!r}")
    return normalized


def check_vocabulary(value: str, vocabulary: Collection[str], what: str) -> str:
    """Normalise ``value`` and check it is in ``vocabulary`` (entries compared normalised).

    Raises ValueError naming the value and listing the vocabulary. Returns the normalised value.
    """
    normalized = normalize_label(value, what)
    if normalized not in vocabulary_set(vocabulary):
        raise ValueError(f"unknown {what} {value!r}; expected one of: {', '.join(vocabulary)}")
    return normalized


def vocabulary_set(vocabulary: Collection[str]) -> frozenset[str]:
    """The normalised entries of a vocabulary, as a set (cached: vocabularies are small constant tuples)."""
    return _vocabulary_set(tuple(vocabulary))


@functools.cache
def _vocabulary_set(vocabulary: tuple[str, ...]) -> frozenset[str]:
    return frozenset(normalize_label(entry) for entry in vocabulary)


# ------------------------------------------------------------------------------------------------------------
# Helpers for total parsers


def output_text(output: ModelOutput) -> str:
    """The model output as text: a string as it is; a 1-D sequence or array of integers (bin indices, e.g. a
    slice of decoded ids minus the bin offset) as ``<bin_k>`` words.

    Never raises: anything else is rendered with ``str`` so that it can be carried by `Unparseable`.
    """
    if isinstance(output, str):
        return output
    try:
        array = np.asarray(output)
    except Exception:  # a ragged or exotic object: keep the parser total
        return str(output)
    is_integer = np.issubdtype(array.dtype, np.integer) and array.dtype != np.bool_
    if array.ndim == 1 and (is_integer or array.size == 0):
        return " ".join(f"<bin_{k}>" for k in array.tolist())
    return str(output)


def has_bin_words(text: str) -> bool:
    """Whether ``text`` holds anything that looks like a location token (``<bin_...``), glued or not."""
    return "<bin_" in text


def parse_bins(output: ModelOutput, what: str, num_bins: int = NUM_BINS) -> list[int] | Unparseable:
    """Model output -> bin indices, or `Unparseable` (empty, a word that is not ``<bin_k>``, k out of range)."""
    raw = output_text(output)
    if not raw.strip():
        return Unparseable(raw, f"empty output; expected the location bins of {what}")
    try:
        return text_to_bins(raw, num_bins)
    except ValueError as error:
        return Unparseable(raw, f"expected only location bins for {what}: {error}")


def parse_words(output: ModelOutput, what: str) -> str | Unparseable:
    """Model output -> whitespace-normalised text, or `Unparseable` if empty or holding location bins."""
    raw = output_text(output)
    text = normalize_whitespace(raw)
    if not text:
        return Unparseable(raw, f"empty output; expected {what}")
    if has_bin_words(text):
        return Unparseable(raw, f"location bins where {what} is expected")
    return text


def split_field(field: str, separator: str = "&&") -> list[str]:
    """Split a TSV field of the original data (e.g. ``Atelectasis&&Pleural Effusion``) into stripped items."""
    return [item.strip() for item in field.split(separator) if item.strip()]


def unique(items: Iterable[str]) -> bool:
    """Whether no item repeats."""
    seen: set[str] = set()
    for item in items:
        if item in seen:
            return False
        seen.add(item)
    return True
