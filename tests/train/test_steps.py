"""The train step: loss against a brute-force reference, sharded steps equal to one device, loss scaling."""

import functools
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from imtcxr_jax.models.config import ModelConfig, get_model_config
from imtcxr_jax.sharding import make_mesh
from imtcxr_jax.train.experiment import load_config
from imtcxr_jax.train.optimizer import make_optimizer
from imtcxr_jax.train.partition import (
    abstract_sharded_state,
    batch_sharding,
    compile_ahead,
    init_sharded_state,
    jit_train_step,
)
from imtcxr_jax.train.steps import LossScale, answer_weights, token_losses, train_step

OPTIMIZER = ml_collections.ConfigDict(
    dict(
        total_steps=10, warmup_steps=2, warmup_init_lr=1e-4, learning_rate=1e-3, end_learning_rate=0.0,
        schedule="cosine", adam_b1=0.9, adam_b2=0.999, adam_eps=1e-8, weight_decay=0.01, clip_norm=1.0,
    )
)  # fmt: skip


def make_batch(batch: int = 8, seed: int = 0, vocab: int = 1536):
    rng = np.random.default_rng(seed)
    prev = np.concatenate([np.zeros((batch, 1), np.int32), rng.integers(4, vocab, (batch, 5))], axis=1)
    target = np.concatenate([prev[:, 1:], np.full((batch, 1), 2)], axis=1)
    target[::3, -2:] = 1  # some padded targets
    return {
        "src": rng.integers(4, vocab, (batch, 7)).astype(np.int32),
        "images": rng.standard_normal((batch, 32, 32, 3)).astype(np.float32),
        "prev": prev.astype(np.int32),
        "target": target.astype(np.int32),
        "task": rng.integers(0, 4, batch).astype(np.int32),
    }


def test_token_losses_match_a_brute_force_reference():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 3, 11)).astype(np.float32)
    targets = np.array([[4, 5, 1], [7, 1, 1]])
    for eps in (0.0, 0.1):
        got = np.asarray(token_losses(jnp.asarray(logits), jnp.asarray(targets), eps))
        for b in range(2):
            for t in range(3):
                lp = logits[b, t] - np.log(np.sum(np.exp(logits[b, t].astype(np.float64))))
                eps_i = eps / (11 - 1)
                expected = (1 - eps - eps_i) * -lp[targets[b, t]] + eps_i * -lp.sum()
                expected = 0.0 if targets[b, t] == 1 else expected
                assert got[b, t] == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_bin_smoothed_losses_match_a_brute_force_reference():
    """Bin targets against a Gaussian over the bins (renormalised at the edges); text targets and padding
    as before; the uniform label smoothing mixes in on top."""
    rng = np.random.default_rng(1)
    vocab, num_bins, sigma = 40, 25, 3.0
    first_bin = vocab - num_bins
    logits = rng.standard_normal((2, 4, vocab)).astype(np.float32)
    # bins at the low edge, the middle and the high edge; a text token; padding
    targets = np.array([[first_bin, first_bin + 12, vocab - 1, 7], [first_bin + 1, 5, 1, 1]])
    for eps in (0.0, 0.1):
        got = np.asarray(token_losses(jnp.asarray(logits), jnp.asarray(targets), eps, sigma, num_bins))
        for b in range(2):
            for t in range(4):
                row = logits[b, t].astype(np.float64)
                lp = row - np.log(np.sum(np.exp(row)))
                target = targets[b, t]
                if target >= first_bin:
                    k = target - first_bin
                    w = np.array([np.exp(-((j - k) ** 2) / (2 * sigma**2)) for j in range(num_bins)])
                    w /= w.sum()
                    nll = -sum(w[j] * lp[first_bin + j] for j in range(num_bins))
                else:
                    nll = -lp[target]
                eps_i = eps / (vocab - 1)
                expected = (1 - eps - eps_i) * nll + eps_i * -lp.sum()
                expected = 0.0 if target == 1 else expected
                assert got[b, t] == pytest.approx(expected, rel=1e-5, abs=1e-6), (b, t, eps)
    # A narrow Gaussian is the plain NLL.
    narrow = token_losses(jnp.asarray(logits), jnp.asarray(targets), 0.0, 1e-3, num_bins)
    np.testing.assert_allclose(narrow, token_losses(jnp.asarray(logits), jnp.asarray(targets)), rtol=1e-6)


