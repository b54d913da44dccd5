"""Shared helpers for the benchmarks in tools/bench: the machine, process memory, timing, isolation, output.

Only the standard library is imported here, so that a benchmark's parent process stays light and a child
process's memory baseline is not inflated by this module.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import importlib.metadata
import json
import multiprocessing
import os
import platform
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, which can be smaller than os.cpu_count())."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(packages: tuple[str, ...] = ("jax", "jaxlib", "flax", "torch", "numpy")) -> dict[str, Any]:
    """CPU model, usable cores, total memory, 1-minute load average (other processes compete for the cores),
    Python and package versions (read without importing the packages)."""
    cpu = platform.processor() or platform.machine()
    memory_gb = None
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        cpu = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M).group(1).strip()
        meminfo = Path("/proc/meminfo").read_text()
        memory_gb = round(int(re.search(r"^MemTotal:\s+(\d+) kB", meminfo, re.M).group(1)) / 2**20, 1)
    except (OSError, AttributeError):
        pass
    return {
        "cpu": cpu,
        "cores": cpu_count(),
        "memory_gb": memory_gb,
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        **{package: _version(package) for package in packages},
    }


# ---------------------------------------------------------------------------------------------------------
# Process memory (Linux: /proc/self/status; elsewhere getrusage, whose peak cannot be reset)
# ---------------------------------------------------------------------------------------------------------


def _status_mb(field: str) -> float | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(match.group(1)) / 1024 if match else None


def current_rss_mb() -> float:
    """Resident set size of this process now, in MiB."""
    rss = _status_mb("VmRSS")
    return rss if rss is not None else peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident set size of this process since it started (or since `reset_peak_rss`), in MiB."""
    peak = _status_mb("VmHWM")
    if peak is not None:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc malloc_trim; a no-op elsewhere), so that the RSS counts
    live memory rather than what the allocator keeps cached."""
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)


def reset_peak_rss() -> bool:
    """Reset the peak RSS to the current RSS (Linux >= 4.0). Returns False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# ---------------------------------------------------------------------------------------------------------
# Timing, isolation, output
# ---------------------------------------------------------------------------------------------------------


def time_calls(fn: Callable[[], Any], *, repeats: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of `repeats` calls of `fn` after `warmup` untimed calls. `fn` must wait for its
    own result (e.g. jax.block_until_ready) so that asynchronous dispatch is not mistaken for speed."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def matmul_peak_gflops() -> float:
    """This machine's matmul peak now: a jitted 2048x2048 float32 matmul, the best of 5 calls, in GFLOP/s."""
    import jax
    import jax.numpy as jnp

    n = 2048
    a = jnp.ones((n, n), jnp.float32)
    dot = jax.jit(lambda x: x @ x)
    return 2 * n**3 / min(time_calls(lambda: jax.block_until_ready(dot(a)), repeats=5)) / 1e9


def median(values: list[float]) -> float:
    return statistics.median(values)


def run_isolated(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)` in a fresh 'spawn' child process (nothing inherited from this one's heap or
    imports); returns its picklable result or re-raises its exception. `fn` must be importable by name."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def print_json_line(record: dict[str, Any]) -> None:
    """One benchmark result as a single JSON line on stdout (floats rounded to 4 significant digits)."""

    def tidy(value: Any) -> Any:
        if isinstance(value, float):
            return float(f"{value:.4g}")
        if isinstance(value, dict):
            return {key: tidy(item) for key, item in value.items()}
        return value

    print(json.dumps(tidy(record)), flush=True)
