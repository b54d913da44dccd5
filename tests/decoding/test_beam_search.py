"""The jitted beam search against an eager reference of spec §14.2 written here, and against the PyTorch model.

`reference_search` is a second, independent implementation of the original generator's algorithm: plain
Python control flow over per-hypothesis lists, numpy float32 arithmetic, the n-gram table as a dict of seen
n-grams (fairseq's formulation, not the dense comparison of the jitted search), the finalised list appended
to in candidate order. Its log-probabilities come from the model's teacher-forced forward (no KV cache, no
cache reordering), or from the PyTorch reference model (tests/reference/ofa_torch.py) loaded with the same
weights. Token ids must agree exactly; scores to float32 rounding.

Shapes are kept few (B = 2, max_len = 12; K in {1, 3} on micro, 5 on ofa_tiny) because every distinct
shape is a compilation (2-5 s each on 2 cores).
"""

from __future__ import annotations

import dataclasses
import functools
from collections import defaultdict
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from imtcxr_jax.decoding import beam_search, decode_batch
from imtcxr_jax.decoding.beam_search import (
    _candidates_from_logits,
    _candidates_from_lprobs,
    _ngram_bans,
    _process_lprobs,
    _row_top_k,
    _search,
    _self_cache_bytes,
    _top_candidates,
    cache_phases,
)
from imtcxr_jax.models.imtcxr import EncoderOutput
from tests.decoding import encode, random_inputs, random_model

BOS, PAD, EOS, UNK = 0, 1, 2, 3
MAX_LEN = 12
BATCH = 2
ROWS = 5  # the reference's teacher-forced forward always runs 5 rows (one compilation)

# (beam_size, min_len, no_repeat_ngram_size, length_penalty, unk_penalty)
CASES = {
    "micro": [
        (1, 1, 3, 1.0, 0.0),
        (3, 2, 3, 1.0, 0.0),
        (3, 1, 2, 0.5, 0.0),
        (3, 0, 0, 2.0, 5.0),
        (1, 4, 1, 1.0, 0.0),
    ],
    "ofa_tiny": [
        (5, 1, 3, 1.0, 0.0),
        (5, 2, 2, 1.0, 0.0),
        (5, 0, 4, 1.5, 0.0),
        (5, 1, 0, 1.0, 0.0),
        (5, 3, 3, 1.0, 2.0),
    ],
}


# ---------------------------------------------------------------------------------------------------------
# The eager reference (spec §14.2)
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Hypothesis:
    tokens: list[int]  # without BOS, ending with EOS
    score: np.float32  # cumulative / length^lenpen
    positional: np.ndarray  # per-token log-probs (float32)


def seen_ngram_bans(tokens: Sequence[int], n: int) -> list[int]:
    """Tokens that would repeat an n-gram of `tokens` (BOS first), fairseq's table of seen n-grams."""
    if n == 0 or len(tokens) + 1 < n:  # the original: active once step + 2 - n >= 0, step = len - 1
        return []
    table: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i in range(len(tokens) - n + 1):
        table[tuple(tokens[i : i + n - 1])].append(tokens[i + n - 1])
    return table.get(tuple(tokens[len(tokens) - n + 1 :]), [])


def top_candidates(scores: np.ndarray, count: int) -> np.ndarray:
    """Indices of the `count` largest scores, best first, ties broken towards the lower index: the same as
    `np.argsort(-scores, kind="stable")[:count]`, without sorting all K*V scores."""
    kth = scores[np.argpartition(-scores, count - 1)[:count]].min()
    above = np.flatnonzero(scores > kth)
    chosen = np.concatenate([above, np.flatnonzero(scores == kth)[: count - len(above)]])
    return chosen[np.lexsort((chosen, -scores[chosen]))]


