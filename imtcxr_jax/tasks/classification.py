"""Disease classification and its attributes: which diseases, is X present, where is X, how severe is X.

Instruction templates are the exact trained strings of spec §12.3 (see §15.2), leading spaces included:

* which diseases: ``" what disease does this image have?"`` -> ``" atelectasis, pleural effusion"``, or
  ``" no finding"``;
* is X present: ``" is {x} in this image?"`` -> ``" yes, there is {x}."`` or ``" no {x}."``;
* where is X: ``"where is {x}?"`` (no leading space) -> ``" {location}"``;
* how severe is X: ``"what is the level of {x}?"`` (no leading space) -> ``" {severity}"``.

The subject ``{x}`` is normalised with `normalize_label` (lower-case, as the original does). Vocabularies are
data, below; target formatters and parsers check against them (the question subject itself is open, because
datasets name diseases differently: the attribute rows of the original say ``effusion``).

The severity question was never trained by the original (spec §12.3 [AMBIGUOUS]); it is kept for models
fine-tuned here (the phantoms have severities).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from imtcxr_jax.tasks.common import (
    ModelOutput,
    Task,
    TaskSample,
    Unparseable,
    check_vocabulary,
    normalize_label,
    normalize_whitespace,
    output_text,
    parse_words,
    split_field,
    unique,
)

# ------------------------------------------------------------------------------------------------------------
# Vocabularies

# The 26 labels of the original report rows, in the original's spelling (spec §12.3, "Lists"). The capitalised
# spelling matters only for the negative yes/no quirk (``" no Calcification of the Aorta."``).
DISEASE_NAMES = (
    "Atelectasis",
    "Calcification of the Aorta",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Enlarged Cardiomediastinum",
    "Fibrosis",
    "Fracture",
    "Hernia",
    "Infiltration",
    "Lung Lesion",
    "Lung Opacity",
    "Mass",
    "No Finding",
    "Nodule",
    "Pleural Effusion",
    "Pleural Other",
    "Pleural Thickening",
    "Pneumomediastinum",
    "Pneumonia",
    "Pneumoperitoneum",
    "Pneumothorax",
    "Subcutaneous Emphysema",
    "Support Devices",
    "Tortuous Aorta",
)
# As they appear in instructions and targets (lower-case). Every phantom finding is one of these.
DISEASES = tuple(name.lower() for name in DISEASE_NAMES)
NO_FINDING = "no finding"
# The 11 lesion labels of the original localisation rows (spec §12.3); a subset of DISEASES.
LOCALIZATION_DISEASES = (
    "infiltration",
    "consolidation",
    "pleural effusion",
    "cardiomegaly",
    "edema",
    "pneumonia",
    "atelectasis",
    "pneumothorax",
    "lung opacity",
    "nodule",
    "mass",
)

# The location adjectives the original keeps from an attribute string (spec §12.3 "Attribute parsing"); a
# trained model answers ``where is X?`` with exactly one of these.
TRAINED_LOCATIONS = ("right", "left", "mid", "base", "lower lobe", "bibasilar", "basilar")
# Side and zone words of the phantom findings (DESIGN.md), alone or as "{side} {zone}" (e.g. "right lower",
# "bilateral perihilar"); left and right are the patient's sides (geometry.py). A location answer is one entry
# of the vocabulary, matched exactly (after lower-casing and whitespace normalisation).
SIDES = ("right", "left", "bilateral")
ZONES = ("upper", "middle", "lower", "apical", "perihilar")
_SIDE_ZONES = tuple(f"{side} {zone}" for side in SIDES for zone in ZONES)
LOCATIONS = tuple(
    dict.fromkeys(TRAINED_LOCATIONS + SIDES + ZONES + _SIDE_ZONES)
)  # order kept, repeats dropped

# Severity of a present finding. "normal" is an answer only where a measurement grades the finding: the
# cardiothoracic ratio grades cardiomegaly (geometry.ctr_severity).
SEVERITIES = ("mild", "moderate", "severe")
NORMAL = "normal"
SEVERITY_LEVELS = (NORMAL, *SEVERITIES)

# ------------------------------------------------------------------------------------------------------------
# Templates (spec §12.3; a leading space where the original put one)

DISEASES_INSTRUCTION = " what disease does this image have?"
PRESENCE_TEMPLATE = " is {} in this image?"
PRESENT_TARGET = " yes, there is {}."
ABSENT_TARGET = " no {}."
LOCATION_TEMPLATE = "where is {}?"
SEVERITY_TEMPLATE = "what is the level of {}?"


# ------------------------------------------------------------------------------------------------------------
# Which diseases


def diseases_instruction() -> str:
    """``" what disease does this image have?"``."""
    return DISEASES_INSTRUCTION


def diseases_target(labels: Iterable[str], vocabulary: Collection[str] = DISEASES) -> str:
    """``" " + labels joined by ", "`` in the given order, lower-case; no labels (or only "no finding") gives
    ``" no finding"``.

    Raises ValueError for an unknown or repeated label, or "no finding" together with other labels.
    """
    labels = list(labels)
    names = [check_vocabulary(label, vocabulary, "disease label") for label in labels]
    if not unique(names):
        raise ValueError(f"repeated disease label in {labels!r}")
    findings = [name for name in names if name != NO_FINDING]
    if len(findings) != len(names) and findings:
        raise ValueError(f"{NO_FINDING!r} together with findings {findings!r}")
    return " " + (", ".join(findings) if findings else NO_FINDING)


def parse_diseases(
    output: ModelOutput, vocabulary: Collection[str] = DISEASES
) -> tuple[str, ...] | Unparseable:
    """``"atelectasis, pleural effusion"`` -> ``("atelectasis", "pleural effusion")``; ``"no finding"`` -> ``()``.

    Labels are split on commas and matched case-insensitively against ``vocabulary``; the order is kept. Unknown
    or repeated labels, empty items, "no finding" next to findings, and location bins give `Unparseable`.
    """
    raw = output_text(output)
    text = parse_words(raw, "a list of diseases")
    if isinstance(text, Unparseable):
        return text
    items = [normalize_whitespace(item) for item in text.split(",")]
    if not all(items):
        return Unparseable(raw, "an empty label between commas")
    labels = []
    for item in items:
        try:
            labels.append(check_vocabulary(item, vocabulary, "disease label"))
        except ValueError as error:
            return Unparseable(raw, str(error))
    if not unique(labels):
        return Unparseable(raw, "a disease label is repeated")
    if labels == [NO_FINDING]:
        return ()
    if NO_FINDING in labels:
        return Unparseable(raw, f"{NO_FINDING!r} next to findings")
    return tuple(labels)


def diseases_sample(labels: Iterable[str], vocabulary: Collection[str] = DISEASES) -> TaskSample:
    return TaskSample(Task.DISEASES, diseases_instruction(), diseases_target(labels, vocabulary))


def labels_from_field(field: str) -> list[str]:
    """The original's label column, e.g. ``"Atelectasis&&Pleural Effusion"`` -> ``["atelectasis", ...]``."""
    return [normalize_label(item) for item in split_field(field, "&&")]


