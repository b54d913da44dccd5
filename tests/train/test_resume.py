"""The training loop under interruption, in real `imtcxr train` processes: SIGKILL and restart resumes exactly,
SIGTERM saves and exits cleanly, a non-finite loss stops (or is skipped and counted) without a bad checkpoint.

Every run uses the same config (the micro model, 64 px phantoms, batch 8, 12 steps on the 8 fake CPU devices),
so that one persistent compilation cache, shared by all runs of this module, compiles the train step once;
only loop-level keys (checkpoint_every, keep_checkpoints, nan_policy), which do not change the compiled step,
differ between runs.

The processes run `imtcxr train` through a small wrapper (`WRAPPER` below) that instruments the batch feed
(`loop._global_batch`) without changing what is trained: it records a SHA-256 of every batch, and on request
waits before drawing a given batch (so that a signal arrives at a known point) or replaces that batch's
images by NaN (a deterministic non-finite loss).
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

from imtcxr_jax.models.config import ModelConfig
from imtcxr_jax.sharding import make_mesh
from imtcxr_jax.train.checkpoint import Checkpointer
from imtcxr_jax.train.experiment import config_from_json
from imtcxr_jax.train.logging_utils import read_metrics
from imtcxr_jax.train.optimizer import make_optimizer
from imtcxr_jax.train.partition import abstract_sharded_state

REPO = Path(__file__).resolve().parents[2]
TOTAL_STEPS = 12
CONFIG = [
    "--config", str(REPO / "configs" / "micro.py"), "--config.dataset.train_examples=24",
    f"--config.total_steps={TOTAL_STEPS}", "--config.log_every=1", "--config.eval_every=0",
]  # fmt: skip
TIMEOUT = 600  # seconds for one training process; the first one compiles (about a minute on 2 loaded cores)

WRAPPER = '''
"""imtcxr train ARGS, with the batch feed instrumented (see tests/train/test_resume.py)."""
import hashlib, os, sys, time
from pathlib import Path

import numpy as np

from imtcxr_jax.cli import main
from imtcxr_jax.train import loop

batch_log = Path(os.environ["TEST_BATCH_LOG"])  # one SHA-256 per batch drawn by this process, in order
hold_at = int(os.environ.get("TEST_HOLD_AT", 0))  # before drawing this batch, wait while HOLD exists
hold = batch_log.with_suffix(".holding")
nan_at = int(os.environ.get("TEST_NAN_AT", 0))  # this batch's images become NaN
drawn = 0
global_batch = loop._global_batch


def instrumented(local, sharding):
    global drawn
    drawn += 1
    if drawn == hold_at:
        hold.touch()
        while hold.exists():
            time.sleep(0.02)
    if drawn == nan_at:
        local = {**local, "images": np.full_like(local["images"], np.nan)}
    digest = hashlib.sha256()
    for key in sorted(local):
        digest.update(key.encode() + np.ascontiguousarray(local[key]).tobytes())
    with open(batch_log, "a") as out:
        out.write(digest.hexdigest() + "\\n")
    return global_batch(local, sharding)


loop._global_batch = instrumented
sys.exit(main(["train", *sys.argv[1:]]))
'''


class Run:
    """One training process on `workdir`; its output goes to <workdir>/<name>.log, its batches to
    <workdir>/<name>.batches."""

    def __init__(self, workdir: Path, name: str, cache: Path, *extra: str, **instrument: int):
        self.workdir, self.name = workdir, name
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / f"{name}.log"
        self.batch_log = workdir / f"{name}.batches"
        self.hold = self.batch_log.with_suffix(".holding")
        wrapper = cache.parent / "train_wrapper.py"
        wrapper.write_text(WRAPPER)
        env = dict(
            os.environ,
            PYTHONPATH=str(REPO),
            # The devices and XLA flags of the test session (tests/conftest.py) come with os.environ; one
            # compilation cache for all runs of this module.
            JAX_COMPILATION_CACHE_DIR=str(cache),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
            TEST_BATCH_LOG=str(self.batch_log),
            **{f"TEST_{key.upper()}": str(value) for key, value in instrument.items()},
        )
        command = [sys.executable, str(wrapper), *CONFIG, "--workdir", str(workdir), *extra]
        with open(self.log, "w") as out:
            self.process = subprocess.Popen(
                command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.started = time.monotonic()

    def wait_for(self, condition, what: str) -> None:
        """Poll until `condition()`; fail (with the log) if the process ends first or takes too long."""
        while not condition():
            if self.process.poll() is not None:
                self.fail(f"ended (exit {self.process.returncode}) before {what}")
            if time.monotonic() - self.started > TIMEOUT:
                self.kill()
                self.fail(f"timed out waiting for {what}")
            time.sleep(0.05)

    def finish(self) -> int:
        try:
            return self.process.wait(timeout=max(1.0, TIMEOUT - (time.monotonic() - self.started)))
        except subprocess.TimeoutExpired:
            self.kill()
            self.fail("timed out")

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)  # its own session: nothing it started survives
        self.process.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def batches(self) -> list[str]:
        return self.batch_log.read_text().split() if self.batch_log.exists() else []

    def fail(self, why: str):
        tail = "\n".join(self.output().splitlines()[-40:])
        pytest.fail(f"training run {self.name} in {self.workdir} {why}; last lines of {self.log}:\n{tail}")


def run_to_end(workdir: Path, name: str, cache: Path, *extra: str, **instrument: int) -> Run:
    run = Run(workdir, name, cache, *extra, **instrument)
    if run.finish() != 0:
        run.fail(f"exited with {run.process.returncode}")
    return run


def complete_checkpoint(workdir: Path, step: int):
    # orbax writes a step into "<step>.orbax-checkpoint-tmp" and renames it when complete: the final folder
    # (with its commit marker) exists only for a complete step.
    return lambda: (workdir / "checkpoints" / str(step) / "commit_success.txt").is_file()


def by_step(rows: list[dict]) -> dict[int, list[dict]]:
    """metrics.jsonl rows per step, without the wall-clock field (the one thing allowed to differ)."""
    steps: dict[int, list[dict]] = {}
    for row in rows:
        steps.setdefault(row["step"], []).append({k: v for k, v in row.items() if k != "step_seconds"})
    return steps


def restore_state(workdir: Path, step: int):
    """The full train state (parameters, Adam moments, step, RNG, counters) of one checkpoint."""
    config = config_from_json((workdir / "config.json").read_text())
    cfg = ModelConfig.from_dict(json.loads((workdir / "model.json").read_text()))
    abstract, _ = abstract_sharded_state(cfg, make_optimizer(config), make_mesh((8, 1, 1)), config.seed)
    checkpoints = Checkpointer(workdir / "checkpoints", asynchronous=False)
    try:
        state, restored_step = checkpoints.restore(abstract, None, step=step)
    finally:
        checkpoints.close()
    assert restored_step == step
    return state


def iterator_state(workdir: Path, step: int) -> dict:
    return json.loads((workdir / "checkpoints" / str(step) / "data" / "process_0-of-1.json").read_text())


def assert_bitwise_equal_states(ours, reference) -> None:
    leaves, treedef = jax.tree_util.tree_flatten_with_path(ours)
    assert treedef == jax.tree.structure(reference)
    for (path, a), b in zip(leaves, jax.tree.leaves(reference), strict=True):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), jax.tree_util.keystr(path)


def assert_resumed_exactly(workdir: Path, reference: Run, interrupted: Run, resumed: Run, start: int):
    """`interrupted` ran steps 1.. and was stopped; `resumed` restarted from the checkpoint of step `start`.
    Together they must have drawn the reference's batches, logged its metrics and ended in its state."""
    expected_batches = reference.batches()
    assert len(expected_batches) == TOTAL_STEPS
    first = interrupted.batches()
    assert first == expected_batches[: len(first)]
    # The restart draws exactly the batches after the checkpoint: none repeated, none skipped.
    assert resumed.batches() == expected_batches[start:]

    expected = by_step(read_metrics(reference.workdir / "metrics.jsonl"))
    got = by_step(read_metrics(workdir / "metrics.jsonl"))
    assert sorted(got) == list(range(1, TOTAL_STEPS + 1))
    for step, rows in got.items():
        # Steps after the checkpoint that the interrupted run had already done are re-run and logged again,
        # with the same values bit for bit (float equality, not approx).
        assert len(rows) == (2 if start < step <= len(first) else 1), step
        for row in rows:
            assert row == expected[step][0], f"step {step}"

    assert iterator_state(workdir, TOTAL_STEPS) == iterator_state(reference.workdir, TOTAL_STEPS)
    assert_bitwise_equal_states(
        restore_state(workdir, TOTAL_STEPS), restore_state(reference.workdir, TOTAL_STEPS)
    )


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("resume") / "jax_cache"


