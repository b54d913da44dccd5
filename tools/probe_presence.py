"""Presence probe: how fast does a model config learn "is X in this image?" for several labels at once?

The main job's classification bar fails because the model does not condition its answer on the label asked
about (README, "What it gives today"). This probe isolates that: it trains a fresh model on presence questions
only and prints the held-out AUC per label every 50 steps, next to a baseline that cannot fail to bind, the
same ResNet trunk with one linear head per label (`--trunk-only`).

    .venv/bin/python tools/probe_presence.py --data runs/phantom_tiny/data --tokenizer runs/phantom_tiny/tokenizer.json
    .venv/bin/python tools/probe_presence.py ... --questions all --config.learning_rate=3e-4
    .venv/bin/python tools/probe_presence.py ... --trunk-only

--data holds train/ and eval/ phantom folders (a main-job workdir's data/, or `imtcxr data phantom` output);
--config.KEY=VALUE overrides configs/phantom_tiny.py as for `imtcxr train`. No augmentation, batch 32, warm-up
20 steps. About 3 minutes for 300 steps on 2 cores.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root

LABELS = ("cardiomegaly", "pleural effusion", "pneumothorax", "nodule")


def main(argv: list[str] | None = None) -> None:
    import dataclasses

    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx
    from sklearn.metrics import roc_auc_score

    from imtcxr_jax.data.pipeline import ExampleMaker, PipelineConfig
    from imtcxr_jax.data.sources import ExampleRef, classification_examples, load_records
    from imtcxr_jax.models.config import ModelConfig
    from imtcxr_jax.models.imtcxr import create_model
    from imtcxr_jax.tasks.common import Task
    from imtcxr_jax.text.tokenizer import BOS_ID, load_tokenizer
    from imtcxr_jax.train.experiment import load_config
    from imtcxr_jax.train.optimizer import make_optimizer
    from imtcxr_jax.train.steps import create_train_state, train_step

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with train/ and eval/")
    parser.add_argument("--tokenizer", type=Path, required=True, help="a workdir's tokenizer.json")
    parser.add_argument("--questions", choices=("sampled", "all"), default="sampled")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--trunk-only", action="store_true", help="ResNet trunk + a linear head per label")
    args, overrides = parser.parse_known_args(argv)
    config = load_config(Path(__file__).resolve().parents[1] / "configs/phantom_tiny.py", overrides)
    config.warmup_steps, config.total_steps = 20, args.steps
    tokenizer = load_tokenizer(args.tokenizer)
    cfg = ModelConfig.from_dict({**config.model.to_dict(), "vocab_size": tokenizer.vocab_size})
    pipeline_config = dataclasses.replace(PipelineConfig.from_config(config.data), augment=False)
    train, _ = load_records(args.data / "train")
    held_out, _ = load_records(args.data / "eval")
    if args.questions == "all":
        train_refs = [
            ExampleRef(i, Task.PRESENCE.value, label, label in r.labels)
            for i, r in enumerate(train)
            for label in LABELS
        ]
    else:
        train_refs = [e for e in classification_examples(train) if e.task == Task.PRESENCE.value]
    eval_refs = [
        ExampleRef(i, Task.PRESENCE.value, label, label in r.labels)
        for i, r in enumerate(held_out)
        for label in LABELS
    ]

    def arrays(records, folder, refs):
        maker = ExampleMaker(records, folder, tokenizer, pipeline_config, augment_images=False)
        maker.target_lengths = {"classification": 16}
        built = [maker.sample(ref).arrays for ref in refs]
        return {key: np.stack([b[key] for b in built]) for key in built[0]}

    train_arrays = arrays(train, args.data / "train", train_refs)
    eval_arrays = arrays(held_out, args.data / "eval", eval_refs)
    rng = np.random.default_rng(0)

    def report(step: int, loss: float, scores: np.ndarray, started: float) -> None:
        aucs = {}
        for label in LABELS:
            rows = [k for k, ref in enumerate(eval_refs) if ref.subject == label]
            truth = [eval_refs[k].flag for k in rows]
            if 0 < sum(truth) < len(truth):
                aucs[label] = round(float(roc_auc_score(truth, scores[rows])), 3)
        print(step, f"loss {loss:.3f}", aucs, f"{time.time() - started:.0f}s", flush=True)

    started = time.time()
    if args.trunk_only:
        from imtcxr_jax.models.resnet import ResNetTrunk

        class TrunkClassifier(nnx.Module):
            def __init__(self, rngs: nnx.Rngs):
                self.trunk = ResNetTrunk(cfg, rngs=rngs)
                self.head = nnx.Linear(cfg.image_feature_dim, len(LABELS), rngs=rngs)

            def __call__(self, images, train: bool):
                return self.head(self.trunk(images, train=train).mean(axis=(1, 2)))

        # One image per record, a 0/1 target per label.
        images = arrays(
            train, args.data / "train", [ExampleRef(i, Task.DISEASES.value) for i in range(len(train))]
        )
        targets = np.array([[label in r.labels for label in LABELS] for r in train], np.float32)
        eval_images = eval_arrays["images"][:: len(LABELS)]
        net = TrunkClassifier(nnx.Rngs(0))
        optimizer = nnx.Optimizer(net, optax.adamw(config.learning_rate, weight_decay=0.01), wrt=nnx.Param)

        @nnx.jit
        def step(net, optimizer, x, y):
            def loss_fn(net):
                return optax.sigmoid_binary_cross_entropy(net(x, True), y).mean()

            loss, grads = nnx.value_and_grad(loss_fn)(net)
            optimizer.update(net, grads)
            return loss

        predict = nnx.jit(lambda net, x: net(x, False))
        for k in range(args.steps):
            pick = rng.choice(len(targets), 32, replace=False)
            loss = step(net, optimizer, jnp.asarray(images["images"][pick]), jnp.asarray(targets[pick]))
            if (k + 1) % 50 == 0:
                chunks = [eval_images[i : i + 50] for i in range(0, len(eval_images), 50)]
                logits = np.concatenate([np.asarray(predict(net, jnp.asarray(c))) for c in chunks])
                report(k + 1, float(loss), logits.reshape(-1), started)  # image-major, label-minor
        return

    optimizer = make_optimizer(config)
    graphdef, state = create_train_state(create_model(cfg, seed=0), optimizer, 0)
    step = jax.jit(functools.partial(train_step, graphdef=graphdef, optimizer=optimizer))
    yes, no = tokenizer.encode(" yes")[0], tokenizer.encode(" no")[0]

    @jax.jit
    def p_yes(state, src, images):
        model = nnx.merge(graphdef, state.params, state.model_state)
        encoded = model.encode(src, images)
        logits = model.decode(jnp.full((src.shape[0], 1), BOS_ID, jnp.int32), encoded)[:, 0]
        return jax.nn.sigmoid(logits[:, yes] - logits[:, no])

    def held_out_scores(state) -> np.ndarray:
        chunks = []
        for i in range(0, len(eval_refs), 64):
            src, images = (jnp.asarray(eval_arrays[key][i : i + 64]) for key in ("src", "images"))
            chunks.append(np.asarray(p_yes(state, src, images)))
        return np.concatenate(chunks)

    for k in range(args.steps):
        pick = rng.choice(len(train_refs), 32, replace=False)
        state, metrics = step(state, {key: jnp.asarray(value[pick]) for key, value in train_arrays.items()})
        if (k + 1) % 50 == 0:
            report(k + 1, float(metrics["loss"]), held_out_scores(state), started)


if __name__ == "__main__":
    main()