def reference_search(
    next_lprobs: Callable[[list[list[int]]], np.ndarray],
    *,
    beam_size: int,
    max_len: int,
    min_len: int,
    no_repeat_ngram_size: int,
    length_penalty: float,
    unk_penalty: float,
    allowed: Callable[[list[int]], set[int]] | None = None,
) -> list[Hypothesis]:
    """One sentence. next_lprobs(prefixes, each starting with BOS) -> (len(prefixes), V) float32 log-probs.
    allowed(answer so far) -> the token ids a constraint allows next (None: unconstrained)."""
    k = beam_size
    live: list[tuple[list[int], list[np.float32]]] = [([BOS], [])]  # at t = 0 only one hypothesis
    finalised: list[Hypothesis] = []
    for t in range(max_len + 1):
        lprobs = np.array(next_lprobs([tokens for tokens, _ in live]), np.float32)
        vocab = lprobs.shape[1]
        for row, (tokens, _) in enumerate(live):
            lp = lprobs[row]
            if t < min_len:
                lp[EOS] = -np.inf
            lp[np.isnan(lp)] = -np.inf
            lp[PAD] = -np.inf
            lp[UNK] -= np.float32(unk_penalty)
            if t >= max_len:
                eos = lp[EOS]
                lp[:] = -np.inf
                lp[EOS] = eos
            lp[seen_ngram_bans(tokens, no_repeat_ngram_size)] = -np.inf
            if allowed is not None:
                forbidden = np.ones(vocab, bool)
                forbidden[sorted(allowed(tokens[1:]))] = False
                lp[forbidden] = -np.inf
        cumulative = np.array([scores[-1] if scores else 0.0 for _, scores in live], np.float32)
        scores = (lprobs + cumulative[:, None]).ravel()
        ranked = top_candidates(scores, 2 * k)
        survivors = []
        for rank, index in enumerate(ranked):
            beam, token = divmod(int(index), vocab)
            score = scores[index]
            tokens, history = live[beam]
            if token == EOS and np.isfinite(score):
                if rank < k and len(finalised) < k:
                    path = np.array([*history, score], np.float32)
                    finalised.append(
                        Hypothesis(
                            tokens=[*tokens[1:], EOS],
                            score=score / np.float32((t + 1) ** length_penalty),
                            positional=np.diff(path, prepend=np.float32(0)),
                        )
                    )
            elif len(survivors) < k:
                survivors.append(([*tokens, token], [*history, score]))
        if len(finalised) == k or t == max_len:
            break
        live = survivors
    return sorted(finalised, key=lambda h: -h.score)  # stable: ties keep finalisation order


# ---------------------------------------------------------------------------------------------------------
# Log-probabilities for the reference
# ---------------------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=0)
def _teacher_forced_lprobs(graphdef, state, prefixes, lengths, enc) -> jax.Array:
    logits = nnx.merge(graphdef, state).decode(prefixes, enc)  # (R, L, V)
    last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]
    return jax.nn.log_softmax(last.astype(jnp.float32), axis=-1)


def jax_lprobs(model, enc: EncoderOutput, sentence: int) -> Callable[[list[list[int]]], np.ndarray]:
    """The model's next-token log-probs of sentence `sentence` by a full teacher-forced forward of each prefix
    (right-padded to MAX_LEN + 1 with PAD, which the causal mask never lets position t see)."""
    graphdef, state = nnx.split(model)
    rows = jax.tree.map(lambda a: jnp.repeat(a[sentence : sentence + 1], ROWS, axis=0), enc)

    def next_lprobs(prefixes: list[list[int]]) -> np.ndarray:
        padded = np.full((ROWS, MAX_LEN + 1), PAD, np.int32)
        padded[:, 0] = BOS
        for row, prefix in enumerate(prefixes):
            padded[row, : len(prefix)] = prefix
        lengths = np.array([len(p) for p in prefixes] + [1] * (ROWS - len(prefixes)), np.int32)
        out = _teacher_forced_lprobs(graphdef, state, jnp.asarray(padded), jnp.asarray(lengths), rows)
        return np.asarray(out)[: len(prefixes)]

    return next_lprobs


