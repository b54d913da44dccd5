"""Pure training functions: the token loss, the train state, and one optimizer step.

A batch is a dict of arrays (global batch B, instruction length L, target length T):
  src (B, L) int32 right-padded instruction ids · images (B, H, W, 3) float32 · prev (B, T) int32 = [BOS] +
  target · target (B, T) int32 = target + [EOS], PAD elsewhere · task (B,) int32 task family index.
The step is a pure function of (state, batch); the loop jits it with explicit shardings.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from imtcxr_jax.models.imtcxr import PAD_ID
from imtcxr_jax.models.layers import Keys
from imtcxr_jax.tasks.common import TASK_FAMILIES
from imtcxr_jax.text.coords import NUM_BINS
from imtcxr_jax.text.tokenizer import EOS_ID


def token_losses(
    logits: jax.Array,
    targets: jax.Array,
    label_smoothing: float = 0.0,
    bin_sigma: float = 0.0,
    num_bins: int = NUM_BINS,
) -> jax.Array:
    """Per-token loss (B, T) of logits (B, T, V), zero on padding. Computed in float32.

    Spec §13: (1 - ε - ε_i)·NLL + ε_i·(-Σ_v log p_v), ε_i = ε/(V-1); plain NLL when ε = 0.

    ``bin_sigma`` > 0 (ours; 0 is the original's loss): a target that is a location bin ``<bin_k>`` (the last
    ``num_bins`` ids) is scored against a Gaussian over the bins, w_j ∝ exp(-(j - k)² / 2σ²), renormalised
    within [0, num_bins), instead of against ``<bin_k>`` alone: NLL becomes -Σ_j w_j log p(<bin_j>). A guess a
    few bins off then costs less than one far off, and each bin's (tied) embedding learns from its
    neighbours' targets too, which a small training budget needs: a 1000-way answer per coordinate otherwise
    sees each bin a handful of times. The loss then has a floor (the Gaussian's entropy, ~log(σ·4.13) nats).

    Each token's loss is -Σ_v q_v log p_v for a target distribution q of mass 1 (one-hot or Gaussian,
    mixed with ε_i everywhere), so its gradient is p - q. The backward pass computes exactly that in one
    pass over the logits (`_token_losses_backward`); autodiff of the log-softmax took three times as long
    on a CPU, most of it writing the gradient in the transposed layout of the next matrix product.
    """
    return _token_losses(logits.astype(jnp.float32), targets, label_smoothing, bin_sigma, num_bins)


def _token_losses_parts(logits, targets, label_smoothing, bin_sigma, num_bins):
    """(losses (B, T), log-sum-exp (B, T), the bin Gaussians' normalisers (B, T) or None)."""
    vocab = logits.shape[-1]
    peak = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    log_sum_exp = (peak + jnp.log(jnp.sum(jnp.exp(logits - peak), axis=-1, keepdims=True)))[..., 0]
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]  # Σ_v q_v z_v, one-hot q
    normaliser = None
    if bin_sigma > 0.0:
        first_bin = vocab - num_bins
        k = targets - first_bin  # (B, T): the bin index, negative for text tokens
        gaussian = _bin_gaussian(jnp.arange(num_bins), jnp.maximum(k, 0)[..., None], bin_sigma)
        normaliser = jnp.sum(gaussian, axis=-1)
        soft_logit = jnp.sum(gaussian * logits[..., first_bin:], axis=-1) / normaliser
        target_logit = jnp.where(k >= 0, soft_logit, target_logit)
    nll = log_sum_exp - target_logit
    if label_smoothing > 0.0:
        eps_i = label_smoothing / (vocab - 1)
        smooth = vocab * log_sum_exp - jnp.sum(logits, axis=-1)  # -Σ_v log p_v
        nll = (1.0 - label_smoothing - eps_i) * nll + eps_i * smooth
    return jnp.where(targets != PAD_ID, nll, 0.0), log_sum_exp, normaliser


def _bin_gaussian(bins: jax.Array, centre: jax.Array, sigma: float) -> jax.Array:
    """The unnormalised weights exp(-(j - k)² / 2σ²) of bins j around centre k (broadcast)."""
    return jnp.exp(-0.5 * jnp.square((bins - centre).astype(jnp.float32) / sigma))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _token_losses(logits, targets, label_smoothing, bin_sigma, num_bins):
    return _token_losses_parts(logits, targets, label_smoothing, bin_sigma, num_bins)[0]


def _token_losses_forward(logits, targets, label_smoothing, bin_sigma, num_bins):
    losses, log_sum_exp, normaliser = _token_losses_parts(
        logits, targets, label_smoothing, bin_sigma, num_bins
    )
    return losses, (logits, targets, log_sum_exp, normaliser)


