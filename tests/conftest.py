"""Test-wide set-up, before JAX is imported: 8 fake CPU devices, XLA's backend optimisation off, full float32
matmul precision, and one persistent compilation cache for the whole run.

Why the optimisation level: on a CPU most of the suite's time is XLA compilation of tiny models, and LLVM's
optimisation passes are a third of it (the micro train step: 17 s instead of 26 s to compile, 136 ms instead
of 111 ms to run). It changes how the code is generated, not what it computes (no fast-math; at most the last
bits of a float can differ, as between any two compilers, and every comparison in the suite has a tolerance
or compares runs made under the same flags).
The subprocesses the tests start inherit these flags through the environment.

Why the cache: on a CPU most of the suite's time is XLA compilation, and many tests compile the same program
(the micro model's initialisation and train step on the same mesh; every `imtcxr train` a test starts in a
subprocess). The cache is a fresh temporary folder shared by the pytest-xdist workers and by the
subprocesses the tests start (they inherit the environment), removed when the run ends. A cached program is
the compiled program itself, so no result depends on whether it came from the cache.
"""

import os
import shutil
import tempfile

os.environ.setdefault(
    "XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # the controller (xdist workers inherit its environment)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="imtcxr-jax-test-xla-")
    os.environ["IMTCXR_TEST_OWNS_CACHE"] = os.environ["JAX_COMPILATION_CACHE_DIR"]

import jax

jax.config.update("jax_default_matmul_precision", "highest")


def pytest_collection_modifyitems(config, items):
    """Test files with slow tests first. pytest-xdist (`--dist loadfile`) hands whole files to the workers in
    this order, so the long files start early and the short ones fill in at the end, instead of a long file
    starting last while the other worker has nothing left to do."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: the order within each group is kept


def pytest_sessionfinish(session, exitstatus):
    worker = hasattr(session.config, "workerinput")
    owned = os.environ.get("IMTCXR_TEST_OWNS_CACHE")
    if not worker and owned and owned == os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        shutil.rmtree(owned, ignore_errors=True)