def assert_same(result, sentence: int, expected: list[Hypothesis], beam_size: int) -> None:
    tokens = np.asarray(result.tokens[sentence])
    scores, lengths = np.asarray(result.scores[sentence]), np.asarray(result.lengths[sentence])
    positional, finished = np.asarray(result.token_scores[sentence]), np.asarray(result.finished[sentence])
    assert finished.sum() == len(expected)
    for slot, hyp in enumerate(expected):
        assert tokens[slot, : lengths[slot]].tolist() == hyp.tokens, f"slot {slot}"
        assert np.all(tokens[slot, lengths[slot] :] == PAD)
        np.testing.assert_allclose(scores[slot], hyp.score, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(positional[slot, : lengths[slot]], hyp.positional, rtol=1e-5, atol=1e-5)
        assert np.all(positional[slot, lengths[slot] :] == 0)
    assert np.all(~finished[len(expected) :]) and np.all(np.isneginf(scores[len(expected) :]))
    assert len(expected) <= beam_size


# ---------------------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------------------


# first_cache_phase 4: the cache grows from 4 to 8 to MAX_LEN + 1 = 13 positions during the search.
@pytest.mark.parametrize("size, first_cache_phase", [("micro", 0), ("micro", 4), ("ofa_tiny", 4)])
def test_jitted_search_equals_the_eager_reference(size, first_cache_phase):
    """30 random inputs in all: 5 settings x 2 sentences per case."""
    model = random_model(size)
    lengths_seen = set()
    for case, (beam, min_len, ngram, lenpen, unk) in enumerate(CASES[size]):
        src, images = random_inputs(model.cfg.vocab_size, BATCH, seed=100 * case + len(size))
        enc = encode(model, src, images)
        options = dict(
            beam_size=beam, max_len=MAX_LEN, min_len=min_len, no_repeat_ngram_size=ngram,
            length_penalty=lenpen, unk_penalty=unk,
        )  # fmt: skip
        result = beam_search(model, enc, **options, first_cache_phase=first_cache_phase)
        for sentence in range(BATCH):
            expected = reference_search(jax_lprobs(model, enc, sentence), **options)
            assert_same(result, sentence, expected, beam)
            lengths_seen |= {len(h.tokens) for h in expected}
    # The settings exercise early EOS as well as the forced EOS at max_len.
    assert min(lengths_seen) <= 4 and MAX_LEN + 1 in lengths_seen


def test_the_eager_reference_on_the_pytorch_model_gives_the_same_tokens():
    torch = pytest.importorskip("torch")
    from imtcxr_jax.convert.state_dict import export_ofa_state_dict
    from tests.models.test_parity_torch import reference_config
    from tests.reference.ofa_torch import OFAReference

    model = random_model("micro", seed=1)
    reference = OFAReference(reference_config(model.cfg)).eval()
    reference.load_state_dict(
        {k: torch.tensor(np.asarray(v)) for k, v in export_ofa_state_dict(model).items()}
    )
    for case, (beam, min_len, ngram, lenpen, unk) in enumerate([(3, 1, 3, 1.0, 0.0), (1, 2, 2, 1.0, 0.0)]):
        src, images = random_inputs(model.cfg.vocab_size, BATCH, seed=7 + case)
        options = dict(
            beam_size=beam, max_len=MAX_LEN, min_len=min_len, no_repeat_ngram_size=ngram,
            length_penalty=lenpen, unk_penalty=unk,
        )  # fmt: skip
        result = beam_search(model, encode(model, src, images), **options)
        with torch.no_grad():
            enc = reference.encode(
                torch.from_numpy(src).long(), torch.from_numpy(images.transpose(0, 3, 1, 2)), None
            )
        for sentence in range(BATCH):
            rows = {name: value[sentence : sentence + 1] for name, value in enc.items()}

            def next_lprobs(prefixes, rows=rows):
                with torch.no_grad():
                    tiled = {name: v.expand(len(prefixes), *v.shape[1:]) for name, v in rows.items()}
                    logits = reference.decode(torch.tensor(prefixes), tiled)[:, -1].float()
                    return torch.log_softmax(logits, dim=-1).numpy()

            assert_same(result, sentence, reference_search(next_lprobs, **options), beam)


def test_decode_batch_encodes_then_searches_and_settings_do_not_recompile():
    model = random_model("micro")
    src, images = random_inputs(model.cfg.vocab_size, BATCH, seed=3)
    direct = beam_search(model, encode(model, src, images), beam_size=3, max_len=MAX_LEN)
    compiled = _search._cache_size()
    for options in [dict(min_len=3, no_repeat_ngram_size=2), dict(length_penalty=0.3, unk_penalty=1.0)]:
        beam_search(model, encode(model, src, images), beam_size=3, max_len=MAX_LEN, **options)
    assert _search._cache_size() == compiled  # min_len, n <= 4, lenpen and unk penalty are traced
    batched = decode_batch(model, src, images, beam_size=3, max_len=MAX_LEN)
    for field in ("tokens", "lengths", "finished"):
        np.testing.assert_array_equal(getattr(batched, field), getattr(direct, field))
    np.testing.assert_allclose(batched.scores, direct.scores, rtol=1e-6)


# Inputs whose answers all end before max_len: after 7 steps and after 12 (in the second and the third
# cache phase with a first phase of 4 positions).
@pytest.mark.parametrize("first_cache_phase", [0, 4])
@pytest.mark.parametrize("beam, seed, steps", [(1, 9, 7), (3, 6, 12)])
def test_the_loop_stops_as_soon_as_every_sentence_is_finished(beam, seed, steps, first_cache_phase):
    model = random_model("micro")
    src, images = random_inputs(model.cfg.vocab_size, BATCH, seed=seed)
    enc = encode(model, src, images)
    result = beam_search(model, enc, beam_size=beam, max_len=MAX_LEN, first_cache_phase=first_cache_phase)
    assert result.tokens.shape == (BATCH, beam, MAX_LEN + 1)
    assert np.all(np.asarray(result.finished))
    # Step t finalises answers of t + 1 tokens, so the last answer's length is the number of steps run.
    assert int(result.steps) == int(result.lengths.max()) == steps < MAX_LEN + 1


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 6])
def test_dense_ngram_blocking_equals_the_table_of_seen_ngrams(n):
    rng = np.random.default_rng(n)
    width, vocab = 14, 9
    tokens = np.full((6, width), PAD, np.int32)
    tokens[:, 0] = BOS
    tokens[:, 1:] = rng.integers(4, 7, (6, width - 1))  # 3 symbols: many repeats
    blocked = jax.jit(_ngram_bans, static_argnums=(3, 4))
    for t in range(width - 1):
        history = np.where(np.arange(width) <= t, tokens, PAD)  # positions > t are not written yet
        got = np.asarray(blocked(jnp.asarray(history), jnp.int32(t), jnp.int32(n), max(4, n), vocab))
        for row in range(6):
            expected = set(seen_ngram_bans(history[row, : t + 1].tolist(), n))
            assert set(np.flatnonzero(got[row]).tolist()) == expected, (n, t, row)


