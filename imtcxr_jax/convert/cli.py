"""`imtcxr convert {from-ofa,to-ofa,resnet} ...`: move checkpoints between the original PyTorch code and ours.

  imtcxr convert from-ofa CKPT.pt --out DIR [--bpe-dir BPE]   fairseq OFA / IMT-CXR checkpoint -> DIR
  imtcxr convert to-ofa DIR --out CKPT.pt [--safetensors]    converted DIR or training workdir -> fairseq
  imtcxr convert resnet R50.pth --out DIR --model-size NAME  ImageNet ResNet (torchvision names) -> trunk

DIR (`convert.model_dir`) is used like a training workdir: `imtcxr analyze --checkpoint DIR`, `imtcxr eval
--checkpoint DIR`, `imtcxr convert to-ofa DIR`, and `imtcxr train ... --config.init_from=DIR`. Checkpoints are
read without running any code stored in them (`convert.safe_pickle`). Each command prints a JSON summary as
its last line; errors name the file and the key, and nothing half-written is left behind.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any


def _parse_sets(items: list[str]) -> dict[str, Any]:
    """--set FIELD=VALUE for ModelConfig fields (types from the field defaults)."""
    from imtcxr_jax.models.config import ModelConfig

    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    values: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or name not in fields:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {sorted(fields)}")
        kind = fields[name].type
        if kind in ("bool", bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"--set {name}: got {text!r}, expected true or false")
            values[name] = text.lower() in ("true", "1")
        elif kind in ("int", int):
            values[name] = int(text)
        elif kind in ("float", float):
            values[name] = float(text)
        elif name == "resnet_blocks":
            values[name] = tuple(int(n) for n in text.strip("()").split(","))
        else:
            values[name] = text
    return values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imtcxr convert",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join((__doc__ or "").split("\n\n")[1:]),
    )
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("from-ofa", help="a fairseq OFA / IMT-CXR checkpoint -> a converted folder")
    p.add_argument("checkpoint", metavar="CKPT", help="the .pt / .pth file (or a safetensors file of to-ofa)")
    p.add_argument("--out", required=True, metavar="DIR", help="the converted folder to write")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--bpe-dir", metavar="BPE", help="OFA BPE folder (encoder.json, vocab.bpe, dict.txt)")
    group.add_argument(
        "--tokenizer", metavar="FILE", help="a saved tokenizer .json instead (other vocabularies)"
    )
    p.add_argument(
        "--image-size", type=int, help="input size for analyse/eval (default: the stored task's, 512)"
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE",
        help="override a model option the file does not store (e.g. disable_entangle=true); repeatable",
    )  # fmt: skip
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing DIR (once the new one is done)"
    )

    p = commands.add_parser("to-ofa", help="a converted folder or a training workdir -> a fairseq checkpoint")
    p.add_argument("source", metavar="DIR", help="converted folder, or training workdir (its latest step)")
    p.add_argument("--out", required=True, metavar="CKPT", help="the .pt file (or .safetensors) to write")
    p.add_argument("--safetensors", action="store_true", help="write the same tensors as a safetensors file")
    p.add_argument(
        "--dtype", choices=("float32", "float16", "bfloat16"),
        help="floating dtype of the written tensors (default: the source checkpoint's, else float32)",
    )  # fmt: skip
    p.add_argument("--bpe-dir", metavar="BPE", help="OFA BPE folder, if the workdir's recorded one moved")

    p = commands.add_parser("resnet", help="ImageNet ResNet weights (torchvision names) -> the image trunk")
    p.add_argument(
        "weights", metavar="WEIGHTS", help="a torchvision resnet50/101/152 state dict (.pth, .safetensors)"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="the converted folder to write")
    base = p.add_mutually_exclusive_group(required=True)
    base.add_argument(
        "--model-size", metavar="NAME", help="a named size; the rest of the model is initialised fresh"
    )
    base.add_argument("--init", metavar="DIR0", help="a converted folder whose trunk is replaced")
    p.add_argument("--seed", type=int, default=0, help="seed of the fresh initialisation (--model-size)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--bpe-dir", metavar="BPE", help="OFA BPE folder: the OFA vocabulary")
    group.add_argument(
        "--tokenizer", metavar="FILE", help="a saved tokenizer .json (sets the vocabulary size)"
    )
    p.add_argument("--image-size", type=int, default=512, help="input size for analyse/eval (512)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing DIR (once the new one is done)"
    )
    return parser


def cli_main(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "from-ofa":
            summary = _from_ofa(args)
        elif args.command == "to-ofa":
            summary = _to_ofa(args)
        else:
            summary = _resnet(args)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as error:
        print(f"imtcxr convert {args.command}: {error}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


def _from_ofa(args: argparse.Namespace) -> dict[str, Any]:
    from imtcxr_jax.convert.ofa_torch import convert_from_ofa

    info = convert_from_ofa(
        args.checkpoint, args.out, bpe_dir=args.bpe_dir, tokenizer_file=args.tokenizer,
        image_size=args.image_size, overrides=_parse_sets(args.set), overwrite=args.overwrite,
    )  # fmt: skip
    for note in info["assumed"]:
        print(f"imtcxr convert from-ofa: note: {note}", file=sys.stderr)
    if args.bpe_dir is None and args.tokenizer is None:
        print(
            "imtcxr convert from-ofa: no --bpe-dir given: pass --bpe-dir to analyze/eval when using the folder",
            file=sys.stderr,
        )
    keys = ("arch", "named_size", "tensors_loaded", "source_dtype")
    return {"out": str(Path(args.out).absolute()), **{k: info[k] for k in keys}}


def _to_ofa(args: argparse.Namespace) -> dict[str, Any]:
    from imtcxr_jax.convert.ofa_torch import convert_to_ofa

    return convert_to_ofa(
        args.source, args.out, safetensors=args.safetensors, dtype=args.dtype, bpe_dir=args.bpe_dir
    )


def _resnet(args: argparse.Namespace) -> dict[str, Any]:
    import jax
    import numpy as np
    from flax import nnx

    from imtcxr_jax.convert.model_dir import experiment_config, load_converted_model, write_model_dir
    from imtcxr_jax.convert.resnet_torch import load_torchvision_resnet, read_resnet_state_dict
    from imtcxr_jax.models.config import get_model_config
    from imtcxr_jax.models.imtcxr import create_model
    from imtcxr_jax.models.layers import Keys
    from imtcxr_jax.models.resnet import ResNetTrunk
    from imtcxr_jax.text.tokenizer import OfaTokenizer, load_tokenizer

    state = read_resnet_state_dict(args.weights)  # a bad file fails before any model is built
    tokenizer = None
    if args.bpe_dir:
        tokenizer = OfaTokenizer(args.bpe_dir)
    elif args.tokenizer:
        tokenizer = load_tokenizer(args.tokenizer)
    if args.init:
        model, config = load_converted_model(args.init)
        model_size = config.model_size
        if tokenizer is not None and tokenizer.vocab_size != model.cfg.vocab_size:
            raise ValueError(
                f"{args.init}: the model has {model.cfg.vocab_size} ids, the tokenizer {tokenizer.vocab_size}"
            )
        report = load_torchvision_resnet(model.encoder.embed_images, state, source=str(args.weights))
    else:
        cfg = get_model_config(args.model_size)
        if tokenizer is not None:
            cfg = cfg.replace(vocab_size=tokenizer.vocab_size)
        # The trunk first (a file of the wrong depth fails before the whole model is initialised).
        graphdef, zeros = nnx.split(nnx.eval_shape(lambda: ResNetTrunk(cfg, rngs=Keys(params=0))))
        trunk = nnx.merge(graphdef, jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), zeros))
        report = load_torchvision_resnet(trunk, state, source=str(args.weights))
        model, model_size = create_model(cfg, seed=args.seed), args.model_size
        nnx.update(model.encoder.embed_images, nnx.state(trunk))
    config = experiment_config(
        model.cfg, model_size=model_size, tokenizer_kind=getattr(tokenizer, "backend", "ofa"),
        bpe_dir=str(Path(args.bpe_dir).absolute()) if args.bpe_dir else "", image_size=args.image_size,
    )  # fmt: skip
    info = {
        "source": str(Path(args.weights).absolute()),
        "arch": None,
        "named_size": model_size,
        "resnet_depth": report.depth,
        "trunk_tensors_loaded": report.loaded,
        "unused": report.unused,
        "initialised": f"--init {args.init}" if args.init else f"fresh, seed {args.seed}",
        "assumed": [],
        "source_dtype": "float32",
        "dtype_exceptions": {},
        "num_batches_tracked": {},
        "key_order": [],
        "source_container": {},
    }
    write_model_dir(args.out, model, config=config, tokenizer=tokenizer, info=info, overwrite=args.overwrite)
    unused = sorted({k.split(".")[0] for k in report.unused})
    return {
        "out": str(Path(args.out).absolute()),
        "resnet_depth": report.depth,
        "loaded": report.loaded,
        "unused": unused,
    }
