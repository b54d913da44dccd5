"""Reports: the plain instruction, the evidence prompt and its parser, targets and outputs."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imtcxr_jax.tasks import Task, Unparseable
from imtcxr_jax.tasks import classification as cls
from imtcxr_jax.tasks import report as rep
from imtcxr_jax.tasks.report import Evidence, Finding

FINDINGS = [d for d in cls.DISEASES if d != cls.NO_FINDING]


def test_plain_instruction_and_target():
    sample = rep.report_sample("The heart  is\nenlarged.  No effusion.")
    assert sample == rep.report_sample("The heart is enlarged. No effusion.")
    assert sample.task is Task.REPORT
    assert sample.instruction == " describe the image"
    assert sample.target == " The heart is enlarged. No effusion."  # not lower-cased, as the original


def test_target_keeps_the_first_128_words():
    words = [f"w{i}" for i in range(300)]
    assert rep.report_target(" ".join(words)) == " " + " ".join(words[:128])
    assert rep.report_target("a b c", max_words=2) == " a b"
    with pytest.raises(ValueError, match="report is empty: '  '"):
        rep.report_target("  ")


def test_parse_report():
    assert rep.parse_report(" the lungs are clear.\n no effusion. ") == "the lungs are clear. no effusion."
    assert isinstance(rep.parse_report(""), Unparseable)
    result = rep.parse_report("heart <bin_3> size")
    assert result == Unparseable("heart <bin_3> size", "location bins where a report is expected")


def test_evidence_prompt_format():
    evidence = Evidence(
        (Finding("Cardiomegaly", severity="moderate"), Finding("pleural effusion", "left", "mild"), "nodule"),
        ctr=0.5712,
        pcr=0.1,
    )
    prompt = rep.report_instruction(evidence)
    assert prompt == (
        " based on the findings: cardiomegaly (moderate); pleural effusion (left, mild); nodule."
        " ctr 0.57. pcr 0.10. describe the image"
    )
    assert prompt.endswith(rep.REPORT_INSTRUCTION)
    assert rep.report_instruction(Evidence()) == " based on the findings: no finding. describe the image"
    assert (
        rep.report_instruction(Evidence(ctr=-0.0))
        == " based on the findings: no finding. ctr 0.00. describe the image"
    )
    assert rep.report_sample("normal.", Evidence(ctr=0.45)).instruction.startswith(" based on")


def test_parse_report_prompt():
    prompt = " based on the findings: cardiomegaly (moderate); pleural effusion (left, mild). ctr 0.57. describe the image"
    assert rep.parse_report_prompt(prompt) == Evidence(
        (Finding("cardiomegaly", None, "moderate"), Finding("pleural effusion", "left", "mild")), ctr=0.57
    )
    assert rep.parse_report_prompt(prompt.strip()) == rep.parse_report_prompt(
        prompt
    )  # decoded without the space


@st.composite
def evidences(draw):
    labels = draw(st.lists(st.sampled_from(FINDINGS), unique=True, max_size=6))
    findings = [
        Finding(
            label,
            draw(st.none() | st.sampled_from(cls.LOCATIONS)),
            draw(st.none() | st.sampled_from(cls.SEVERITIES)),
        )
        for label in labels
    ]
    measurement = st.none() | st.integers(0, 150).map(lambda v: v / 100)
    return Evidence(tuple(findings), draw(measurement), draw(measurement))


@given(evidences())
def test_evidence_round_trip(evidence):
    assert rep.parse_report_prompt(rep.report_instruction(evidence)) == evidence


@given(st.floats(0, 5), st.floats(0, 1))
def test_measurements_come_back_rounded_to_two_decimals(ctr, pcr):
    parsed = rep.parse_report_prompt(rep.report_instruction(Evidence(ctr=ctr, pcr=pcr)))
    assert (parsed.ctr, parsed.pcr) == (float(f"{ctr:.2f}"), float(f"{pcr:.2f}"))


@pytest.mark.parametrize(
    ("prompt", "reason"),
    [
        (" describe the image", "not an evidence prompt"),
        (" based on the findings: flu. describe the image", "unknown finding label 'flu'"),
        (" based on the findings: edema; edema. describe the image", "repeated"),
        (" based on the findings: edema (mild, left). describe the image", "'left' of 'edema (mild, left)'"),
        (" based on the findings: edema (left, right). describe the image", "'right'"),
        (" based on the findings: edema (). describe the image", "is not 'label'"),
        (" based on the findings: edema; no finding. describe the image", "'no finding' next to findings"),
        (" based on the findings: edema. ctr 0.5. ctr 0.6. describe the image", "not an evidence prompt"),
        (" based on the findings: edema. pcr 0.1. ctr 0.5. describe the image", "not an evidence prompt"),
    ],
)
def test_parse_report_prompt_unparseable(prompt, reason):
    result = rep.parse_report_prompt(prompt)
    assert isinstance(result, Unparseable) and result.raw == prompt
    assert reason in result.reason


def test_evidence_errors_name_the_value():
    with pytest.raises(ValueError, match="unknown finding label 'flu'"):
        rep.report_instruction(Evidence(("flu",)))
    with pytest.raises(ValueError, match="unknown location 'north'"):
        rep.report_instruction(Evidence((Finding("edema", location="north"),)))
    with pytest.raises(ValueError, match="unknown severity 'normal'"):
        rep.report_instruction(Evidence((Finding("cardiomegaly", severity="normal"),)))
    with pytest.raises(ValueError, match="repeated"):
        rep.report_instruction(Evidence(("edema", "Edema")))
    with pytest.raises(ValueError, match="'no finding' is not a finding"):
        rep.report_instruction(Evidence(("no finding",)))
    for bad in (-0.1, float("nan"), float("inf"), True, "0.5"):
        with pytest.raises(ValueError, match=f"ctr must be a finite number >= 0, got {bad!r}"):
            rep.report_instruction(Evidence(ctr=bad))
