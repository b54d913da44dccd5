"""Image-feature reuse (the trunk run once per image) and constrained steps projected onto the allowed rows.

* `encode(src, image_features=encode_images(images))` equals `encode(src, images)`;
* a box (and, greedily, a polygon) search with ``project_allowed=True`` (logits of EOS + the bins only) equals the masked
  full-vocabulary search normalised the same way (``normalize_over="allowed"``): same tokens, same scores;
  greedily it also gives the tokens of the default full-vocabulary normalisation;
* ``normalize_over="allowed"`` is checked against the eager reference of spec §14.2 whose log-probabilities
  are renormalised over the allowed set.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from imtcxr_jax.decoding import BoxConstraint, PhraseConstraint, PolygonConstraint, beam_search
from imtcxr_jax.decoding.beam_search import encode, encode_images
from tests.decoding import random_inputs, random_model
from tests.decoding.test_beam_search import MAX_LEN, assert_same, jax_lprobs, reference_search
from tests.decoding.test_constraints import box_allowed

BATCH, BEAM = 2, 3


def _encoded(model, seed):
    graphdef, state = nnx.split(model)
    src, images = random_inputs(model.cfg.vocab_size, BATCH, seed=seed)
    return graphdef, state, jnp.asarray(src), jnp.asarray(images)


def test_encoding_from_reused_image_features_equals_encoding_from_images():
    model = random_model("micro")
    graphdef, state, src, images = _encoded(model, seed=11)
    direct = encode(graphdef, state, src, images)
    features = encode_images(graphdef, state, images)
    assert features.shape == (BATCH, 2, 2, model.cfg.image_feature_dim)  # 32 px -> a 2x2 grid
    # Each question gathers its image's row of the features, as the workflow does.
    order = jnp.array([1, 0, 1])
    reused = encode(graphdef, state, src[order], image_features=features[order])
    expected = jax.tree.map(lambda a: a[order], direct)
    for got, want in zip(jax.tree.leaves(reused), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="exactly one"):
        model.encode(src, images, image_features=features)
    with pytest.raises(ValueError, match="image_features"):
        model.encode(src, image_features=features[..., :3])


def test_projected_constrained_search_equals_the_masked_full_vocabulary_search():
    model = random_model("micro", seed=2)
    v = model.cfg.vocab_size
    graphdef, state, src, images = _encoded(model, seed=4)
    enc = encode(graphdef, state, src, images)
    # With n-gram blocking mapped into the projected columns (repeated bigrams of bins are banned).
    constraint, ngram = BoxConstraint(vocab_size=v, num_boxes=2), 2
    options = dict(beam_size=BEAM, max_len=MAX_LEN, constraint=constraint, no_repeat_ngram_size=ngram)
    masked = beam_search(model, enc, normalize_over="allowed", **options)
    projected = beam_search(model, enc, normalize_over="allowed", project_allowed=True, **options)
    for field in ("tokens", "lengths", "finished"):
        np.testing.assert_array_equal(
            np.asarray(getattr(projected, field)), np.asarray(getattr(masked, field))
        )
    np.testing.assert_allclose(np.asarray(projected.scores), np.asarray(masked.scores), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(projected.token_scores), np.asarray(masked.token_scores), rtol=1e-5, atol=1e-5
    )
    assert np.all(np.asarray(projected.lengths) == constraint.max_steps + 1)
    # Renormalised over the allowed tokens: the forced EOS (the only allowed token) scores log 1 = 0, and
    # every answer is more probable than under the full vocabulary's normaliser.
    final = np.take_along_axis(
        np.asarray(projected.token_scores), np.asarray(projected.lengths)[..., None] - 1, axis=-1
    )
    np.testing.assert_allclose(final, 0.0, atol=1e-6)
    full = beam_search(model, enc, **options)
    assert np.all(np.asarray(projected.scores)[:, 0] >= np.asarray(full.scores)[:, 0] - 1e-6)


def test_greedy_projected_search_gives_the_tokens_of_the_full_vocabulary_normalisation():
    model = random_model("micro", seed=3)
    graphdef, state, src, images = _encoded(model, seed=8)
    enc = encode(graphdef, state, src, images)
    constraint = PolygonConstraint(vocab_size=model.cfg.vocab_size, num_points=3)
    options = dict(beam_size=1, max_len=6, constraint=constraint, no_repeat_ngram_size=0)
    full = beam_search(model, enc, **options)  # normalised over all V, then masked
    projected = beam_search(model, enc, normalize_over="allowed", project_allowed=True, **options)
    np.testing.assert_array_equal(np.asarray(projected.tokens), np.asarray(full.tokens))


def test_allowed_normalisation_equals_the_eager_reference_renormalised_over_the_allowed_set():
    model = random_model("micro", seed=1)
    v = model.cfg.vocab_size
    graphdef, state, src, images = _encoded(model, seed=5)
    enc = encode(graphdef, state, src, images)
    allowed = box_allowed(2, v)
    options = dict(
        beam_size=BEAM,
        max_len=MAX_LEN,
        min_len=1,
        no_repeat_ngram_size=0,
        length_penalty=1.0,
        unk_penalty=0.0,
    )
    result = beam_search(
        model, enc, constraint=BoxConstraint(vocab_size=v, num_boxes=2), normalize_over="allowed",
        project_allowed=True, **options,
    )  # fmt: skip
    for sentence in range(BATCH):
        full = jax_lprobs(model, enc, sentence)

        def renormalised(prefixes, full=full):
            lp = full(prefixes)
            out = np.full_like(lp, -np.inf)
            for row, prefix in enumerate(prefixes):
                keep = sorted(allowed(prefix[1:]))
                out[row, keep] = lp[row, keep] - np.logaddexp.reduce(lp[row, keep])
            return out

        assert_same(result, sentence, reference_search(renormalised, allowed=allowed, **options), BEAM)


def test_projection_needs_the_allowed_normalisation_and_candidate_ids():
    model = random_model("micro")
    graphdef, state, src, images = _encoded(model, seed=0)
    enc = encode(graphdef, state, src, images)
    v = model.cfg.vocab_size
    with pytest.raises(ValueError, match="normalize_over"):
        beam_search(model, enc, max_len=4, constraint=BoxConstraint(vocab_size=v), project_allowed=True)
    with pytest.raises(ValueError, match="candidate_ids"):
        beam_search(
            model, enc, max_len=4, constraint=PhraseConstraint([[5], [6, 7]], vocab_size=v),
            normalize_over="allowed", project_allowed=True,
        )  # fmt: skip
    with pytest.raises(ValueError, match="normalize_over"):
        beam_search(model, enc, max_len=4, normalize_over="bins")
