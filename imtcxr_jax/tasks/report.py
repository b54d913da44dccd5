"""Report generation: the plain instruction, the evidence-prompted instruction, targets and parsing.

Plain (trained by the original, spec §12.3): instruction ``" describe the image"`` (leading space; not the
README's "Describe the image."), target ``" " + the first 128 whitespace-separated words`` of the report with
whitespace normalised. The original does not lower-case report targets (its data is lower-case already); neither
do we. The demo's display post-processing (dropping "support devices", capitalising sentences, spec §15.1) is a
presentation step and is not applied here.

Evidence-prompted (our design; the original has no such chaining, spec §15.3): the intermediate answers of the
workflow are written in front of the plain instruction, lower-case and in a fixed order, so that the prompt is
deterministic and `parse_report_prompt` recovers the evidence from it::

     based on the findings: cardiomegaly (moderate); pleural effusion (left, mild). ctr 0.57. pcr 0.12. describe the image

* It starts with a space like the plain instruction; findings are joined by ``"; "`` in the given order and end
  with ``"."``; no findings is written ``no finding``.
* A finding is its label, then optionally ``" (" + location + ", " + severity + ")"`` with either part left
  out when unknown. Location and severity are told apart by their vocabularies, which are disjoint.
* ``ctr`` and ``pcr`` follow when known, each rounded to 2 decimals (the parsed value is the rounded one).
* The prompt ends with the plain instruction, so a model fine-tuned on it still sees the trained question.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from collections.abc import Collection, Sequence

from imtcxr_jax.tasks.classification import DISEASES, LOCATIONS, NO_FINDING, SEVERITIES
from imtcxr_jax.tasks.common import (
    ModelOutput,
    Task,
    TaskSample,
    Unparseable,
    check_vocabulary,
    normalize_whitespace,
    output_text,
    parse_words,
    unique,
    vocabulary_set,
)

REPORT_INSTRUCTION = " describe the image"
MAX_REPORT_WORDS = 128  # max_tgt_length: reports are truncated by words, not tokens (spec §9.2, §16 item 24)
EVIDENCE_PREFIX = " based on the findings: "
MEASUREMENT_DECIMALS = 2


@dataclasses.dataclass(frozen=True)
class Finding:
    """One finding of the evidence chain; text fields are whitespace-normalised and lower-cased on creation."""

    label: str
    location: str | None = None
    severity: str | None = None

    def __post_init__(self) -> None:
        for field in ("label", "location", "severity"):
            value = getattr(self, field)
            if isinstance(value, str):
                object.__setattr__(self, field, normalize_whitespace(value).lower())


@dataclasses.dataclass(frozen=True)
class Evidence:
    """What a report prompt states: the findings (empty = no finding) and the measurements, if known."""

    findings: tuple[Finding | str, ...] = ()
    ctr: float | None = None  # cardiothoracic ratio
    pcr: float | None = None  # pneumothorax ratio

    def __post_init__(self) -> None:
        # A bare label stands for a finding without attributes.
        findings = tuple(Finding(f) if isinstance(f, str) else f for f in self.findings)
        object.__setattr__(self, "findings", findings)


# ------------------------------------------------------------------------------------------------------------
# Instructions


def report_instruction(
    evidence: Evidence | None = None,
    *,
    labels: Collection[str] = DISEASES,
    locations: Collection[str] = LOCATIONS,
    severities: Collection[str] = SEVERITIES,
) -> str:
    """``" describe the image"``, or with ``evidence`` the evidence prompt described in the module docstring.

    Raises ValueError for an unknown or repeated label, an unknown location or severity, "no finding" as a
    finding, or a measurement that is negative or not finite — naming the value.
    """
    if evidence is None:
        return REPORT_INSTRUCTION
    parts = [_format_findings(evidence.findings, labels, locations, severities) + "."]
    for name in ("ctr", "pcr"):
        value = getattr(evidence, name)
        if value is not None:
            parts.append(f" {name} {_format_measurement(name, value)}.")
    return EVIDENCE_PREFIX + "".join(parts) + REPORT_INSTRUCTION


def _format_findings(
    findings: Sequence[Finding],
    labels: Collection[str],
    locations: Collection[str],
    severities: Collection[str],
) -> str:
    if not findings:
        return NO_FINDING
    texts, names = [], []
    for finding in findings:
        name = check_vocabulary(finding.label, labels, "finding label")
        if name == NO_FINDING:
            raise ValueError(f"{NO_FINDING!r} is not a finding; give no findings instead")
        attributes = []
        if finding.location is not None:
            attributes.append(check_vocabulary(finding.location, locations, "location"))
        if finding.severity is not None:
            attributes.append(check_vocabulary(finding.severity, severities, "severity"))
        texts.append(f"{name} ({', '.join(attributes)})" if attributes else name)
        names.append(name)
    if not unique(names):
        raise ValueError(f"a finding label is repeated in {names!r}")
    return "; ".join(texts)


def _format_measurement(name: str, value: float) -> str:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return f"{float(value) + 0.0:.{MEASUREMENT_DECIMALS}f}"  # + 0.0 turns -0.0 into 0.0 so it never prints "-0.00"


# ------------------------------------------------------------------------------------------------------------
# Recovering the evidence from a prompt

_PROMPT = re.compile(
    r"based on the findings: (?P<findings>[^.]+)\."
    r"(?: ctr (?P<ctr>[0-9]+\.[0-9]+)\.)?"
    r"(?: pcr (?P<pcr>[0-9]+\.[0-9]+)\.)?"
    r" describe the image"
)
_FINDING = re.compile(r"(?P<label>[^()]+?)(?: \((?P<attributes>[^()]+)\))?")


def parse_report_prompt(
    text: str,
    *,
    labels: Collection[str] = DISEASES,
    locations: Collection[str] = LOCATIONS,
    severities: Collection[str] = SEVERITIES,
) -> Evidence | Unparseable:
    """The evidence stated by a prompt of `report_instruction`; `Unparseable` for anything else.

    Whitespace is normalised first, so a prompt decoded without its leading space parses too. The plain
    ``" describe the image"`` carries no evidence and is `Unparseable` (it is not a claim of "no finding").
    """
    raw = output_text(text)
    match = _PROMPT.fullmatch(normalize_whitespace(raw))
    if match is None:
        return Unparseable(raw, "not an evidence prompt ' based on the findings: ... describe the image'")
    findings_text = match.group("findings")
    findings: list[Finding] = []
    if findings_text != NO_FINDING:
        for item in findings_text.split("; "):
            finding = _parse_finding(item, labels, locations, severities)
            if isinstance(finding, str):
                return Unparseable(raw, finding)
            findings.append(finding)
        if not unique(f.label for f in findings):
            return Unparseable(raw, "a finding label is repeated")
    ctr, pcr = match.group("ctr"), match.group("pcr")
    return Evidence(tuple(findings), None if ctr is None else float(ctr), None if pcr is None else float(pcr))


def _parse_finding(
    item: str, labels: Collection[str], locations: Collection[str], severities: Collection[str]
) -> Finding | str:
    """One ``label (location, severity)`` item -> Finding, or the reason it does not parse."""
    match = _FINDING.fullmatch(item)
    if match is None:
        return f"finding {item!r} is not 'label' or 'label (location, severity)'"
    try:
        label = check_vocabulary(match.group("label"), labels, "finding label")
    except ValueError as error:
        return str(error)
    if label == NO_FINDING:
        return f"{NO_FINDING!r} next to findings"
    location = severity = None
    attributes = match.group("attributes")
    for attribute in attributes.split(", ") if attributes else ():
        # The vocabularies are disjoint; at most one location, then at most one severity, in that order.
        if attribute in vocabulary_set(severities) and severity is None:
            severity = attribute
        elif attribute in vocabulary_set(locations) and location is None and severity is None:
            location = attribute
        else:
            return f"attribute {attribute!r} of {item!r} is not a location followed by a severity"
    return Finding(label, location, severity)


# ------------------------------------------------------------------------------------------------------------
# Targets and outputs


def report_target(report: str, max_words: int = MAX_REPORT_WORDS) -> str:
    """``" " + the first max_words words``, whitespace-normalised (spec §9.2); an empty report raises."""
    words = report.split()
    if not words:
        raise ValueError(f"report is empty: {report!r}")
    return " " + " ".join(words[:max_words])


def parse_report(output: ModelOutput) -> str | Unparseable:
    """The report text, stripped and whitespace-normalised; `Unparseable` if empty or holding location bins."""
    return parse_words(output, "a report")


def report_sample(
    report: str, evidence: Evidence | None = None, **vocabularies: Collection[str]
) -> TaskSample:
    """A report example; with ``evidence`` the instruction is the evidence prompt (vocabularies as there)."""
    return TaskSample(Task.REPORT, report_instruction(evidence, **vocabularies), report_target(report))
