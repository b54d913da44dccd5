"""`tools/gpu_check.sh` on the CPU (`--dry-run`): its set-up steps and its time budget. The GPU run itself
cannot be tested here; these keep the script from failing on a lent machine for a reason a CPU shows."""

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "gpu_check.sh"


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    out = tmp_path / "out"
    return subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--out", str(out), *args],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_dry_run_records_the_environment(tmp_path):
    result = _run(tmp_path, "--skip-tests", "--skip-bench")
    assert result.returncode == 0, result.stderr
    env = (tmp_path / "out" / "env.txt").read_text()
    assert "backend cpu" in env and "jax " in env
    assert "done in" in (tmp_path / "out" / "log.txt").read_text()


def test_a_step_without_budget_is_skipped_and_fails_the_run(tmp_path):
    result = _run(tmp_path, "--skip-tests", "--budget", "30")
    assert result.returncode == 1
    log = (tmp_path / "out" / "log.txt").read_text()
    assert "skipped (budget:" in log and "failed or cut steps: bench-float32 (" in log


def test_unknown_option_is_refused(tmp_path):
    result = _run(tmp_path, "--fast")
    assert result.returncode == 64 and "unknown option --fast" in result.stderr


def test_help_is_the_header_comment(tmp_path):
    result = _run(tmp_path, "--help")
    assert result.returncode == 0 and "--fetch-wheels" in result.stdout
    assert result.stdout.splitlines()[-1].startswith("#") and "set -" not in result.stdout
