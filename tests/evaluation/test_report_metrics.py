"""Report metrics and PTB tokenisation, against pycocoevalcap (the reference implementation).

pycocoevalcap is a test/evaluation dependency; without it (or without Java for its tokenizer and METEOR) the
comparisons are skipped with the reason. Scorers that start a JVM are created once per module.
"""

import importlib.util
import random
import shutil

import pytest

from imtcxr_jax.evaluation import ptb, report_metrics

HAVE_COCO = importlib.util.find_spec("pycocoevalcap") is not None
needs_coco_and_java = pytest.mark.skipif(
    not HAVE_COCO or shutil.which("java") is None,
    reason="needs pycocoevalcap (pip install pycocoevalcap) and java on PATH, the reference implementation",
)

# Reference and generated reports written for these tests: varied punctuation, numbers, abbreviations,
# brackets, clitics, capitals, repeated words and an empty hypothesis.
PAIRS = [
    (
        "The heart size is normal. The lungs are clear. No pleural effusion or pneumothorax.",
        "Heart size is normal. Lungs are clear. No effusion or pneumothorax.",
    ),
    (
        "There is a small left pleural effusion. Mild cardiomegaly. No focal consolidation.",
        "Small left effusion with mild cardiomegaly.",
    ),
    ("PA and lateral views of the chest. Bibasilar atelectasis (left > right).", "Bibasilar atelectasis."),
    ("No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality."),
    ("Stable appearance of the chest.", ""),
    (
        "ET tube terminates 4.5 cm above the carina. NG tube courses below the diaphragm.",
        "Endotracheal tube tip is 4 cm above the carina; nasogastric tube in the stomach.",
    ),
    (
        "Right IJ central venous catheter with tip in the mid SVC, unchanged.",
        "Right internal jugular line ends in the SVC.",
    ),
    (
        "Moderate pulmonary edema, slightly improved since 10/12/2020.",
        "Mild-to-moderate pulmonary edema, improving.",
    ),
    ("1. No pneumothorax. 2. Small bilateral effusions.", "No pneumothorax. Small bilateral effusions."),
    ("Dr. Smith was notified of the findings at 3:45 p.m.", "The findings were discussed with Dr. Smith."),
    ("Heart size is top-normal/borderline; no vascular congestion.", "Borderline heart size. No congestion."),
    (
        "There's a 1.5cm nodule in the RUL, e.g. a granuloma vs. a neoplasm.",
        "1.5 cm right upper lobe nodule.",
    ),
    ("The patient's lungs are hyperinflated, consistent with COPD.", "Hyperinflated lungs (COPD)."),
    (
        "Left lower lobe opacity may represent atelectasis or pneumonia.",
        "Left basilar opacity, likely atelectasis.",
    ),
    ("No displaced rib fracture is seen!", "No acute fracture?"),
    (
        "Sternotomy wires and mediastinal clips are intact. Cardiomediastinal silhouette is within normal limits.",
        "Intact sternotomy wires. Normal cardiomediastinal silhouette.",
    ),
    (
        "Large right pneumothorax with leftward mediastinal shift -- findings called to the ER.",
        "Large pneumothorax.",
    ),
    ("Trace right pleural effusion...  otherwise clear.", "Tiny right effusion, otherwise clear lungs."),
    ("Can't exclude a small left apical pneumothorax.", "Cannot exclude small apical pneumothorax."),
    ('"Patchy" opacities at both bases [unchanged] {stable}.', "Patchy bibasilar opacities, unchanged."),
    ("Compared with prior study from Jan. 5, no significant change.", "No change compared with prior."),
    (
        "Calcified granuloma in the left upper lobe; 50% collapse of the right lower lobe.",
        "Right lower lobe collapse.",
    ),
    ("AP portable upright view of the chest.", "Portable AP chest."),
    ("The heart is enlarged and the lungs are clear", "Cardiomegaly. Clear lungs"),
    ("NO PLEURAL EFFUSION. NO PNEUMOTHORAX.", "no pleural effusion. no pneumothorax."),
    (
        "Status post CABG. Median sternotomy wires. Heart size normal. Lungs clear. No effusion.",
        "Post CABG changes. Normal heart size. Clear lungs. No effusion.",
    ),
    (
        "Interval removal of the left chest tube; no residual pneumothorax.",
        "Left chest tube removed. No pneumothorax.",
    ),
    ("Mild degenerative changes of the thoracic spine.", "Degenerative changes of the spine."),
    ("Pneumoperitoneum: free air under the right hemidiaphragm.", "Free air under the diaphragm."),
    (
        "Lungs are clear. Heart normal. Mediastinum normal. Bones normal.",
        "Lungs clear. Heart normal. Bones normal.",
    ),
]
REFERENCES = [ref for ref, _ in PAIRS]
HYPOTHESES = [hyp for _, hyp in PAIRS]


