"""Multi-host: start-up flags and environment detection, and a real two-process run on CPU devices that must
give the losses of one process with the same devices, resume across processes, and log once."""

import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from imtcxr_jax.train import distributed
from imtcxr_jax.train.logging_utils import read_metrics

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------------------
# Start-up (no second process needed)
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "given, missing",
    [
        (dict(coordinator="127.0.0.1:1234"), "--num-processes, --process-id"),
        (dict(num_processes=2, process_id=0), "--coordinator"),
        (dict(coordinator="127.0.0.1:1234", process_id=1), "--num-processes"),
    ],
)
def test_some_explicit_flags_name_the_missing_ones(given, missing):
    with pytest.raises(ValueError, match=f"but not {missing};"):
        distributed.initialize(**given)


@pytest.mark.parametrize(
    "coordinator, num_processes, process_id, complaint",
    [
        ("127.0.0.1", 2, 0, "--coordinator: got '127.0.0.1', expected HOST:PORT"),
        ("127.0.0.1:1234", 0, 0, "--num-processes: got 0"),
        ("127.0.0.1:1234", 2, 2, r"--process-id: got 2, expected 0\.\.1"),
    ],
)
def test_bad_explicit_flags_are_named(coordinator, num_processes, process_id, complaint):
    with pytest.raises(ValueError, match=complaint):
        distributed.initialize(coordinator, num_processes, process_id)


def _clear_cluster_env(monkeypatch):
    for name in (
        *distributed._SLURM_VARS, *distributed._TPU_VARS, "OMPI_MCA_orte_hnp_uri", "JAX_COORDINATOR_ADDRESS",
    ):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


def test_environment_detection(monkeypatch):
    _clear_cluster_env(monkeypatch)
    assert distributed.detect_environment() is None
    slurm = dict(SLURM_JOB_ID="77", SLURM_STEP_NODELIST="gpu[01-02]", SLURM_NTASKS="16", SLURM_PROCID="9")
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    assert distributed.detect_environment() is None  # no SLURM_LOCALID: not inside an srun step
    monkeypatch.setenv("SLURM_LOCALID", "1")
    assert distributed.detect_environment().startswith("SLURM job 77: task 9 of 16")
    monkeypatch.setenv("SLURM_NTASKS", "1")  # a one-task step: nothing to join
    assert distributed.detect_environment() is None
    _clear_cluster_env(monkeypatch)
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "w0,w1")
    assert distributed.detect_environment().startswith("TPU slice")


def test_a_plain_process_stays_single(monkeypatch):
    _clear_cluster_env(monkeypatch)
    distributed.initialize()  # no flags, no cluster: nothing to join, and no error
    assert distributed.is_primary()
    distributed.sync("no-op in one process")
    with distributed.primary_first("no-op in one process"):
        pass


def test_cli_rejects_partial_flags(tmp_path, capsys, monkeypatch):
    from imtcxr_jax.train.cli import cli_main

    monkeypatch.setattr(logging, "basicConfig", lambda **kwargs: None)  # keep pytest's log capture
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--config", "configs/micro.py", "--workdir", str(tmp_path), "--process-id", "1"])
    assert exit_info.value.code == 2
    assert "but not --coordinator, --num-processes" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# Two processes x 4 CPU devices against one process x 8
# ---------------------------------------------------------------------------------------------------------

MESH = "(8,1,1)"  # (2,4,1) matches too (checked by hand) but compiles about twice as long on 2 cores
# A constant learning rate after the warm-up: the compiled step then does not depend on total_steps, so the
# second leg (total_steps 4 instead of 2) reads the first leg's executables from the compilation cache.
COMMON = [
    "--config", "configs/micro.py", "--config.log_every=1", "--config.eval_every=0",
    "--config.checkpoint_every=2", f"--config.mesh={MESH}", "--config.schedule=constant",
]  # fmt: skip


def _run(command: list[str], env: dict[str, str], log: Path, timeout: float = 600) -> None:
    """Run in its own process group, so that a hang kills every training process it started."""
    with open(log, "w") as out:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            code = "timeout"
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        pytest.fail(f"{' '.join(command)} -> {code}; last lines of {log}:\n{tail}")


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    # One compilation cache for every run: the restarted leg reads the programs the first leg compiled.
    cache = dict(
        JAX_COMPILATION_CACHE_DIR=str(tmp_path / "xla"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    env = dict(os.environ)  # the launcher replaces the session's 8 devices by 4 a process, other flags kept
    env.update(NUM_PROCESSES="2", DEVICES_PER_PROCESS="4", LOG_DIR=str(tmp_path / "logs"), **cache)

    # Two processes, in two legs: steps 1-2 (checkpoint at 2), then a restart that every process restores
    # (its own data-iterator state included) and that runs steps 3-4. Phantoms and the tokenizer are made
    # in the workdir by process 0 while process 1 waits.
    multi = tmp_path / "two_processes"
    for total, leg in ((2, "leg1"), (4, "leg2")):
        command = ["bash", "launch/local_multiprocess.sh", *COMMON, "--workdir", str(multi)]
        _run([*command, f"--config.total_steps={total}"], env, tmp_path / f"{leg}.log")
    rows = read_metrics(multi / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2, 3, 4]  # written by process 0 alone, each step once
    for step in (2, 4):
        data_state = sorted(p.name for p in (multi / "checkpoints" / str(step) / "data").glob("process_*"))
        assert data_state == ["process_0-of-2.json", "process_1-of-2.json"]

    # One process with all 8 devices on the same phantoms and tokenizer, uninterrupted.
    single = tmp_path / "one_process"
    single.mkdir()
    shutil.copy(multi / "tokenizer.json", single / "tokenizer.json")
    env = dict(os.environ, **cache)  # the session's 8 devices (tests/conftest.py)
    command = [
        sys.executable, "-m", "imtcxr_jax.cli", "train", *COMMON, "--workdir", str(single),
        "--config.total_steps=4", "--config.dataset.source=manifest",
        f"--config.dataset.train_dir={multi / 'data' / 'train'}",
        f"--config.dataset.eval_dir={multi / 'data' / 'eval'}",
    ]  # fmt: skip
    _run(command, env, tmp_path / "single.log")
    reference = read_metrics(single / "metrics.jsonl")
    assert [row["step"] for row in reference] == [1, 2, 3, 4]

    for got, want in zip(rows, reference, strict=True):
        assert got["tokens"] == want["tokens"], f"step {got['step']}: different batches"
        for key in [k for k in want if k == "grad_norm" or k.startswith("loss")]:
            assert got[key] == pytest.approx(want[key], rel=1e-5), f"step {got['step']} {key}"
