"""Which diseases, is X present, where is X, how severe is X: targets, parsing, round trips, errors."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imtcxr_jax.tasks import Task, Unparseable
from imtcxr_jax.tasks import classification as cls

FINDINGS = [d for d in cls.DISEASES if d != cls.NO_FINDING]


def test_vocabularies():
    assert len(cls.DISEASES) == len(set(cls.DISEASES)) == 26
    assert set(cls.LOCALIZATION_DISEASES) <= set(cls.DISEASES)
    assert set(cls.TRAINED_LOCATIONS) <= set(cls.LOCATIONS)
    assert {"right lower", "bilateral perihilar", "apical"} <= set(cls.LOCATIONS)
    assert len(cls.LOCATIONS) == len(set(cls.LOCATIONS))
    assert not set(cls.LOCATIONS) & set(cls.SEVERITY_LEVELS)  # the report prompt tells them apart
    for entry in cls.DISEASES + cls.LOCATIONS + cls.SEVERITY_LEVELS:
        assert entry == entry.lower() and not set(entry) & set(",;().")


def test_diseases_targets_follow_spec_12_3():
    assert cls.diseases_target(cls.labels_from_field("Atelectasis&&Pleural Effusion")) == (
        " atelectasis, pleural effusion"
    )
    assert cls.diseases_target(cls.labels_from_field("No Finding")) == " no finding"
    assert cls.diseases_target([]) == " no finding"
    assert (
        cls.diseases_target(["Pleural Effusion", "atelectasis"]) == " pleural effusion, atelectasis"
    )  # order kept
    assert cls.diseases_sample(["edema"]).task is Task.DISEASES


def test_parse_diseases():
    assert cls.parse_diseases("atelectasis, pleural effusion") == ("atelectasis", "pleural effusion")
    assert cls.parse_diseases(" Atelectasis,Pleural  Effusion ") == ("atelectasis", "pleural effusion")
    assert cls.parse_diseases("no finding") == ()
    assert cls.parse_diseases("nodule", vocabulary=cls.LOCALIZATION_DISEASES) == ("nodule",)


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        ("", "empty output"),
        ("atelectasis, flu", "unknown disease label 'flu'"),
        ("atelectasis, atelectasis", "repeated"),
        ("atelectasis,, edema", "empty label"),
        ("no finding, edema", "'no finding' next to findings"),
        ("<bin_3> <bin_4>", "location bins where a list of diseases is expected"),
        ([3, 4], "location bins"),
        ("atelectasis.", "unknown disease label"),
    ],
)
def test_parse_diseases_unparseable(output, reason):
    result = cls.parse_diseases(output)
    assert isinstance(result, Unparseable) and reason in result.reason
    assert result.raw == (output if isinstance(output, str) else "<bin_3> <bin_4>")


@given(st.lists(st.sampled_from(FINDINGS), unique=True, max_size=8))
def test_diseases_round_trip(labels):
    assert cls.parse_diseases(cls.diseases_target(labels)) == tuple(labels)


def test_diseases_target_errors_name_the_value():
    with pytest.raises(ValueError, match="unknown disease label 'Flu'"):
        cls.diseases_target(["Flu"])
    with pytest.raises(ValueError, match="repeated disease label in \\['Edema', 'edema'\\]"):
        cls.diseases_target(["Edema", "edema"])
    with pytest.raises(ValueError, match="'no finding' together with findings \\['edema'\\]"):
        cls.diseases_target(["no finding", "edema"])


# ------------------------------------------------------------------------------------------------------------
# Presence


def test_presence_targets_including_the_capitalisation_quirk():
    assert cls.presence_target("Pleural Effusion", True) == " yes, there is pleural effusion."
    assert cls.presence_target("Pleural Effusion", False) == " no pleural effusion."
    assert cls.presence_target("Calcification of the Aorta", False, keep_case=True) == (
        " no Calcification of the Aorta."
    )
    assert cls.presence_target("Edema", True, keep_case=True) == " yes, there is edema."  # positives: lower
    with pytest.raises(ValueError, match="unknown disease label 'Flu'"):
        cls.presence_target("Flu", True)


@given(st.sampled_from(cls.DISEASE_NAMES), st.booleans(), st.booleans())
def test_presence_round_trip(label, present, keep_case):
    sample = cls.presence_sample(label, present, keep_case=keep_case)
    assert sample.instruction == f" is {label.lower()} in this image?"
    assert cls.parse_presence(sample.target) is present


@pytest.mark.parametrize("output", ["maybe", "yess", "there is edema", "<bin_1>", "", "Y"])
def test_parse_presence_unparseable(output):
    assert isinstance(cls.parse_presence(output), Unparseable)


def test_parse_presence_reads_the_first_word():
    assert cls.parse_presence("Yes.") is True
    assert cls.parse_presence("no Calcification of the Aorta.") is False


# ------------------------------------------------------------------------------------------------------------
# Location and severity


def test_location_and_severity_templates_and_targets():
    sample = cls.location_sample("Pleural Effusion", "Left")
    assert (sample.task, sample.instruction, sample.target) == (
        Task.LOCATION,
        "where is pleural effusion?",
        " left",
    )
    sample = cls.severity_sample("Cardiomegaly", "moderate")
    assert (sample.instruction, sample.target) == ("what is the level of cardiomegaly?", " moderate")
    assert cls.severity_target("normal") == " normal"
    with pytest.raises(ValueError, match="unknown location 'north'"):
        cls.location_target("north")
    with pytest.raises(ValueError, match="unknown severity 'normal'"):
        cls.severity_target("normal", vocabulary=cls.SEVERITIES)
    with pytest.raises(ValueError, match="label is empty"):
        cls.location_instruction("  ")


@given(st.sampled_from(cls.LOCATIONS))
def test_location_round_trip(location):
    assert cls.parse_location(cls.location_target(location)) == location


@given(st.sampled_from(cls.SEVERITY_LEVELS))
def test_severity_round_trip(severity):
    assert cls.parse_severity(cls.severity_target(severity)) == severity


@pytest.mark.parametrize("output", ["north", "right left", "mild", "<bin_4>", ""])
def test_parse_location_unparseable(output):
    assert isinstance(cls.parse_location(output), Unparseable)


@pytest.mark.parametrize("output", ["right", "very mild", "<bin_4>", ""])
def test_parse_severity_unparseable(output):
    assert isinstance(cls.parse_severity(output), Unparseable)


def test_original_attribute_rows():
    field = "atelectasis,right&small&base,effusion,right&small"
    pairs = cls.parse_attribute_field(field)
    assert pairs == [("atelectasis", ("right", "small", "base")), ("effusion", ("right", "small"))]
    assert [cls.location_from_adjectives(adjectives) for _, adjectives in pairs] == ["right", "right"]
    assert cls.location_from_adjectives(["base", "lower lobe", "bibasilar"]) == "lower lobe"  # reverse order
    assert cls.location_from_adjectives(["small"]) is None
    with pytest.raises(ValueError, match="'atelectasis,right,effusion'"):
        cls.parse_attribute_field("atelectasis,right,effusion")
