"""What all tasks share: templates against the spec's own text, normalisation, and total parsers."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from imtcxr_jax.tasks import Task, TaskSample, Unparseable, classification, localization, report, segmentation
from imtcxr_jax.tasks.common import normalize_label, output_text, pre_caption, pre_question

SPEC = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "ofa-imtcxr-spec.md"


def _spec_form(instruction: str) -> str:
    """How the spec writes an instruction: in backticks, with ␣ for a leading space."""
    return "`" + ("␣" + instruction[1:] if instruction.startswith(" ") else instruction) + "`"


def test_instruction_templates_are_the_ones_the_spec_prints():
    """§15.2 lists every trained instruction with {x} for the subject and ␣ for a leading space."""
    if not SPEC.exists():
        pytest.skip(f"spec not found at {SPEC}")
    spec = SPEC.read_text()
    instructions = [
        report.REPORT_INSTRUCTION,
        classification.DISEASES_INSTRUCTION,
        classification.PRESENCE_TEMPLATE.format("{x}"),
        localization.BOX_TEMPLATE.format("{x}"),
        segmentation.SEGMENT_TEMPLATE.format("{x}"),
        classification.LOCATION_TEMPLATE.format("{x}"),
        classification.SEVERITY_TEMPLATE.format("{x}"),
    ]
    for instruction in instructions:
        assert _spec_form(instruction) in spec, instruction


def test_spec_test_vector_strings():
    """The strings of spec §9.5, built by the task functions."""
    assert report.report_instruction() == " describe the image"
    assert classification.diseases_instruction() == " what disease does this image have?"
    assert localization.box_instruction("Cardiomegaly") == "give the accurate bbox of cardiomegaly."
    assert segmentation.segmentation_instruction("heart") == "please segment the heart from the given image."
    assert classification.location_instruction("Atelectasis") == "where is atelectasis?"
    assert classification.presence_instruction("Atelectasis") == " is atelectasis in this image?"
    assert classification.presence_target("Atelectasis", True) == " yes, there is atelectasis."
    assert (
        classification.diseases_target(["Atelectasis", "Pleural Effusion"])
        == " atelectasis, pleural effusion"
    )
    assert classification.diseases_target(["No Finding"]) == " no finding"
    assert classification.location_target("right") == " right"
    assert classification.presence_target("Edema", True)[:4] == " yes"
    assert classification.presence_target("Edema", False)[:3] == " no"


def test_leading_spaces_follow_spec_16_21():
    with_space = [
        report.report_instruction(),
        classification.diseases_instruction(),
        classification.presence_instruction("edema"),
    ]
    without_space = [
        localization.box_instruction("edema"),
        segmentation.segmentation_instruction("heart"),
        classification.location_instruction("edema"),
        classification.severity_instruction("edema"),
    ]
    assert all(s.startswith(" ") and not s.startswith("  ") for s in with_space)
    assert not any(s.startswith(" ") for s in without_space)


def test_pre_question_and_pre_caption_follow_spec_9_2():
    assert pre_question("?!Is Lung-Opacity/Edema  present?\n") == "is lung opacity edema present?"
    assert pre_question("a\tb") == "a\tb"  # a single tab is not a run of two: kept, as in the original
    assert pre_question("one two three four", max_words=2) == "one two"
    assert pre_caption("<person> in   view") == "person in view"
    assert normalize_label("  Pleural\t Effusion ") == "pleural effusion"
    with pytest.raises(ValueError, match=r"empty after normalisation: '\.\.\.'"):
        normalize_label("...")


def test_task_families_and_samples():
    assert {task.family for task in Task} == {"classification", "localization", "segmentation", "report"}
    sample = classification.presence_sample("Nodule", False)
    assert sample == TaskSample(Task.PRESENCE, " is nodule in this image?", " no nodule.")
    assert Task("box") is Task.BOX


def test_output_text_renders_bin_sequences_and_anything_else():
    assert output_text("yes") == "yes"
    assert output_text([3, 4]) == "<bin_3> <bin_4>"
    assert output_text(np.array([3, 4], dtype=np.int32)) == "<bin_3> <bin_4>"
    assert output_text([]) == ""
    assert output_text([1.5, 2]) == "[1.5, 2]"  # not bins: shown as it is, never parsed
    assert output_text([True]) == "[True]"
    assert output_text([[1, 2]]) == "[[1, 2]]"
    assert output_text([[1], [2, 3]]) == "[[1], [2, 3]]"  # ragged
    assert output_text(None) == "None"


# ------------------------------------------------------------------------------------------------------------
# Parsers are total: any output gives a value or an Unparseable, never an exception.

WORDS = [
    "<bin_0>", "<bin_999>", "<bin_1000>", "<bin_", "<bin_-3>", "<bin_07>", "yes", "no", "yes,", "there", "is",
    "no finding", "atelectasis", "pleural effusion", ",", ", ", ".", "(", ")", ";", "right", "lower lobe",
    "mild", "based on the findings:", "describe the image", "ctr", "0.57", "", " ", "\n", "é", "\x00",
]  # fmt: skip
outputs = st.one_of(
    st.lists(st.sampled_from(WORDS), max_size=12).map(" ".join),
    st.lists(st.sampled_from(WORDS), max_size=12).map("".join),
    st.text(max_size=40),
    st.lists(st.integers(-5, 1005), max_size=12),
    st.lists(st.integers(-5, 1005), max_size=12).map(np.array),
    st.lists(st.floats() | st.booleans() | st.none(), max_size=4),
)

PARSERS = [
    classification.parse_diseases,
    classification.parse_presence,
    classification.parse_location,
    classification.parse_severity,
    lambda out: localization.parse_boxes(out, 640, 480),
    lambda out: segmentation.parse_polygon(out, 640, 480),
    lambda out: segmentation.parse_polygon(out, 640, 480, num_points=4),
    report.parse_report,
    report.parse_report_prompt,
]


@given(outputs)
def test_parsers_never_raise_on_model_output(output):
    for parse in PARSERS:
        result = parse(output)
        if isinstance(result, Unparseable):
            assert isinstance(result.raw, str) and result.reason
            assert result.raw == output_text(output)


@pytest.mark.parametrize("parse", PARSERS)
@pytest.mark.parametrize("output", ["", "   ", "\n"])
def test_empty_output_is_unparseable(parse, output):
    result = parse(output)
    assert result == Unparseable(output, result.reason)
