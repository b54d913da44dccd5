"""`imtcxr`'s persistent compilation cache: where it goes, how it is switched off, and that a run writes it."""

import os
import subprocess
import sys
from pathlib import Path

from imtcxr_jax.cli import compilation_cache_dir


def test_the_folder_comes_from_the_environment_or_the_user_cache(tmp_path):
    assert compilation_cache_dir({"HOME": "/h", "XDG_CACHE_HOME": "/c"}) == Path("/c/imtcxr_jax/xla")
    assert compilation_cache_dir({"IMTCXR_COMPILATION_CACHE": str(tmp_path)}) == tmp_path
    assert compilation_cache_dir({}) == Path.home() / ".cache" / "imtcxr_jax" / "xla"
    for off in ("off", "OFF", "0", "none", ""):
        assert compilation_cache_dir({"IMTCXR_COMPILATION_CACHE": off}) is None
    # JAX's own setting wins: JAX then uses that folder and its own thresholds.
    both = {"JAX_COMPILATION_CACHE_DIR": "/j", "IMTCXR_COMPILATION_CACHE": "/i"}
    assert compilation_cache_dir(both) is None


# A program that takes well over CACHE_MIN_COMPILE_SECONDS to compile (a long chain of distinct operations).
PROGRAM = """
import jax, jax.numpy as jnp
from imtcxr_jax.cli import configure_compilation_cache
print(configure_compilation_cache())
@jax.jit
def chain(x):
    for i in range(60):
        x = jnp.sin(x) @ x + i
    return x
chain(jnp.ones((8, 8))).block_until_ready()
"""


def _run_program(cache_setting: str) -> str:
    """PROGRAM in a fresh interpreter without the suite's own cache folder; its output (the folder used)."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["IMTCXR_COMPILATION_CACHE"] = cache_setting
    done = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_a_configured_run_writes_its_compiled_programs_to_the_folder(tmp_path):
    assert _run_program(str(tmp_path / "xla")) == str(tmp_path / "xla")
    assert any((tmp_path / "xla").iterdir())
    assert _run_program("off") == "None"