def _coco_tokenize(texts):
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenized = PTBTokenizer().tokenize({index: [{"caption": text}] for index, text in enumerate(texts)})
    return [tokenized[index][0] for index in range(len(texts))]


@pytest.fixture(scope="module")
def coco_tokens():
    """The reports as pycocoevalcap's own PTB tokenizer returns them (two short JVM runs)."""
    if not HAVE_COCO or shutil.which("java") is None:
        pytest.skip(
            "needs pycocoevalcap (pip install pycocoevalcap) and java on PATH, the reference implementation"
        )
    return _coco_tokenize(REFERENCES), _coco_tokenize(HYPOTHESES)


def _as_coco(refs, hyps):
    return {i: [r] if isinstance(r, str) else list(r) for i, r in enumerate(refs)}, {
        i: [h] for i, h in enumerate(hyps)
    }


def test_python_tokenizer_matches_pycocoevalcap(coco_tokens):
    coco_refs, coco_hyps = coco_tokens
    assert ptb.ptb_tokenize(REFERENCES, "python") == coco_refs
    assert ptb.ptb_tokenize(HYPOTHESES, "python") == coco_hyps


@needs_coco_and_java
def test_corenlp_tokenizer_matches_pycocoevalcap(coco_tokens):
    assert ptb.ptb_tokenize(REFERENCES, "corenlp") == coco_tokens[0]


@needs_coco_and_java
def test_python_tokenizer_matches_the_jar_on_generated_report_text():
    """A seeded stream of report words, abbreviations, numbers and punctuation, spaced as reports are."""
    rng = random.Random(0)
    words = """the heart size is normal lungs are clear no pleural effusion or pneumothorax mild cardiomegaly
    left right bilateral lower lobe opacity atelectasis edema there small new interval change compared with
    picc line tip svc et tube ng catheter may represent cannot be excluded not seen nodule mass fracture
    x-ray left-sided top-normal and/or s/p AP PA CT patient's it's don't isn't there's can't cannot
    vs vs. e.g. i.e. dr. no. approx. etc. cm mm 1.5 2 3.2cm 5mm 1,000 3:45 10/12/2020 3-4 #2 50% t5 ___
    -- ; : , . ( ) [ ] ? ! " ' L>R r. x. Impression: FINDINGS: 1. 2. 3) Dr. Smith No. The There In A This""".split()  # noqa: SIM905 - reads better as text
    texts = []
    for _ in range(400):
        tokens = [rng.choice(words) for _ in range(rng.randint(1, 25))]
        tokens = [t.capitalize() if rng.random() < 0.15 else t for t in tokens]
        tokens = [t + rng.choice(".,;:)") if rng.random() < 0.2 else t for t in tokens]
        texts.append(" ".join(tokens))
    assert ptb.ptb_tokenize(texts, "python") == ptb.ptb_tokenize(texts, "corenlp")


def test_python_tokenizer_conventions():
    assert ptb.ptb_tokenize(["Don't miss the 1.5cm nodule (RUL)!"]) == [
        "do n't miss the 1.5 cm nodule -lrb- rul -rrb-"
    ]
    assert ptb.ptb_tokenize(["e.g. Dr. Smith vs. No. 5 etc."]) == ["e.g. dr. smith vs. no. 5 etc."]
    # "no." keeps its period only before a number, also across into the next text of the batch.
    assert ptb.ptb_tokenize(["Effusion: No.", "5 cm"]) == ["effusion no.", "5 cm"]
    assert ptb.ptb_tokenize(["Effusion: No.", "None"]) == ["effusion no", "none"]