@pytest.fixture(scope="module")
def reference(compilation_cache) -> Run:
    """An uninterrupted run: the losses, batches and final state every interrupted run must reproduce."""
    return run_to_end(
        compilation_cache.parent / "reference", "reference", compilation_cache, "--config.checkpoint_every=4"
    )


@pytest.mark.slow
def test_sigkill_and_restart_resume_exactly(tmp_path, compilation_cache, reference):
    # Stop the run, for certain mid-run, as it is about to draw batch 10 (steps 1-9 done and logged), wait
    # until the asynchronous save of step 8 is complete, and kill it without warning.
    workdir = tmp_path / "run"
    killed = Run(workdir, "killed", compilation_cache, "--config.checkpoint_every=4", hold_at=10)
    killed.wait_for(killed.hold.exists, "holding before batch 10")
    killed.wait_for(complete_checkpoint(workdir, 8), "the checkpoint of step 8")
    killed.kill()
    assert killed.process.returncode == -signal.SIGKILL
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [4, 8]

    # A save interrupted by the kill leaves its temporary folder behind; plant one for step 12 (a partial
    # copy of step 8) to check that the restart neither restores from it nor trips over it when it saves 12.
    partial = workdir / "checkpoints" / "12.orbax-checkpoint-tmp"
    partial.mkdir()
    (partial / "state").mkdir()
    (partial / "state" / "_METADATA").write_text('{"tree_metadata": {')

    resumed = run_to_end(workdir, "resumed", compilation_cache, "--config.checkpoint_every=4")
    assert "resumed from step 8" in resumed.output()
    assert not partial.exists()  # orbax replaced it when it saved step 12 again
    assert_resumed_exactly(workdir, reference, killed, resumed, start=8)