def test_the_reference_candidate_selection_is_a_stable_sort():
    rng = np.random.default_rng(0)
    for _ in range(50):
        scores = rng.integers(-3, 3, 40).astype(np.float32)  # many ties
        scores[rng.random(40) < 0.5] = -np.inf
        for count in (1, 6, 10):
            expected = np.argsort(-scores, kind="stable")[:count]
            np.testing.assert_array_equal(top_candidates(scores, count), expected)


@pytest.mark.parametrize("vocab", [2, 5, 37])
def test_two_stage_candidates_equal_one_stable_sort_of_all_scores(vocab):
    # Many ties and -inf rows: the per-hypothesis then per-sentence top-k must pick exactly the flat
    # stable order (score descending, then flat index beam * V + token ascending).
    rng = np.random.default_rng(vocab)
    batch, k, n = 3, 4, 8
    for _ in range(20):
        scores = rng.integers(-2, 2, (batch, k, vocab)).astype(np.float32)
        scores[rng.random((batch, k, vocab)) < 0.4] = -np.inf
        scores[:, 1:][rng.random(batch) < 0.3] = -np.inf  # a sentence where only beam 0 competes
        best, beams, tokens = _top_candidates(jnp.asarray(scores), n)
        for b in range(batch):
            flat = np.argsort(-scores[b].reshape(-1), kind="stable")[:n]
            np.testing.assert_array_equal(np.asarray(beams[b]) * vocab + np.asarray(tokens[b]), flat)
            np.testing.assert_array_equal(np.asarray(best[b]), scores[b].reshape(-1)[flat])


