"""`imtcxr model ...`: inspect a model size, and run it once end to end on one image.

imtcxr model info --size ofa_huge          parameter counts from abstract shapes (nothing allocated)
imtcxr model smoke --size ofa_tiny         build, encode an image + instruction, decode with the KV cache
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np
from flax import nnx

from imtcxr_jax.models.config import NAMED_CONFIGS, get_model_config
from imtcxr_jax.models.imtcxr import abstract_model, count_parameters


def parameter_breakdown(model: nnx.Module) -> dict[str, int]:
    """Unique parameters per top-level part (embedding, trunk, encoder rest, decoder) and in total."""
    sizes: dict[str, int] = {"embedding": 0, "resnet": 0, "encoder": 0, "decoder": 0}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        n = int(np.prod(var.shape))
        if path[0] == "embed_tokens":
            sizes["embedding"] += n
        elif path[:2] == ("encoder", "embed_images"):
            sizes["resnet"] += n
        else:
            sizes[str(path[0])] += n
    sizes["params"] = sum(sizes.values())
    return sizes


def model_info(size: str) -> dict[str, object]:
    cfg = get_model_config(size)
    model = abstract_model(cfg)
    breakdown = parameter_breakdown(model)
    assert breakdown["params"] == count_parameters(model)
    batch_stats = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(model, nnx.BatchStat)))
    return {
        "size": size,
        **breakdown,
        "batch_stats": batch_stats,
        "embed_dim": cfg.embed_dim,
        "ffn_dim": cfg.ffn_dim,
        "encoder_layers": cfg.encoder_layers,
        "decoder_layers": cfg.decoder_layers,
        "heads": cfg.heads,
        "resnet_blocks": list(cfg.resnet_blocks),
        "vocab_size": cfg.vocab_size,
        "float32_gib": round(breakdown["params"] * 4 / 2**30, 3),
    }


def cli_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="imtcxr model", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="parameter counts of a named size (last line: JSON)")
    info.add_argument("--size", required=True, choices=sorted(NAMED_CONFIGS))
    smoke = commands.add_parser("smoke", help="build a model and run encode + cached decoding on one image")
    smoke.add_argument("--size", default="ofa_tiny", choices=sorted(NAMED_CONFIGS))
    smoke.add_argument("--image-size", type=int, default=256)
    smoke.add_argument("--steps", type=int, default=8, help="tokens to decode greedily")
    smoke.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "info":
        start = time.perf_counter()
        result = model_info(args.size)
        print(
            f"{args.size}: {result['params']:,} parameters ({time.perf_counter() - start:.1f} s, abstract shapes)"
        )
        print(json.dumps(result))
        return 0
    from imtcxr_jax.models.smoke import run_smoke

    print(json.dumps(run_smoke(args.size, args.image_size, args.steps, args.seed)))
    return 0