def test_token_loss_gradients_match_torch_autograd():
    """The hand-written backward of `token_losses` against torch autograd of the loss written out: log-softmax,
    one-hot or bin-Gaussian targets, label smoothing, padding, weighted per token."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    vocab, num_bins = 40, 25
    first_bin = vocab - num_bins
    logits = (3 * rng.standard_normal((3, 5, vocab))).astype(np.float32)
    targets = rng.integers(4, vocab, (3, 5))
    targets[0, :3] = [first_bin, first_bin + 12, vocab - 1]  # bins at both edges and in the middle
    targets[2, 3:] = 1  # padding
    weights = rng.random((3, 5)).astype(np.float32)
    for eps, sigma in ((0.0, 0.0), (0.1, 0.0), (0.0, 3.0), (0.1, 3.0)):

        def loss(z, eps=eps, sigma=sigma):
            return jnp.sum(token_losses(z, jnp.asarray(targets), eps, sigma, num_bins) * weights)

        ours = np.asarray(jax.grad(loss)(jnp.asarray(logits)))

        z = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
        log_probs = torch.log_softmax(z, dim=-1)
        q = torch.nn.functional.one_hot(torch.tensor(targets), vocab).double()
        if sigma:
            for b, t in zip(*np.nonzero(targets >= first_bin), strict=True):
                k = targets[b, t] - first_bin
                gaussian = torch.exp(-((torch.arange(num_bins) - k) ** 2) / (2 * sigma**2)).double()
                q[b, t] = torch.cat([torch.zeros(first_bin, dtype=torch.float64), gaussian / gaussian.sum()])
        eps_i = eps / (vocab - 1)
        nll = -(q * log_probs).sum(-1)
        per_token = (1 - eps - eps_i) * nll + eps_i * -log_probs.sum(-1)
        per_token = torch.where(torch.tensor(targets) != 1, per_token, 0.0)
        (per_token * torch.tensor(weights, dtype=torch.float64)).sum().backward()
        np.testing.assert_allclose(
            ours, z.grad.numpy(), rtol=1e-5, atol=1e-6, err_msg=f"eps {eps} sigma {sigma}"
        )
        assert np.all(ours[2, 3:] == 0)  # padding gets no gradient


def test_first_token_weight_gives_the_weighted_token_mean():
    targets = jnp.asarray([[5, 6, 2, 1], [7, 2, 1, 1], [1, 1, 1, 1]])
    np.testing.assert_array_equal(answer_weights(targets, 4.0), [[4, 1, 1, 0], [4, 1, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(answer_weights(targets), targets != 1)
    # The first two tokens, EOS (2) excepted; then only the rows asked for.
    np.testing.assert_array_equal(
        answer_weights(targets, 4.0, first_tokens=2), [[4, 4, 1, 0], [4, 1, 0, 0], [0, 0, 0, 0]]
    )
    rows = jnp.asarray([False, True, True])
    np.testing.assert_array_equal(
        answer_weights(targets, 4.0, 2, rows), [[1, 1, 1, 0], [4, 1, 0, 0], [0, 0, 0, 0]]
    )
    # One step's loss at first-token weights 1, 3 and 5 from the same state and batch: the per-token losses l
    # are the same, so with S = sum(l), F = sum(l at position 0), N tokens and B targets, the loss at weight w
    # is (S + (w - 1) F) / (N + (w - 1) B): the first two losses fix S and F and predict the third. The weight
    # is traced here (the loop bakes it in), so that one compilation serves every weight.
    cfg = get_model_config("micro")
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    tx = make_optimizer(OPTIMIZER)
    graphdef, state, shardings, _ = init_sharded_state(cfg, tx, mesh, seed=0)
    step = jax.jit(
        functools.partial(train_step, graphdef=graphdef, optimizer=tx, first_token_families=("segmentation",))
    )
    batch = make_batch(seed=3)
    segmentation = dict(batch, task=np.full_like(batch["task"], 2))  # the family the weight is for
    losses = {}
    for weight in (1.0, 3.0, 5.0):
        losses[weight] = float(step(state, segmentation, first_token_weight=jnp.float32(weight))[1]["loss"])
    tokens, targets_count = float(np.sum(batch["target"] != 1)), float(np.sum(batch["target"][:, 0] != 1))
    total = losses[1.0] * tokens
    first = (losses[3.0] * (tokens + 2 * targets_count) - total) / 2
    assert losses[5.0] == pytest.approx((total + 4 * first) / (tokens + 4 * targets_count), rel=1e-5)
    assert abs(losses[5.0] - losses[1.0]) > 1e-3  # the weight really changed the loss
    # Another family's answers: the weight changes nothing.
    report = dict(batch, task=np.full_like(batch["task"], 3))
    loss = float(step(state, report, first_token_weight=jnp.float32(5.0))[1]["loss"])
    assert loss == pytest.approx(losses[1.0], rel=1e-6)
    with pytest.raises(ValueError, match=r"config.first_token_weight: got -1.0, expected a number >= 0"):
        jit_train_step(graphdef, tx, shardings, mesh, first_token_weight=-1.0)
    with pytest.raises(ValueError, match=r"config.first_token_families: unknown task families \['reports'\]"):
        jit_train_step(graphdef, tx, shardings, mesh, first_token_families=("reports",))
    with pytest.raises(ValueError, match=r"config.first_tokens: got 0, expected a number >= 1"):
        jit_train_step(graphdef, tx, shardings, mesh, first_tokens=0)
    with pytest.raises(ValueError, match=r"config.bin_sigma: got -2.0"):
        jit_train_step(graphdef, tx, shardings, mesh, bin_sigma=-2.0)


def _run(mesh_shape, devices, steps=2, accumulation=1, initial=None, **model_changes):
    """`steps` train steps on a mesh from the micro model's state, initialised on that mesh, or ``initial``
    (graphdef, host copy of a state) placed onto the mesh's shardings. Returns (state, losses)."""
    cfg = get_model_config("micro", **model_changes)
    mesh = make_mesh(mesh_shape, devices)
    tx = make_optimizer(OPTIMIZER)
    if initial is None:
        graphdef, state, shardings, _ = init_sharded_state(cfg, tx, mesh, seed=0)
    else:
        graphdef, host_state = initial
        _, shardings = abstract_sharded_state(cfg, tx, mesh, seed=0)
        state = jax.device_put(host_state, shardings)
    step = jit_train_step(graphdef, tx, shardings, mesh, accumulation_steps=accumulation)
    losses = []
    for i in range(steps):
        state, metrics = step(state, make_batch(seed=i))
        losses.append(float(metrics["loss"]))
    return state, losses