@pytest.mark.parametrize("vocab", [9, 40, 43, 150])
def test_chunked_row_top_k_equals_one_stable_sort_of_the_row(vocab):
    # Chunks of 4 columns: 9 columns is a flat top-k, 40 has no tail, 43 and 150 have one. Few distinct
    # values and many -inf, so that ties decide most places.
    rng = np.random.default_rng(vocab)
    for _ in range(20):
        values = rng.integers(-3, 3, (6, vocab)).astype(np.float32)
        values[rng.random((6, vocab)) < 0.5] = -np.inf
        values[0] = -np.inf
        for n in (1, 3, 8):
            best, columns = _row_top_k(jnp.asarray(values), n, chunk=4)
            for row in range(6):
                expected = np.argsort(-values[row], kind="stable")[:n]
                np.testing.assert_array_equal(np.asarray(columns[row]), expected)
                np.testing.assert_array_equal(np.asarray(best[row]), values[row, expected])


@pytest.mark.parametrize("t", [0, 1, 5, 6])
def test_candidates_from_logits_equal_those_of_the_full_log_softmax(t):
    """The unconstrained search ranks each row's logits instead of writing the (B*K, V) log-probabilities:
    same candidates, same scores, with NaN rows, UNK penalty, min_len, n-gram bans and the forced EOS. (The
    scores to float rounding: the search sums a row's exponentials in another order than log_softmax.)"""
    rng = np.random.default_rng(t)
    batch, k, vocab, max_len = 3, 3, 50, 6
    # Tokens from a small range so that n-grams repeat; distinct logits (no exact ties to break).
    tokens = np.concatenate([np.zeros((batch * k, 1)), rng.integers(4, 8, (batch * k, max_len + 1))], 1)
    options = dict(
        min_len=jnp.int32(2), max_len=max_len, unk_penalty=jnp.float32(0.7),
        no_repeat_ngram_size=jnp.int32(2), ngram_bound=4,
    )  # fmt: skip
    for trial in range(10):
        logits = rng.permutation(vocab * batch * k).reshape(batch * k, vocab).astype(np.float32) / 40
        logits[:, UNK] += 2.0  # UNK often among the best, so that its penalty matters
        if trial % 3 == 0:
            logits[4, 7] = np.nan
        previous = np.where(t > 0, rng.normal(-3, 1, batch * k), 0).astype(np.float32)
        previous[5] = -np.inf
        args = (jnp.asarray(tokens, jnp.int32), jnp.int32(t))
        lprobs = _process_lprobs(jax.nn.log_softmax(jnp.asarray(logits), axis=-1), *args, **options)
        expected = _candidates_from_lprobs(lprobs, jnp.asarray(previous), jnp.int32(t), k)
        got = _candidates_from_logits(jnp.asarray(logits), jnp.asarray(previous), *args, k, **options)
        finite = np.isfinite(np.asarray(expected[0]))
        np.testing.assert_array_equal(np.isfinite(got[0]), finite)  # the same -inf
        np.testing.assert_allclose(np.asarray(got[0])[finite], np.asarray(expected[0])[finite], rtol=1e-6)
        for field in (1, 2):  # beams and tokens of the finite candidates (-inf fillers are never used)
            np.testing.assert_array_equal(np.asarray(got[field])[finite], np.asarray(expected[field])[finite])


