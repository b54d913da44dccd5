"""Phantom generation speed: images per second on one core, at 256 and 512 px.

Run from the repository root (about half a minute):

    .venv/bin/python -m tools.bench.phantom
    .venv/bin/python -m tools.bench.phantom --sizes 256 512 1024 --n 300

The process pins itself to one core (where the OS allows) and keeps numpy's thread pools at one thread, so the
numbers are single-core. For each size it first draws one phantom untimed (that builds the per-size texture
banks, reported as ``first_image_s``), then times ``--n`` phantoms with consecutive seeds, and prints one JSON
line:

    images_per_s            generate_phantom alone (image and all ground truth): n / total seconds
    ms_per_image_median     the median of the per-image times
    images_per_s_with_png   what `imtcxr data phantom` does per image: generate, the manifest record
                            (to_record + json.dumps) and the PNG file (Pillow, compress_level 6, to memory)
    target_images_per_s     the design target (>= 100 images/s at 512 px on one core)

The load average in ``machine`` matters: other processes sharing the cores slow every number down.
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")  # before numpy is imported

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for `python tools/bench/...`

from PIL import Image  # noqa: E402

from imtcxr_jax.data.phantom import generate_phantom  # noqa: E402
from tools.bench.common import machine_info, median, print_json_line  # noqa: E402

TARGETS = {512: 100}


def pin_to_one_core() -> int | None:
    """Restrict this process to the first core it may use; returns that core, or None where unsupported."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    return core


def bench_size(size: int, n: int) -> dict:
    start = time.perf_counter()
    generate_phantom(10**6, size)  # untimed: builds the texture banks of this size
    first = time.perf_counter() - start

    times = []
    for seed in range(n):
        start = time.perf_counter()
        generate_phantom(seed, size)
        times.append(time.perf_counter() - start)

    start = time.perf_counter()
    for seed in range(n):
        phantom = generate_phantom(seed, size)
        json.dumps(phantom.to_record(f"images/{seed:08d}.png"))
        Image.fromarray(phantom.image).save(io.BytesIO(), format="PNG", compress_level=6)
    with_png = time.perf_counter() - start

    return {
        "bench": "phantom",
        "size": size,
        "n": n,
        "images_per_s": n / sum(times),
        "ms_per_image_median": 1000 * median(times),
        "images_per_s_with_png": n / with_png,
        "first_image_s": first,
        "target_images_per_s": TARGETS.get(size),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="image sizes in pixels")
    parser.add_argument("--n", type=int, default=200, help="phantoms timed per size (default 200)")
    args = parser.parse_args(argv)
    core = pin_to_one_core()
    machine = {**machine_info(packages=("numpy", "pillow")), "pinned_core": core}
    for size in args.sizes:
        print(f"phantom benchmark: {args.n} images of {size} px ...", file=sys.stderr, flush=True)
        print_json_line({**bench_size(size, args.n), "machine": machine})
    return 0


if __name__ == "__main__":
    sys.exit(main())
