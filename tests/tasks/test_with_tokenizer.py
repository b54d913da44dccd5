"""Task text through the OFA tokenizer: the ids of spec §9.5, and decoded outputs parsed back.

Reads the third-party BPE files from <repo>/../shared/data/ofa-bpe; skips when they are absent.
"""

from pathlib import Path

import numpy as np
import pytest

from imtcxr_jax.tasks import classification as cls
from imtcxr_jax.tasks import localization as loc
from imtcxr_jax.tasks import report as rep
from imtcxr_jax.tasks import segmentation as seg

BPE_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ofa-bpe"


@pytest.fixture(scope="module")
def tokenizer():
    if not BPE_DIR.is_dir():
        pytest.skip(f"OFA BPE files not found at {BPE_DIR}")
    tokenizer_module = pytest.importorskip("imtcxr_jax.text.tokenizer")
    return tokenizer_module.OfaTokenizer(BPE_DIR)


def test_instructions_give_the_source_ids_of_spec_9_5(tokenizer):
    sources = {
        rep.report_instruction(): [0, 6190, 5, 2274, 2],
        cls.diseases_instruction(): [0, 99, 2199, 473, 42, 2274, 33, 116, 2],
        loc.box_instruction("Cardiomegaly"): [
            0,
            26650,
            5,
            6030,
            741,
            8304,
            9,
            1886,
            118,
            4399,
            571,
            7776,
            4,
            2,
        ],
        seg.segmentation_instruction("heart"): [0, 37111, 2835, 5, 1144, 31, 5, 576, 2274, 4, 2],
        cls.location_instruction("Atelectasis"): [0, 8569, 16, 23, 6930, 17048, 116, 2],
        cls.presence_instruction("Atelectasis"): [0, 16, 23, 6930, 17048, 11, 42, 2274, 116, 2],
    }
    for text, ids in sources.items():
        assert tokenizer.encode_source(text) == ids, text


def test_targets_give_the_target_ids_of_spec_9_5(tokenizer):
    targets = {
        cls.presence_target("Atelectasis", True): [4420, 6, 89, 16, 23, 6930, 17048, 4],
        cls.diseases_target(["Atelectasis", "Pleural Effusion"]): [
            23,
            6930,
            17048,
            6,
            16415,
            9799,
            22089,
            15727,
        ],
        cls.diseases_target([]): [117, 2609],
        cls.location_target("right"): [235],
        loc.box_target([0, 256, 512, 512], 512, 512): [58457, 58957, 59456, 59456],
    }
    for text, ids in targets.items():
        assert tokenizer.encode(text) == ids, text


def test_decoded_outputs_parse_back(tokenizer):
    def through_tokenizer(text: str) -> str:
        return tokenizer.decode([0, *tokenizer.encode_target(text)])

    assert cls.parse_diseases(through_tokenizer(cls.diseases_target(["edema", "mass"]))) == ("edema", "mass")
    assert cls.parse_presence(through_tokenizer(cls.presence_target("edema", False))) is False
    assert cls.parse_location(through_tokenizer(cls.location_target("lower lobe"))) == "lower lobe"
    boxes = np.array([[10.0, 20.0, 300.0, 400.0], [0.0, 0.0, 640.0, 480.0]])
    parsed = loc.parse_boxes(through_tokenizer(loc.box_target(boxes, 640, 480)), 640, 480)
    np.testing.assert_allclose(parsed, boxes, atol=640 / 999 / 2)
    polygon = np.array([[1.0, 2.0], [600.0, 5.0], [300.0, 470.0]])
    parsed = seg.parse_polygon(
        through_tokenizer(seg.polygon_target(polygon, 640, 480)), 640, 480, num_points=3
    )
    np.testing.assert_allclose(parsed, polygon, atol=640 / 999 / 2)
    report = "the heart size is normal. no pleural effusion."
    assert rep.parse_report(through_tokenizer(rep.report_target(report))) == report
    evidence = rep.Evidence((rep.Finding("pleural effusion", "left", "mild"),), ctr=0.48)
    assert rep.parse_report_prompt(through_tokenizer(rep.report_instruction(evidence))) == evidence