def test_bleu_rouge_cider_match_pycocoevalcap(coco_tokens):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    refs, hyps = coco_tokens
    gts, res = _as_coco(refs, hyps)
    expected_bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    assert report_metrics.bleu(refs, hyps) == pytest.approx(expected_bleu, abs=1e-6, rel=0)
    expected_rouge, expected_rouge_items = Rouge().compute_score(gts, res)
    rouge = report_metrics.rouge_l(refs, hyps)
    assert rouge.score == pytest.approx(expected_rouge, abs=1e-6, rel=0)
    assert rouge.per_item == pytest.approx(list(expected_rouge_items), abs=1e-6, rel=0)
    expected_cider, expected_cider_items = Cider().compute_score(gts, res)
    cider = report_metrics.cider_d(refs, hyps)
    assert cider.score == pytest.approx(expected_cider, abs=1e-6, rel=0)
    assert cider.per_item == pytest.approx(list(expected_cider_items), abs=1e-6, rel=0)


def test_multiple_references_match_pycocoevalcap(coco_tokens):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    refs, hyps = coco_tokens
    # Give every hypothesis its own reference plus the next item's: closest-length BLEU, max-P/max-R ROUGE,
    # reference-averaged CIDEr and per-item document frequencies all come into play.
    multi = [[refs[i], refs[(i + 1) % len(refs)]] for i in range(len(refs))]
    gts, res = _as_coco(multi, hyps)
    assert report_metrics.bleu(multi, hyps) == pytest.approx(
        Bleu(4).compute_score(gts, res, verbose=0)[0], abs=1e-6
    )
    assert report_metrics.rouge_l(multi, hyps).score == pytest.approx(
        Rouge().compute_score(gts, res)[0], abs=1e-6
    )
    assert report_metrics.cider_d(multi, hyps).score == pytest.approx(
        Cider().compute_score(gts, res)[0], abs=1e-6
    )


def test_bleu_with_no_higher_order_match_is_tiny_not_zero_or_error():
    refs, hyps = ["a b c d"], ["a x b y"]
    scores = report_metrics.bleu(refs, hyps)
    assert scores[0] == pytest.approx(0.5)
    assert 0 < scores[3] < 1e-3


def test_pairing_is_checked():
    with pytest.raises(ValueError, match="pair"):
        report_metrics.bleu(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="no reference"):
        report_metrics.rouge_l([[]], ["a"])


def test_meteor_unavailable_without_java(monkeypatch):
    monkeypatch.setattr(report_metrics.shutil, "which", lambda name: None)
    reason = report_metrics.meteor_unavailable_reason()
    assert reason is not None and ("java" in reason if HAVE_COCO else "pycocoevalcap" in reason)
    result = report_metrics.score_reports(REFERENCES[:3], HYPOTHESES[:3], tokenizer="auto")
    assert result["meteor"] is None
    assert result["meteor_unavailable"] == reason
    assert result["tokenizer"] == "python"  # "auto" falls back to the Python tokenizer without java
    with pytest.raises(RuntimeError, match="METEOR is unavailable"):
        report_metrics.MeteorScorer()


def test_score_reports_without_meteor(coco_tokens):
    from pycocoevalcap.bleu.bleu import Bleu

    result = report_metrics.score_reports(REFERENCES, HYPOTHESES, tokenizer="python", meteor=False)
    gts, res = _as_coco(*coco_tokens)
    expected, _ = Bleu(4).compute_score(gts, res, verbose=0)
    assert [result[f"bleu_{n}"] for n in range(1, 5)] == pytest.approx(expected, abs=1e-6)
    assert result["meteor"] is None and result["meteor_unavailable"]
    assert set(result) >= {"rouge_l", "cider", "tokenizer"}


@pytest.mark.slow
@needs_coco_and_java
def test_meteor_matches_pycocoevalcap(coco_tokens):
    """Two Meteor JVMs (ours and pycocoevalcap's), ~10 s each."""
    from pycocoevalcap.meteor.meteor import Meteor

    refs, hyps = coco_tokens
    gts, res = _as_coco(refs, hyps)
    expected, expected_items = Meteor().compute_score(gts, res)
    with report_metrics.MeteorScorer() as scorer:
        ours = scorer.score(refs, hyps)
        result = report_metrics.score_reports(REFERENCES, HYPOTHESES, tokenizer="python", meteor=scorer)
    assert ours.score == pytest.approx(expected, abs=1e-6)
    assert ours.per_item == pytest.approx(expected_items, abs=1e-6)
    assert result["meteor"] == pytest.approx(expected, abs=1e-6)
