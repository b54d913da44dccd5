"""Token-loss benchmark on CPU: `train.steps.token_losses` (its gradient written out, p - q) against autodiff
of the same loss written as a log-softmax (the peer), value and gradient of a weighted sum, jitted.

Run from the repository root (about a minute on 2 cores):

    .venv/bin/python -m tools.bench.loss
    .venv/bin/python -m tools.bench.loss --shapes 32x104x2048 32x64x2048 --label-smoothing 0.1

One JSON line per (shape, option set): ``ours_ms`` and ``autodiff_ms`` (median of `--repeats` calls after a
warm-up), ``speedup``, and how far apart the two are (``value_rel_diff``, ``grad_max_abs_diff``, with
``grad_max_abs`` for scale). Targets mix text tokens, location bins (the last 1000 ids) and padding as the
main job's answers do; ``bin_sigma`` 15 is the main job's setting.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from imtcxr_jax.models.imtcxr import PAD_ID
from imtcxr_jax.text.coords import NUM_BINS
from imtcxr_jax.train.steps import token_losses


def autodiff_losses(logits, targets, label_smoothing: float, bin_sigma: float) -> jax.Array:
    """The loss of `token_losses` as a plain log-softmax formula, left to autodiff (the peer)."""
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    if bin_sigma > 0.0:
        first_bin = logits.shape[-1] - NUM_BINS
        k = targets - first_bin
        distance = jnp.arange(NUM_BINS) - jnp.maximum(k, 0)[..., None]
        weights = jax.nn.softmax(-0.5 * jnp.square(distance / bin_sigma), axis=-1)
        nll = jnp.where(k >= 0, -jnp.sum(weights * log_probs[..., first_bin:], axis=-1), nll)
    if label_smoothing > 0.0:
        eps_i = label_smoothing / (logits.shape[-1] - 1)
        nll = (1.0 - label_smoothing - eps_i) * nll + eps_i * -jnp.sum(log_probs, axis=-1)
    return jnp.where(targets != PAD_ID, nll, 0.0)


def _median_ms(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def bench(shape: tuple[int, int, int], label_smoothing: float, bin_sigma: float, repeats: int) -> dict:
    batch, length, vocab = shape
    rng = np.random.default_rng(0)
    logits = jnp.asarray(3 * rng.standard_normal(shape), jnp.float32)
    targets = rng.integers(4, vocab - NUM_BINS, (batch, length))
    bins = rng.random((batch, length)) < 0.5  # half the tokens are location bins
    targets[bins] = rng.integers(vocab - NUM_BINS, vocab, int(bins.sum()))
    targets[:, -length // 8 :] = PAD_ID
    targets = jnp.asarray(targets, jnp.int32)
    token_weights = jnp.asarray(rng.random((batch, length)), jnp.float32)

    def objective(losses_fn):
        def total(z):
            return jnp.sum(losses_fn(z, targets, label_smoothing, bin_sigma) * token_weights)

        return jax.jit(jax.value_and_grad(total))

    ours, peer = objective(token_losses), objective(autodiff_losses)
    (value, grad), (peer_value, peer_grad) = ours(logits), peer(logits)
    ours_ms = _median_ms(ours, logits, repeats=repeats)
    peer_ms = _median_ms(peer, logits, repeats=repeats)
    return {
        "bench": "token_loss",
        "shape": list(shape),
        "label_smoothing": label_smoothing,
        "bin_sigma": bin_sigma,
        "ours_ms": round(ours_ms, 2),
        "autodiff_ms": round(peer_ms, 2),
        "speedup": round(peer_ms / ours_ms, 2),
        "value_rel_diff": float(abs(value - peer_value) / abs(peer_value)),
        "grad_max_abs_diff": float(jnp.max(jnp.abs(grad - peer_grad))),
        "grad_max_abs": float(jnp.max(jnp.abs(peer_grad))),
        "device": jax.devices()[0].device_kind,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["32x104x2048", "32x64x2048", "32x8x2048"])
    parser.add_argument("--label-smoothing", type=float, nargs="+", default=[0.0])
    parser.add_argument("--bin-sigma", type=float, nargs="+", default=[15.0, 0.0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    for text in args.shapes:
        shape = tuple(int(n) for n in text.split("x"))
        if len(shape) != 3 or shape[2] <= NUM_BINS:
            parser.error(f"--shapes: got {text!r}, expected BxTxV with V > {NUM_BINS}")
        for smoothing in args.label_smoothing:
            for sigma in args.bin_sigma:
                print(json.dumps(bench(shape, smoothing, sigma, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