# ------------------------------------------------------------------------------------------------------------
# Is X present?


def presence_instruction(label: str) -> str:
    """``" is {label} in this image?"`` (label lower-cased)."""
    return PRESENCE_TEMPLATE.format(normalize_label(label))


def presence_target(
    label: str, present: bool, *, keep_case: bool = False, vocabulary: Collection[str] = DISEASES
) -> str:
    """``" yes, there is {label}."`` or ``" no {label}."``, label lower-case.

    ``keep_case=True`` reproduces the original's quirk for the report rows (spec §12.3, §16 item 23): a negative
    keeps the capitalisation of its name, e.g. ``" no Calcification of the Aorta."``.
    Raises ValueError for a label not in ``vocabulary``.
    """
    name = check_vocabulary(label, vocabulary, "disease label")
    if present:
        return PRESENT_TARGET.format(name)
    return ABSENT_TARGET.format(normalize_whitespace(label) if keep_case else name)


def parse_presence(output: ModelOutput) -> bool | Unparseable:
    """True if the answer's first word is ``yes``, False if it is ``no`` (spec §15.2); otherwise `Unparseable`.

    The rest of the answer (``there is X.``) is not checked: the original's negatives may name another
    disease than the one asked about (spec §12.3).
    """
    raw = output_text(output)
    text = parse_words(raw, "a yes/no answer")
    if isinstance(text, Unparseable):
        return text
    first = text.split()[0].rstrip(",.!").lower()
    if first in ("yes", "no"):
        return first == "yes"
    return Unparseable(raw, f"the answer starts with {first!r}, not 'yes' or 'no'")