@pytest.mark.slow
def test_sharded_steps_equal_one_device():
    # One initial state for every mesh, placed onto each mesh's shardings: the steps are what is compared
    # (sharded initialisation has its own tests, in test_model.py and test_checkpoint.py), and compiling the
    # initialisation for every mesh would double this test's time.
    one_device = make_mesh((1, 1, 1), jax.devices()[:1])
    graphdef, state, _, _ = init_sharded_state(
        get_model_config("micro"), make_optimizer(OPTIMIZER), one_device, 0
    )
    initial = (graphdef, jax.tree.map(np.asarray, state))  # a host copy: the steps donate their state
    single, single_losses = _run((1, 1, 1), jax.devices()[:1], initial=initial)
    reference = jax.tree.map(np.asarray, jax.tree.leaves(single.params))
    # Relative to the parameters' scale: a parameter whose gradient is ~0 (e.g. a bias no data reaches) gets
    # Adam updates of pure summation-order noise, so per-leaf relative errors would measure noise, not bugs.
    scale = max(float(np.abs(leaf).max()) for leaf in reference)
    for shape in [(8, 1, 1), (2, 4, 1), (2, 2, 2)]:
        state, losses = _run(shape, jax.devices(), initial=initial)
        np.testing.assert_allclose(losses, single_losses, rtol=1e-5)
        for ours, expected in zip(jax.tree.leaves(state.params), reference, strict=True):
            assert float(np.abs(np.asarray(ours) - expected).max()) <= 1e-5 * scale, shape
        kernel = state.params["encoder"]["layers"][0]["ffn"]["fc1"]["kernel"][...]
        assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")