@pytest.mark.slow
def test_sigterm_saves_the_step_reached_exits_cleanly_and_resumes_exactly(
    tmp_path, compilation_cache, reference
):
    # SIGTERM while the run waits to draw batch 7 (steps 1-6 done; the last checkpoint is step 4): it
    # finishes step 7, saves it although 7 is no checkpoint step, and exits with 0.
    workdir = tmp_path / "run"
    stopped = Run(workdir, "stopped", compilation_cache, "--config.checkpoint_every=4", hold_at=7)
    stopped.wait_for(stopped.hold.exists, "holding before batch 7")
    stopped.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)  # let the handler run while the process is still holding
    stopped.hold.unlink()
    assert stopped.finish() == 0, stopped.output()[-3000:]
    assert "SIGTERM: saved step 7, exiting" in stopped.output()
    assert (workdir / "checkpoints" / "7" / "commit_success.txt").is_file()
    assert [row["step"] for row in read_metrics(workdir / "metrics.jsonl")] == list(range(1, 8))

    resumed = run_to_end(workdir, "resumed", compilation_cache, "--config.checkpoint_every=4")
    assert "resumed from step 7" in resumed.output()
    assert_resumed_exactly(workdir, reference, stopped, resumed, start=7)


@pytest.mark.slow
def test_a_non_finite_loss_stops_naming_the_step_without_checkpointing_it(tmp_path, compilation_cache):
    workdir = tmp_path / "run"
    run = Run(workdir, "nan", compilation_cache, "--config.checkpoint_every=1", nan_at=3)
    assert run.finish() != 0
    assert "NonFiniteLossError: step 3: loss is nan" in run.output()
    # Steps 1 and 2 were saved (the error waits for their asynchronous saves); step 3 never was, not even a
    # temporary folder of it.
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["1", "2"]
    assert [row["step"] for row in read_metrics(workdir / "metrics.jsonl")] == [1, 2]


@pytest.mark.slow
def test_a_non_finite_loss_is_skipped_and_counted_with_nan_policy_skip(tmp_path, compilation_cache):
    workdir = tmp_path / "run"
    keep_all = f"--config.keep_checkpoints={TOTAL_STEPS}"
    run_to_end(
        workdir, "skip", compilation_cache, "--config.checkpoint_every=1", keep_all,
        "--config.nan_policy=skip", nan_at=3,
    )  # fmt: skip
    rows = {row["step"]: row for row in read_metrics(workdir / "metrics.jsonl")}
    assert sorted(rows) == list(range(1, TOTAL_STEPS + 1))
    assert math.isnan(rows[3]["loss"])
    assert [rows[s]["skipped_steps"] for s in sorted(rows)] == [0, 0] + [1] * (TOTAL_STEPS - 2)
    assert all(math.isfinite(rows[s]["loss"]) for s in rows if s != 3)

    # The skipped step changed nothing but the step and skip counters and the RNG: parameters, BatchNorm
    # statistics and optimizer state after step 3 are those after step 2, bit for bit.
    before, after = restore_state(workdir, 2), restore_state(workdir, 3)
    assert int(after.step) == 3 and int(after.skipped_steps) == 1
    for part in ("params", "model_state", "opt_state"):
        assert_bitwise_equal_states(getattr(after, part), getattr(before, part))
    final = restore_state(workdir, TOTAL_STEPS)
    assert int(final.skipped_steps) == 1
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(final.params))


def test_an_unknown_nan_policy_is_an_error_before_anything_runs(tmp_path):
    from imtcxr_jax.train.loop import train

    config = ml_collections.ConfigDict({"nan_policy": "ignore"})
    with pytest.raises(ValueError, match=r"config\.nan_policy: got 'ignore'"):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
