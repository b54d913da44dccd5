"""One real pass through a freshly built model: phantom image + instruction -> encoder -> cached greedy decoding.

The weights are random, so the decoded tokens are meaningless; what this shows is that every stage runs at
the requested size, with shapes and compile/run timings. Training and the four-task workflow build on it.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from imtcxr_jax.data.phantom import generate_phantom
from imtcxr_jax.data.preprocess import to_model_input
from imtcxr_jax.models.config import get_model_config
from imtcxr_jax.models.imtcxr import IMTCXR, DecoderCache, EncoderOutput, count_parameters, create_model
from imtcxr_jax.text.tokenizer import EOS_ID, OfaTokenizer, Tokenizer, TrainedTokenizer

DEFAULT_BPE_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "ofa-bpe"
INSTRUCTION = " what disease does this image have?"  # spec §12.3, with its leading space


def default_tokenizer(bpe_dir: Path | None = None) -> Tokenizer:
    """The OFA tokenizer where its files exist; otherwise one trained on phantom reports (offline default)."""
    bpe_dir = bpe_dir or DEFAULT_BPE_DIR
    if (bpe_dir / "encoder.json").exists():
        return OfaTokenizer(bpe_dir)
    reports = [generate_phantom(seed, 64).report for seed in range(200)]
    return TrainedTokenizer.train(reports, vocab_size=2048)


@nnx.jit
def _encode(model: IMTCXR, src: jax.Array, images: jax.Array) -> EncoderOutput:
    return model.encode(src, images)


@nnx.jit(static_argnames="max_length")
def _start(model: IMTCXR, enc: EncoderOutput, max_length: int) -> DecoderCache:
    return model.init_cache(enc, max_length)


@nnx.jit
def _greedy_step(model: IMTCXR, token: jax.Array, cache: DecoderCache) -> tuple[jax.Array, DecoderCache]:
    logits, cache = model.decode_step(token, cache)
    return jnp.argmax(logits[:, -1], axis=-1)[:, None], cache


def run_smoke(size: str, image_size: int, steps: int, seed: int) -> dict[str, object]:
    tokenizer = default_tokenizer()
    cfg = get_model_config(size, vocab_size=tokenizer.vocab_size)
    start = time.perf_counter()
    model = create_model(cfg, seed)
    build_s = time.perf_counter() - start

    phantom = generate_phantom(seed, image_size)
    images = jnp.asarray(to_model_input(phantom.image, image_size))[None]
    src = jnp.asarray([tokenizer.encode_source(INSTRUCTION)])

    timings: dict[str, float] = {"build_s": build_s}
    for label in ("first_encode_s", "encode_s"):  # the first call compiles
        start = time.perf_counter()
        enc = jax.block_until_ready(_encode(model, src, images))
        timings[label] = time.perf_counter() - start

    start = time.perf_counter()
    cache = _start(model, enc, steps + 1)
    token, generated = jnp.zeros((1, 1), jnp.int32), []
    step_times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        token, cache = _greedy_step(model, token, cache)
        generated.append(int(jax.block_until_ready(token)[0, 0]))
        step_times.append(time.perf_counter() - t0)
        if generated[-1] == EOS_ID:
            break
    timings["decode_total_s"] = time.perf_counter() - start
    timings["decode_step_s"] = float(np.median(step_times[1:])) if len(step_times) > 1 else step_times[0]

    result = {
        "size": size,
        "params": count_parameters(model),
        "tokenizer": tokenizer.describe()["backend"],
        "vocab_size": cfg.vocab_size,
        "image": list(images.shape),
        "instruction_ids": [int(t) for t in src[0]],
        "encoder_hidden": list(enc.hidden.shape),
        "image_tokens": int(enc.hidden.shape[1] - src.shape[1]),
        "generated_ids": generated,
        "generated_text (random weights)": tokenizer.decode(generated),
        "devices": [str(d) for d in jax.devices()[:1]],
        **{k: round(v, 4) for k, v in timings.items()},
    }
    for key in (
        "image",
        "encoder_hidden",
        "image_tokens",
        "build_s",
        "first_encode_s",
        "encode_s",
        "decode_step_s",
    ):
        print(f"{key:>16}: {result[key]}")
    return result
