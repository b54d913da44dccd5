"""Dataset build throughput, records/s on one core: CheXmask RLE decoding and full-resolution JPEG checking.

Run: ``python -m tools.bench.build [--rows 30] [--jpegs 8]``. Prints one JSON line per case, ours and a simple
peer measured in the same run on the same inputs:

* ``chexmask_rle``: one CheXmask row = three 1024x1024 masks (both lungs, heart; RLE strings from phantom
  masks upscaled to 1024) decoded with `rle.chexmask_decode` (validated, vectorised) vs a straightforward
  loop that paints each run with a numpy slice (no validation). Both must give the same masks.
* ``jpeg_full_res``: what the builder does per JPEG (`common.encode_file`: read the bytes, decode fully with
  Pillow to prove the file readable, keep the original bytes) on 3056x2544 quality-95 JPEGs (MIMIC-CXR-JPG's
  native size) vs the peer `cv2.imdecode` (grey) of the same bytes when OpenCV is installed, else PIL
  ``Image.open(path).convert("L")``.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
from PIL import Image

from tools.bench.common import machine_info, print_json_line


def naive_chexmask_decode(text: str, height: int, width: int) -> np.ndarray:
    flat = np.zeros(height * width, dtype=bool)
    values = [int(v) for v in text.split()]
    for start, length in zip(values[::2], values[1::2], strict=True):
        flat[start - 1 : start - 1 + length] = True
    return flat.reshape(height, width)


def _rate(fn, items, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - start)
    return len(items) / best


def bench_rle(rows: int) -> dict:
    from imtcxr_jax.data.phantom import generate_phantom
    from imtcxr_jax.data.tfds import rle

    encoded = []
    for seed in range(rows):
        phantom = generate_phantom(seed, 256)
        masks = [
            np.kron(phantom.masks[n], np.ones((4, 4), dtype=bool))
            for n in ("right_lung", "left_lung", "heart")
        ]
        encoded.append([rle.chexmask_encode(m) for m in masks])
    for row in encoded[:3]:
        for text in row:
            np.testing.assert_array_equal(
                rle.chexmask_decode(text, 1024, 1024), naive_chexmask_decode(text, 1024, 1024)
            )
    ours = _rate(lambda row: [rle.chexmask_decode(t, 1024, 1024) for t in row], encoded)
    peer = _rate(lambda row: [naive_chexmask_decode(t, 1024, 1024) for t in row], encoded)
    runs = float(np.mean([len(t.split()) / 2 for row in encoded for t in row]))
    return {"case": "chexmask_rle", "records_per_s": round(ours, 1), "peer": "numpy slice loop",
            "peer_records_per_s": round(peer, 1), "rows": rows, "mean_runs_per_mask": round(runs, 1)}  # fmt: skip


def bench_jpeg(count: int) -> dict:
    from imtcxr_jax.data.phantom import generate_phantom
    from imtcxr_jax.data.tfds.common import encode_file

    folder = Path(tempfile.mkdtemp(prefix="bench_jpeg_"))
    paths = []
    for seed in range(count):
        image = Image.fromarray(generate_phantom(seed, 512).image).resize((2544, 3056), Image.BICUBIC)
        path = folder / f"{seed}.jpg"
        image.save(path, format="JPEG", quality=95)
        paths.append(path)
    try:
        import cv2

        cv2.setNumThreads(1)
        peer_name = "cv2.imdecode"

        def peer(path: Path) -> None:
            cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_GRAYSCALE)
    except ImportError:
        peer_name = "PIL open + convert(L)"

        def peer(path: Path) -> None:
            with Image.open(io.BytesIO(path.read_bytes())) as image:
                image.convert("L").load()

    ours = _rate(encode_file, paths)
    peer_rate = _rate(peer, paths)
    mb = sum(p.stat().st_size for p in paths) / len(paths) / 1e6
    for path in paths:
        path.unlink()
    folder.rmdir()
    return {"case": "jpeg_full_res", "records_per_s": round(ours, 2), "peer": peer_name,
            "peer_records_per_s": round(peer_rate, 2), "size": "2544x3056", "mean_file_mb": round(mb, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--jpegs", type=int, default=8)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    info = {"load_average": round(os.getloadavg()[0], 2), "machine": machine_info(("numpy", "pillow"))}
    for result in (bench_rle(args.rows), bench_jpeg(args.jpegs)):
        print_json_line({**result, **info})


if __name__ == "__main__":
    main()