def _token_losses_backward(label_smoothing, bin_sigma, num_bins, residuals, cotangent):
    """d loss / d logits = cotangent · (softmax(logits) - q), zero on padding; q as in the forward pass."""
    logits, targets, log_sum_exp, normaliser = residuals
    vocab = logits.shape[-1]
    column = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    q = (column == targets[..., None]).astype(jnp.float32)
    if bin_sigma > 0.0:
        first_bin = vocab - num_bins
        k = (targets - first_bin)[..., None]
        gaussian = _bin_gaussian(column - first_bin, k, bin_sigma) / normaliser[..., None]
        q = jnp.where(k >= 0, jnp.where(column >= first_bin, gaussian, 0.0), q)
    if label_smoothing > 0.0:
        eps_i = label_smoothing / (vocab - 1)
        q = (1.0 - label_smoothing - eps_i) * q + eps_i
    cotangent = jnp.where(targets != PAD_ID, cotangent, 0.0)[..., None]
    return cotangent * (jnp.exp(logits - log_sum_exp[..., None]) - q), None


_token_losses.defvjp(_token_losses_forward, _token_losses_backward)


def answer_weights(
    targets: jax.Array,
    first_token_weight: float = 1.0,
    first_tokens: int = 1,
    weighted_rows: jax.Array | None = None,
) -> jax.Array:
    """Per-token loss weights (B, T): ``first_token_weight`` on each target's first ``first_tokens`` tokens
    (EOS excepted: it commits to nothing) in the rows where ``weighted_rows`` (B,) bool is set (default: all),
    1 on the others, 0 on padding. The loss is the weighted mean over the batch's tokens; all 1 is the
    original's token mean.

    Why (ours; 1.0 is the original): the first token is where an answer commits to what was asked. A
    polygon's first x bin decides *which* lung is drawn, a box's which finding is boxed, a yes/no answer's
    word whether the finding asked about is there. Teacher forcing then hands the model the right start, so
    a polygon's 60 other tokens teach shape, not the instruction: in a token mean that choice is 1/61 of a
    segmentation batch, and a short run learns to draw one lung whichever is asked for. Its second token,
    the first point's y bin, places the whole outline vertically in the same way (``first_tokens`` 2).
    """
    leading = (jnp.arange(targets.shape[-1]) < first_tokens) & (targets != EOS_ID)
    if weighted_rows is not None:
        leading &= weighted_rows[:, None]
    weights = jnp.where(leading, jnp.float32(first_token_weight), jnp.float32(1.0))
    return jnp.where(targets != PAD_ID, weights, 0.0)


@struct.dataclass
class LossScale:
    """Dynamic loss scaling for float16: the scale halves on overflow and doubles after `period` good steps."""

    scale: jax.Array  # () float32
    good_steps: jax.Array  # () int32
    period: int = struct.field(pytree_node=False, default=2000)

    @classmethod
    def create(cls, initial: float = 2.0**7, period: int = 2000) -> LossScale:  # fairseq fp16-init-scale 128
        return cls(jnp.asarray(initial, jnp.float32), jnp.zeros((), jnp.int32), period)

    def update(self, finite: jax.Array) -> LossScale:
        grow = finite & (self.good_steps + 1 >= self.period)
        scale = jnp.where(
            finite, jnp.where(grow, self.scale * 2.0, self.scale), jnp.maximum(self.scale / 2.0, 1.0)
        )
        good = jnp.where(finite & ~grow, self.good_steps + 1, 0)
        return self.replace(scale=scale, good_steps=good)


@struct.dataclass
class TrainState:
    step: jax.Array  # () int32, optimizer updates applied or skipped so far
    params: nnx.State  # trainable parameters (float32 master copy)
    model_state: nnx.State  # everything else: BatchNorm running statistics, frozen buffers
    opt_state: Any
    rng: jax.Array  # dropout / drop-path key, split every step
    skipped_steps: jax.Array  # () int32, steps whose update was skipped (non-finite loss or gradients)
    loss_scale: LossScale | None = None  # float16 only


def create_train_state(
    model: nnx.Module, optimizer: optax.GradientTransformation, seed: int, *, float16: bool = False
) -> tuple[nnx.GraphDef, TrainState]:
    graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=model_state,
        opt_state=optimizer.init(params),
        rng=jax.random.key_data(jax.random.key(seed)),
        skipped_steps=jnp.zeros((), jnp.int32),
        loss_scale=LossScale.create() if float16 else None,
    )
    return graphdef, state