def presence_sample(
    label: str, present: bool, *, keep_case: bool = False, vocabulary: Collection[str] = DISEASES
) -> TaskSample:
    target = presence_target(label, present, keep_case=keep_case, vocabulary=vocabulary)
    return TaskSample(Task.PRESENCE, presence_instruction(label), target)


# ------------------------------------------------------------------------------------------------------------
# Where is X?


def location_instruction(label: str) -> str:
    """``"where is {label}?"`` with no leading space (spec §16 item 21)."""
    return LOCATION_TEMPLATE.format(normalize_label(label))


def location_target(location: str, vocabulary: Collection[str] = LOCATIONS) -> str:
    """``" {location}"``; raises ValueError for a location not in ``vocabulary``."""
    return " " + check_vocabulary(location, vocabulary, "location")


def parse_location(output: ModelOutput, vocabulary: Collection[str] = LOCATIONS) -> str | Unparseable:
    """The answer as one entry of ``vocabulary`` (case-insensitive), else `Unparseable`."""
    return _parse_one_of(output, vocabulary, "location")


def location_sample(label: str, location: str, vocabulary: Collection[str] = LOCATIONS) -> TaskSample:
    return TaskSample(Task.LOCATION, location_instruction(label), location_target(location, vocabulary))


def location_from_adjectives(adjectives: Iterable[str]) -> str | None:
    """The original's location answer from attribute adjectives (spec §12.3 "Attribute parsing").

    Keeps the adjectives in `TRAINED_LOCATIONS`, sorts them in reverse lexicographic order and takes the first
    (``["right", "small", "base"]`` -> ``"right"``); None if there is none (the original skips such rows).
    """
    found = sorted((a.strip() for a in adjectives if a.strip() in TRAINED_LOCATIONS), reverse=True)
    return found[0] if found else None


def parse_attribute_field(field: str) -> list[tuple[str, tuple[str, ...]]]:
    """The original's attribute column -> ``[(disease, adjectives), ...]``.

    ``"atelectasis,right&small&base,effusion,right&small"`` ->
    ``[("atelectasis", ("right", "small", "base")), ("effusion", ("right", "small"))]``. The field alternates
    disease names and ``&``-joined adjectives; an odd number of items raises ValueError naming the field.
    """
    items = [item.strip() for item in field.split(",")]
    if len(items) % 2 or not all(items):
        raise ValueError(f"attribute field {field!r} must alternate disease names and '&'-joined adjectives")
    return [(items[i], tuple(split_field(items[i + 1], "&"))) for i in range(0, len(items), 2)]


# ------------------------------------------------------------------------------------------------------------
# How severe is X?


def severity_instruction(label: str) -> str:
    """``"what is the level of {label}?"`` with no leading space (never trained by the original)."""
    return SEVERITY_TEMPLATE.format(normalize_label(label))


def severity_target(severity: str, vocabulary: Collection[str] = SEVERITY_LEVELS) -> str:
    """``" {severity}"``; raises ValueError for a severity not in ``vocabulary``."""
    return " " + check_vocabulary(severity, vocabulary, "severity")


def parse_severity(output: ModelOutput, vocabulary: Collection[str] = SEVERITY_LEVELS) -> str | Unparseable:
    """The answer as one entry of ``vocabulary`` (case-insensitive), else `Unparseable`."""
    return _parse_one_of(output, vocabulary, "severity")


def severity_sample(label: str, severity: str, vocabulary: Collection[str] = SEVERITY_LEVELS) -> TaskSample:
    return TaskSample(Task.SEVERITY, severity_instruction(label), severity_target(severity, vocabulary))


def _parse_one_of(output: ModelOutput, vocabulary: Collection[str], what: str) -> str | Unparseable:
    raw = output_text(output)
    text = parse_words(raw, f"a {what}")
    if isinstance(text, Unparseable):
        return text
    try:
        return check_vocabulary(text, vocabulary, what)
    except ValueError as error:
        return Unparseable(raw, str(error))
