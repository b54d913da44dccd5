"""Optimizer and learning-rate schedule (spec §1.4 for the original's choices; DESIGN decision 6 for ours).

AdamW (β 0.9 / 0.999, eps 1e-8, decoupled weight decay) after global-norm clipping. The schedule warms up
linearly from `warmup_init_lr` to `learning_rate`, then decays with a cosine (ours) or linearly to
`end_learning_rate` ("polynomial", power 1, what the original's fairseq run used).
"""

from __future__ import annotations

import ml_collections
import optax


def learning_rate_schedule(cfg: ml_collections.ConfigDict) -> optax.Schedule:
    """Warm-up then decay over `total_steps` (optimizer updates, i.e. after gradient accumulation)."""
    total = int(cfg.total_steps)
    warmup = int(cfg.warmup_steps)
    if total < 1 or not 0 <= warmup <= total:
        raise ValueError(
            f"config: got total_steps={total}, warmup_steps={warmup}; expected 0 <= warmup <= total >= 1"
        )
    warm = optax.linear_schedule(cfg.warmup_init_lr, cfg.learning_rate, max(warmup, 1))
    if cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(
            cfg.learning_rate, max(total - warmup, 1), cfg.end_learning_rate / cfg.learning_rate
        )
    elif cfg.schedule == "polynomial":
        decay = optax.polynomial_schedule(
            cfg.learning_rate, cfg.end_learning_rate, 1.0, max(total - warmup, 1)
        )
    elif cfg.schedule == "constant":
        decay = optax.constant_schedule(cfg.learning_rate)
    else:
        raise ValueError(
            f"config.schedule: got {cfg.schedule!r}, expected 'cosine', 'polynomial' or 'constant'"
        )
    return optax.join_schedules([warm, decay], [warmup])


def make_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Clipping (if `clip_norm` > 0) then AdamW with the schedule. Weight decay applies to every parameter,
    as in the original (fairseq's Adam decays all parameters, LayerNorm and biases included)."""
    adamw = optax.adamw(
        learning_rate_schedule(cfg),
        b1=cfg.adam_b1,
        b2=cfg.adam_b2,
        eps=cfg.adam_eps,
        weight_decay=cfg.weight_decay,
    )
    if cfg.clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw)
    return adamw