def test_log_prob_processing_of_spec_14_2_b_c():
    lp = jnp.log(jnp.full((2, 8), 1 / 8, jnp.float32)).at[1, 5].set(jnp.nan)
    tokens = jnp.array([[BOS, 4, 5], [BOS, 4, 6]], jnp.int32)
    kwargs = dict(unk_penalty=jnp.float32(0.5), no_repeat_ngram_size=jnp.int32(0), ngram_bound=0)
    early = np.asarray(_process_lprobs(lp, tokens, jnp.int32(0), min_len=jnp.int32(1), max_len=4, **kwargs))
    assert np.isneginf(early[:, EOS]).all() and np.isneginf(early[:, PAD]).all()
    assert np.isneginf(early[1, 5]) and np.isfinite(early[0, 5])  # NaN -> -inf
    np.testing.assert_allclose(early[:, UNK], np.log(1 / 8) - 0.5, rtol=1e-6)
    last = np.asarray(_process_lprobs(lp, tokens, jnp.int32(4), min_len=jnp.int32(1), max_len=4, **kwargs))
    assert np.isfinite(last[:, EOS]).all() and np.isneginf(np.delete(last, EOS, axis=1)).all()


def test_bad_arguments_are_named():
    model = random_model("micro")
    enc = encode(model, *random_inputs(model.cfg.vocab_size, 1, seed=0))
    for options, message in [
        (dict(beam_size=0), "beam_size"),
        (dict(max_len=0), "max_len"),
        (dict(min_len=5, max_len=4), "min_len"),
        (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size"),
        (dict(max_len=model.cfg.max_target_positions), "max_target_positions"),
        (dict(beam_size=model.cfg.vocab_size), "beam_size"),
        (dict(max_len=MAX_LEN, first_cache_phase=-1), "first_cache_phase"),
    ]:
        with pytest.raises(ValueError, match=message):
            beam_search(model, enc, **options)
    with pytest.raises(ValueError, match="src_tokens"):
        decode_batch(model, np.array([[0, model.cfg.vocab_size, 2]]), np.zeros((1, 32, 32, 3), np.float32))


def test_cache_phases_double_up_to_the_positions_and_start_with_large_caches_only():
    assert cache_phases(96, 32) == [32, 64, 96]
    assert cache_phases(201, 32) == [32, 64, 128, 201]
    assert cache_phases(13, 4) == [4, 8, 13]
    assert cache_phases(32, 32) == [32] and cache_phases(5, 8) == [5]
    assert cache_phases(129, 32) == [32, 64, 129]  # no phase of a step or two
    assert cache_phases(33, 32) == [33]
    assert cache_phases(48, 32) == [32, 48] and cache_phases(47, 32) == [47]
    assert cache_phases(13, 0) == [13]
    model = random_model("micro")
    enc = encode(model, *random_inputs(model.cfg.vocab_size, BATCH, seed=0))
    cache = model.init_cache(enc, MAX_LEN + 1)  # the plain layout: one row per sentence and position
    per_hypothesis = sum(a.nbytes for a in (*cache.self_keys, *cache.self_values))
    assert _self_cache_bytes(model.cfg, enc, 3, MAX_LEN) == 3 * per_hypothesis
    # The automatic choice: one phase for this small cache, the same search as first_cache_phase=0.
    automatic = beam_search(model, enc, beam_size=3, max_len=MAX_LEN)
    compiled = _search._cache_size()
    beam_search(model, enc, beam_size=3, max_len=MAX_LEN, first_cache_phase=0)
    assert _search._cache_size() == compiled
    assert np.asarray(automatic.finished).all()