def test_compile_ahead_leaves_no_compilation_for_the_steps(caplog):
    """`compile_ahead` with per-host shapes of two hosts, one of them given twice (two families padded alike):
    each distinct shape is compiled once, and the steps on global batches (as the loop builds them) of both
    shapes then run without compiling. A step built like `jit_train_step` (state and batch shardings,
    donated state) around a cheap body: compiling the real step twice would cost a minute here."""
    mesh = make_mesh((8, 1, 1), jax.devices())
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    state = jax.device_put({"w": jnp.ones((4, 4))}, replicated)

    def body(state, batch):
        return {"w": state["w"] + batch["src"].sum()}, {"loss": batch["images"].mean()}

    step = jax.jit(
        body,
        in_shardings=({"w": replicated}, batch_sharding(mesh)),
        out_shardings=({"w": replicated}, None),
        donate_argnums=0,
    )
    per_host = [
        make_batch(batch=4, seed=0),
        {**make_batch(batch=4, seed=1), "src": np.ones((4, 3), np.int32)},
    ]
    shapes = {f"shape {i}": {k: (v.shape, v.dtype) for k, v in b.items()} for i, b in enumerate(per_host)}
    shapes["a family padded like shape 0"] = dict(shapes["shape 0"])
    caplog.set_level(logging.DEBUG, logger="jax._src.dispatch")
    assert compile_ahead(step, state, shapes, mesh, process_count=2) == 2

    def compilations() -> int:
        found = [r.getMessage() for r in caplog.records if "Finished XLA compilation" in r.getMessage()]
        caplog.clear()
        return len(found)

    assert compilations() == 2  # the log line this test watches for is there when compilation happens
    for local in per_host:  # the two hosts' halves of a global batch of 8
        batch = {k: jax.device_put(np.concatenate([v, v]), batch_sharding(mesh)) for k, v in local.items()}
        state, metrics = step(state, batch)
        assert np.isfinite(float(metrics["loss"]))
    assert compilations() == 0


@pytest.mark.slow
def test_gradient_accumulation_equals_the_full_batch():
    # Frozen BatchNorm: with batch statistics, micro-batches legitimately normalise differently (as in the
    # original, whose update_freq also splits the batch).
    _, full = _run((1, 1, 1), jax.devices()[:1], steps=2, resnet_norm="frozen")
    _, accumulated = _run((1, 1, 1), jax.devices()[:1], steps=2, accumulation=4, resnet_norm="frozen")
    np.testing.assert_allclose(accumulated, full, rtol=1e-5)


def test_float16_loss_scaling_skips_an_injected_overflow_and_recovers():
    cfg = get_model_config("micro", dtype="float16")
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    tx = make_optimizer(OPTIMIZER)
    graphdef, state, shardings, _ = init_sharded_state(cfg, tx, mesh, seed=0)
    step = jit_train_step(graphdef, tx, shardings, mesh)
    state, metrics = step(state, make_batch())
    assert bool(metrics["finite"]) and int(state.skipped_steps) == 0
    before = jax.tree.map(np.asarray, state.params)
    scale = float(state.loss_scale.scale)
    overflow = make_batch(seed=1)
    overflow["images"][0, 0, 0, 0] = np.inf  # poisons the forward pass of one example
    state, metrics = step(state, overflow)
    assert not bool(metrics["finite"])
    assert int(state.skipped_steps) == 1 and float(state.loss_scale.scale) == scale / 2
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))  # the bad step changed nothing
    state, metrics = step(state, make_batch(seed=2))
    assert bool(metrics["finite"]) and int(state.skipped_steps) == 1


def test_loss_scale_grows_after_a_period_of_good_steps():
    scale = LossScale.create(initial=8.0, period=2)
    scale = scale.update(jnp.array(True))
    assert float(scale.scale) == 8.0
    scale = scale.update(jnp.array(True))
    assert float(scale.scale) == 16.0 and int(scale.good_steps) == 0


def test_huge_config_state_is_built_abstractly_on_fake_devices():
    config = load_config(
        Path(__file__).parents[2] / "configs" / "imtcxr_huge.py",
        ["--config.model.dtype=float16", "--config.mesh=(1,8,1)"],
    )
    cfg = ModelConfig.from_dict({**config.model.to_dict(), "vocab_size": 59457})
    mesh = make_mesh((1, 8, 1))  # one 8 x V100 node, fully sharded
    abstract, _ = abstract_sharded_state(cfg, make_optimizer(config), mesh)
    per_device = sum(
        np.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
        for leaf in jax.tree.leaves(abstract)
    )
    # float32 master parameters + Adam moments of 929M parameters, split 8 ways: ~1.4 GB per device, which
    # leaves a 32 GB V100 most of its memory for activations.
    assert per_device < 32 * 2**30 / 4
