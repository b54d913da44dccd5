"""The micro model learns: `loop.train` (what `imtcxr train` runs) on micro phantoms lowers the loss, and the
trained model's held-out report scores beat the same model untrained (its step-0 parameters) on the same
examples. (The main job, configs/phantom_tiny.py, is where every task is shown to learn; README.)"""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from imtcxr_jax.data.pipeline import make_eval_examples
from imtcxr_jax.data.sources import load_records
from imtcxr_jax.evaluate import evaluate
from imtcxr_jax.models.imtcxr import IMTCXR
from imtcxr_jax.text.tokenizer import PAD_ID
from imtcxr_jax.train import loop
from imtcxr_jax.train.experiment import load_config
from imtcxr_jax.train.logging_utils import read_metrics
from imtcxr_jax.train.steps import token_losses

MICRO = Path(__file__).resolve().parents[2] / "configs" / "micro.py"


@pytest.mark.slow
def test_micro_training_lowers_the_loss_and_beats_the_untrained_model(tmp_path):
    # Reports only: one compiled step shape, and the family where 60 micro steps make a large difference.
    overrides = [
        "--config.total_steps=60", "--config.learning_rate=3e-3", "--config.warmup_steps=10",
        "--config.log_every=10", "--config.checkpoint_every=60", "--config.eval_every=25",
        "--config.data.weights.classification=0", "--config.data.weights.localization=0",
        "--config.data.weights.segmentation=0", "--config.data.evidence_fraction=0",
        "--config.data.max_tgt_len=128",
    ]  # fmt: skip
    config = load_config(MICRO, overrides)
    workdir = tmp_path / "run"
    evaluated_at = []

    def evaluate_stub(graphdef, state, eval_set, tokenizer, config):  # the held-out hook, scored below
        evaluated_at.append(int(state.step))
        return {"score": float(state.step)}

    last = loop.train(config, workdir, evaluate_fn=evaluate_stub)
    # Held-out evaluation every eval_every steps and at the last, whose scores come back with its metrics.
    assert evaluated_at == [25, 50, 60]
    assert last["step"] == 60 and last["eval/score"] == 60.0 and "loss" in last
    rows = read_metrics(workdir / "metrics.jsonl")
    assert [row["step"] for row in rows if "eval/score" in row] == [25, 50, 60]

    losses = [row["loss"] for row in rows if "loss" in row]
    assert len(losses) == 6 and losses[-1] < 0.7 * losses[0], losses  # from step 10 on

    trained, tokenizer, config, step = loop.load_trained_model(workdir)
    assert step == 60
    untrained = IMTCXR(trained.cfg, rngs=nnx.Rngs(config.seed))  # what training started from
    records, _ = load_records(workdir / "data" / "eval")
    eval_set = make_eval_examples(
        records,
        workdir / "data" / "eval",
        tokenizer,
        config.data,
        families=("report",),
        report_prompts=("plain",),
    )
    assert len(eval_set) >= 4
    models = {"trained": trained, "untrained": untrained}
    # Held-out token loss (teacher forcing) and the reports each model writes.
    loss = {name: held_out_loss(model, eval_set) for name, model in models.items()}
    assert loss["trained"] < 0.7 * loss["untrained"], loss
    scores = {
        name: evaluate(model, eval_set, tokenizer, per_task=8, max_report_len=96)
        for name, model in models.items()
    }
    assert scores["trained"]["rouge_l"] > scores["untrained"]["rouge_l"] + 0.03, scores


def held_out_loss(model: IMTCXR, eval_set) -> float:
    """Token-mean cross-entropy of the held-out targets, in inference mode."""
    examples = list(eval_set)
    batch = {key: np.stack([e.arrays[key] for e in examples]) for key in ("src", "prev", "target")}
    logits = model(
        jnp.asarray(batch["src"]), jnp.asarray(eval_set.images(examples)), jnp.asarray(batch["prev"])
    )
    losses = token_losses(logits, jnp.asarray(batch["target"]))
    return float(jnp.sum(losses) / np.sum(batch["target"] != PAD_ID))