def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    accumulation_steps: int = 1,
    label_smoothing: float = 0.0,
    bin_sigma: float = 0.0,
    first_token_weight: float = 1.0,
    first_tokens: int = 1,
    first_token_families: tuple[str, ...] = (),
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update from `accumulation_steps` micro-batches of `batch`. The loss is the token-mean over
    all target tokens of the whole batch (fairseq's sample_size = ntokens; weighted by `answer_weights` when
    `first_token_weight` != 1 on the first `first_tokens` tokens of the answers of `first_token_families`,
    default all, the per-family log losses too). A non-finite loss or gradient
    leaves parameters, optimizer state and statistics untouched and is counted in `skipped_steps`."""
    rng, step_key = jax.random.split(jax.random.wrap_key_data(state.rng))
    scale = state.loss_scale.scale if state.loss_scale is not None else jnp.float32(1.0)
    batch_size = batch["src"].shape[0]
    if batch_size % accumulation_steps:
        raise ValueError(
            f"batch size {batch_size} is not divisible by accumulation_steps={accumulation_steps}"
        )
    micro = jax.tree.map(lambda x: x.reshape(accumulation_steps, -1, *x.shape[1:]), batch)
    keys = jax.random.split(step_key, accumulation_steps)

    def weights_of(b: dict[str, jax.Array]) -> jax.Array:
        rows = None
        if first_token_families:
            rows = jnp.isin(b["task"], jnp.asarray([TASK_FAMILIES.index(f) for f in first_token_families]))
        return answer_weights(b["target"], first_token_weight, first_tokens, rows)

    def loss_fn(params, model_state, mb, key):
        # copy=True: fresh Variables at this trace level (the inputs belong to the enclosing scan/grad traces).
        model = nnx.merge(graphdef, params, model_state, copy=True)
        logits = model(mb["src"], mb["images"], mb["prev"], train=True, rngs=Keys(dropout=key))
        losses = token_losses(logits, mb["target"], label_smoothing, bin_sigma)
        weights = weights_of(mb)
        per_example = jnp.sum(losses * weights, axis=1)
        _, _, new_model_state = nnx.split(model, nnx.Param, ...)
        return jnp.sum(per_example) * scale, (per_example, new_model_state)

    def accumulate(carry, inputs):
        grads_sum, model_state = carry
        mb, key = inputs
        grads, (per_example, model_state) = jax.grad(loss_fn, has_aux=True)(
            state.params, model_state, mb, key
        )
        return (jax.tree.map(jnp.add, grads_sum, grads), model_state), per_example

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    if accumulation_steps == 1:  # no loop: XLA optimises a plain body much better than a one-trip scan
        first = jax.tree.map(lambda x: x[0], (micro, keys))
        (grads, model_state), per_example = accumulate((zeros, state.model_state), first)
    else:
        (grads, model_state), per_example = jax.lax.scan(
            accumulate, (zeros, state.model_state), (micro, keys)
        )
    per_example = per_example.reshape(batch_size)
    tokens = jnp.sum(batch["target"] != PAD_ID)
    example_weight = jnp.sum(weights_of(batch), axis=1)  # (B,)
    total_weight = jnp.maximum(jnp.sum(example_weight), 1)  # the token count when every weight is 1
    grads = jax.tree.map(lambda g: g / (scale * total_weight), grads)
    loss = jnp.sum(per_example) / total_weight

    finite = jnp.isfinite(loss) & _all_finite(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731

    new_state = state.replace(
        step=state.step + 1,
        params=keep(params, state.params),
        model_state=keep(model_state, state.model_state),
        opt_state=keep(opt_state, state.opt_state),
        rng=jax.random.key_data(rng),
        skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32),
        loss_scale=state.loss_scale.update(finite) if state.loss_scale is not None else None,
    )
    # Per-task-family token losses, for logging.
    task_onehot = jax.nn.one_hot(batch["task"], len(TASK_FAMILIES))
    task_tokens = jnp.sum(task_onehot * example_weight[:, None], axis=0)
    task_loss = jnp.sum(task_onehot * per_example[:, None], axis=0) / jnp.maximum(task_tokens, 1)
    metrics = {
        "loss": loss,
        "tokens": tokens,
        "finite": finite,
        "grad_norm": optax.tree.norm(grads),
        "task_loss": task_loss,
        "task_tokens": task_tokens,
    }
    if state.loss_scale is not None:
        metrics["loss_scale"] = state.loss_scale.scale
    return new_state, metrics


def eval_loss(graphdef: nnx.GraphDef, state: TrainState, batch: dict[str, jax.Array]) -> jax.Array:
    """Token-mean loss of a batch in inference mode (no dropout, BatchNorm running statistics)."""
    model = nnx.merge(graphdef, state.params, state.model_state)
    logits = model(batch["src"], batch["images"], batch["prev"])
    losses = token_losses(logits, batch["target"])
    return jnp.sum(losses) / jnp.maximum(jnp.sum(batch["target"] != PAD_ID), 1)
