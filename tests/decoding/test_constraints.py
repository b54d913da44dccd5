"""Constraint automata: every answer they allow parses with the task parsers, by construction.

Three levels:
* random walks through each automaton alone (a uniformly random allowed token per step, many walks);
* beam search with garbage models (random weights) under each constraint: every finalised answer parses;
* the constrained jitted search equals the eager reference of test_beam_search driven by allowed-token sets
  computed here in plain Python (so the masks, the -inf candidates they create and the early stop when no
  hypothesis can end any more are checked against an independent implementation).

Phrase answers are real task answers (tasks/classification.py) through a byte-level BPE trained here on those
answers, so the micro-sized model has a real tokenizer and the parsers read decoded text.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imtcxr_jax.decoding import BoxConstraint, PhraseConstraint, PolygonConstraint, beam_search
from imtcxr_jax.tasks import classification as cls
from imtcxr_jax.tasks.common import Unparseable
from imtcxr_jax.tasks.localization import box_instruction, parse_boxes
from imtcxr_jax.tasks.segmentation import STRUCTURES, parse_polygon, segmentation_instruction
from imtcxr_jax.text.tokenizer import TrainedTokenizer
from tests.decoding import encode, random_inputs, random_model
from tests.decoding.test_beam_search import MAX_LEN, assert_same, jax_lprobs, reference_search

EOS, NUM_BINS = 2, 1000
WIDTH, HEIGHT = 640, 480
BEAM, BATCH = 3, 2


def bins_of(tokens, vocab_size: int) -> np.ndarray:
    """Answer ids (EOS excluded) -> bin indices (negative for ids that are not bins)."""
    return np.asarray(tokens) - (vocab_size - NUM_BINS)


def answers(result, sentence: int) -> list[list[int]]:
    """The finalised answers of a sentence, without their EOS."""
    tokens, lengths = np.asarray(result.tokens[sentence]), np.asarray(result.lengths[sentence])
    finished = np.asarray(result.finished[sentence])
    return [tokens[k, : lengths[k] - 1].tolist() for k in range(tokens.shape[0]) if finished[k]]


# ---------------------------------------------------------------------------------------------------------
# The task answers and a tokenizer for them
# ---------------------------------------------------------------------------------------------------------


@functools.cache
def tokenizer() -> TrainedTokenizer:
    """A BPE trained on the task texts. It fills exactly micro's 1536 ids, so that the phrase tests run on the
    very models (and compiled searches) of the other tests."""
    corpus = [cls.diseases_target([d]) for d in cls.DISEASES] + [cls.diseases_target(cls.DISEASES[:3])]
    corpus += [cls.location_target(x) for x in cls.LOCATIONS]
    corpus += [cls.severity_target(x) for x in cls.SEVERITY_LEVELS]
    corpus += [cls.presence_target(d, p) for d in cls.DISEASES for p in (True, False)]
    corpus += [cls.presence_target(n, False, keep_case=True) for n in cls.DISEASE_NAMES]
    corpus += [" " + n for n in cls.DISEASE_NAMES] + [cls.diseases_instruction()]
    instructions = (cls.presence_instruction, cls.location_instruction, cls.severity_instruction)
    corpus += [ask(d) for d in cls.DISEASES for ask in (*instructions, box_instruction)]
    corpus += [segmentation_instruction(s) for s in STRUCTURES]
    return TrainedTokenizer.train(corpus, vocab_size=1536, min_frequency=2)


@functools.cache
def answer_sets() -> dict[str, tuple[PhraseConstraint, object]]:
    """name -> (constraint, parser of the decoded text that returns Unparseable for a bad answer)."""
    tok = tokenizer()
    v = tok.vocab_size

    def one_of(texts):
        return PhraseConstraint([tok.encode(t) for t in texts], vocab_size=v)

    (comma,) = tok.encode(",")
    diseases = PhraseConstraint(
        [tok.encode(" " + d) for d in cls.DISEASES],
        vocab_size=v,
        separator=comma,
        solo=[cls.DISEASES.index(cls.NO_FINDING)],
    )
    return {
        "location": (one_of(cls.location_target(x) for x in cls.LOCATIONS), cls.parse_location),
        "severity": (one_of(cls.severity_target(x) for x in cls.SEVERITY_LEVELS), cls.parse_severity),
        "presence": (
            one_of(cls.presence_target("pleural effusion", p) for p in (True, False)),
            cls.parse_presence,
        ),
        "diseases": (diseases, cls.parse_diseases),
    }


def check_bins(constraint, answer: list[int], vocab_size: int) -> None:
    bins = bins_of(answer, vocab_size)
    if isinstance(constraint, BoxConstraint):
        boxes = parse_boxes(bins, WIDTH, HEIGHT)
        assert not isinstance(boxes, Unparseable), boxes
        assert boxes.shape == (constraint.num_boxes, 4)
    else:
        polygon = parse_polygon(bins, WIDTH, HEIGHT, num_points=constraint.num_points)
        assert not isinstance(polygon, Unparseable), polygon


def check_phrase(name: str, answer: list[int]) -> None:
    constraint, parse = answer_sets()[name]
    text = tokenizer().decode(answer)
    parsed = parse(text)
    assert not isinstance(parsed, Unparseable), (name, text, parsed)
    if name != "diseases":
        assert tuple(answer) in constraint.phrases
    elif parsed:  # a list: distinct labels, "no finding" only alone (parse_diseases checks both)
        assert all(label in cls.DISEASES for label in parsed)


# ---------------------------------------------------------------------------------------------------------
# Random walks through the automata
# ---------------------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=(2, 3))
def _walk(constraint, key, walks: int, steps: int):
    """(walks, steps) tokens, each a uniformly random choice among the allowed ones, and whether every state
    offered at least one token."""
    state = constraint.init(walks)

    def step(carry, key):
        state, ok = carry
        mask = constraint.allowed(state)
        token = jax.random.categorical(key, jnp.where(mask, 0.0, -jnp.inf)).astype(jnp.int32)
        return (constraint.advance(state, token), ok & jnp.all(jnp.any(mask, axis=1))), token

    (_, ok), tokens = jax.lax.scan(step, (state, jnp.bool_(True)), jax.random.split(key, steps))
    return tokens.T, ok


def walk(constraint, walks: int, steps: int, seed: int) -> list[list[int]]:
    tokens, ok = _walk(constraint, jax.random.key(seed), walks, steps)
    assert bool(ok), "a state allowed no token at all"
    out = []
    for row in np.asarray(tokens).tolist():
        assert EOS in row, f"no EOS within {steps} steps: {row}"
        out.append(row[: row.index(EOS)])
    return out


@pytest.mark.parametrize(
    "constraint",
    [
        BoxConstraint(vocab_size=1536, num_boxes=1),
        BoxConstraint(vocab_size=59457, num_boxes=3),
        PolygonConstraint(vocab_size=1536, num_points=3),
        PolygonConstraint(vocab_size=1536, num_points=7),
    ],
    ids=repr,
)
def test_random_walks_through_bin_automata_always_parse(constraint):
    walks = 256 if constraint.vocab_size < 2000 else 16  # (walks, V) masks and draws per step
    for answer in {tuple(a) for a in walk(constraint, walks=walks, steps=32, seed=0)}:
        assert len(answer) == constraint.max_steps
        check_bins(constraint, list(answer), constraint.vocab_size)


def test_random_box_walks_cover_degenerate_and_full_range_boxes():
    # num_bins = 4 makes the boundary cases frequent: x1 == x0 and x0 == the last bin must be reachable.
    boxes = np.array(walk(BoxConstraint(vocab_size=64, num_boxes=1, num_bins=4), 512, 6, seed=1)) - 60
    assert np.all(boxes[:, 2] >= boxes[:, 0]) and np.all(boxes[:, 3] >= boxes[:, 1])
    assert np.any(boxes[:, 2] == boxes[:, 0]) and np.any(boxes[:, 0] == 3)
    assert len({tuple(b) for b in boxes.tolist()}) > 40  # (10 * 10 valid boxes) not a few fixed ones


@pytest.mark.parametrize("name", ["location", "severity", "presence", "diseases"])
def test_random_walks_through_answer_tries_always_parse(name):
    constraint, _ = answer_sets()[name]
    # One walk length for the single answers, so that their walks share a compilation (same table shapes).
    steps = 24 if name != "diseases" else constraint.max_steps + 2
    seen = {tuple(answer) for answer in walk(constraint, walks=1024, steps=steps, seed=2)}
    for answer in seen:  # distinct answers only: parsing is the slow part
        check_phrase(name, list(answer))
    if name != "diseases":
        assert seen == set(constraint.phrases)  # every answer reachable
    else:
        assert any(len(tokenizer().decode(a).split(",")) >= 3 for a in seen)  # lists, not single labels


def test_phrase_constraint_validates_its_answers():
    with pytest.raises(ValueError, match="more than once"):
        PhraseConstraint([[5, 6], [5, 6, EOS]], vocab_size=100)
    with pytest.raises(ValueError, match="special"):
        PhraseConstraint([[5, 1, 6]], vocab_size=100)
    with pytest.raises(ValueError, match="empty"):
        PhraseConstraint([[EOS]], vocab_size=100)
    with pytest.raises(ValueError, match="inside an answer"):
        PhraseConstraint([[5, 7]], vocab_size=100, separator=7)
    with pytest.raises(ValueError, match="num_points"):
        PolygonConstraint(vocab_size=1536, num_points=0)


def test_constraint_lengths_are_checked_against_the_search_limits():
    model = random_model("micro")
    enc = encode(model, *random_inputs(model.cfg.vocab_size, 1, seed=0))
    with pytest.raises(ValueError, match="max_len"):
        beam_search(
            model, enc, max_len=7, constraint=BoxConstraint(vocab_size=model.cfg.vocab_size, num_boxes=2)
        )
    with pytest.raises(ValueError, match="min_len"):
        beam_search(
            model, enc, max_len=MAX_LEN, min_len=5, constraint=BoxConstraint(vocab_size=model.cfg.vocab_size)
        )
    with pytest.raises(ValueError, match="vocab_size"):
        beam_search(model, enc, max_len=MAX_LEN, constraint=BoxConstraint(vocab_size=2000))


# ---------------------------------------------------------------------------------------------------------
# Beam search with garbage models
# ---------------------------------------------------------------------------------------------------------


def test_constrained_beam_search_with_garbage_models_gives_boxes_and_polygons_that_parse():
    for seed in range(3):
        model = random_model("micro", seed=seed)
        v = model.cfg.vocab_size
        src, images = random_inputs(v, BATCH, seed=seed)
        enc = encode(model, src, images)
        unconstrained = beam_search(model, enc, beam_size=BEAM, max_len=MAX_LEN)
        # Without a constraint the garbage model's answers are mostly no boxes (micro's vocabulary is 2/3 bins).
        raw = [a for s in range(BATCH) for a in answers(unconstrained, s)]
        assert any(isinstance(parse_boxes(bins_of(a, v), WIDTH, HEIGHT), Unparseable) for a in raw)
        for constraint in [
            BoxConstraint(vocab_size=v, num_boxes=1 + seed % 2),
            PolygonConstraint(vocab_size=v, num_points=3 + seed),
        ]:
            result = beam_search(model, enc, beam_size=BEAM, max_len=MAX_LEN, constraint=constraint)
            assert np.all(np.asarray(result.finished))  # thousands of bins: every beam reaches its EOS
            assert np.all(np.asarray(result.lengths) == constraint.max_steps + 1)
            assert np.all(np.isfinite(np.asarray(result.scores)))
            for sentence in range(BATCH):
                for answer in answers(result, sentence):
                    check_bins(constraint, answer, v)


def test_constrained_beam_search_with_a_garbage_model_gives_task_answers_that_parse():
    model = random_model("micro", seed=0, vocab_size=tokenizer().vocab_size)
    for name, (constraint, _) in answer_sets().items():
        for seed in range(2):
            src, images = random_inputs(model.cfg.vocab_size, BATCH, seed=seed)
            result = beam_search(
                model, encode(model, src, images), beam_size=BEAM, max_len=MAX_LEN, constraint=constraint
            )
            assert np.all(np.asarray(result.finished)[:, 0])  # the best answer is always there
            for sentence in range(BATCH):
                for answer in answers(result, sentence):
                    check_phrase(name, answer)


# ---------------------------------------------------------------------------------------------------------
# The constrained search against the eager reference
# ---------------------------------------------------------------------------------------------------------


def box_allowed(num_boxes: int, vocab_size: int):
    first_bin = vocab_size - NUM_BINS

    def allowed(answer: list[int]) -> set[int]:
        n = len(answer)
        if n >= 4 * num_boxes:
            return {EOS}
        # corner 2 (x1) is bounded by x0 = answer[n - 2], corner 3 (y1) by y0 = answer[n - 2]
        low = answer[n - 2] if n % 4 in (2, 3) else first_bin
        return set(range(max(low, first_bin), vocab_size))

    return allowed


def phrase_allowed(phrases):
    def allowed(answer: list[int]) -> set[int]:
        n = len(answer)
        nexts = {p[n] for p in phrases if len(p) > n and list(p[:n]) == answer}
        return nexts | {EOS} if tuple(answer) in phrases or not nexts else nexts

    return allowed


def test_constrained_search_equals_the_eager_reference():
    micro = random_model("micro", seed=1)
    worded = random_model("micro", seed=0, vocab_size=tokenizer().vocab_size)
    location, _ = answer_sets()["location"]
    presence, _ = answer_sets()["presence"]
    v = micro.cfg.vocab_size
    runs = [
        (micro, BoxConstraint(vocab_size=v, num_boxes=2), box_allowed(2, v), 3),
        (worded, location, phrase_allowed(location.phrases), 0),
        # Two answers for three beams: -inf candidates fill the beam and the search stops once no
        # hypothesis can end any more, with one slot left empty.
        (worded, presence, phrase_allowed(presence.phrases), 2),
    ]
    for model, constraint, allowed, ngram in runs:
        src, images = random_inputs(model.cfg.vocab_size, BATCH, seed=5)
        enc = encode(model, src, images)
        options = dict(
            beam_size=BEAM, max_len=MAX_LEN, min_len=1, no_repeat_ngram_size=ngram,
            length_penalty=1.0, unk_penalty=0.0,
        )  # fmt: skip
        result = beam_search(model, enc, constraint=constraint, **options)
        for sentence in range(BATCH):
            expected = reference_search(jax_lprobs(model, enc, sentence), allowed=allowed, **options)
            assert_same(result, sentence, expected, BEAM)
        if constraint is presence:
            assert not np.asarray(result.finished)[:, 2].any() and int(result.steps) < MAX_LEN
