"""The `imtcxr` command line.

Each command group lives next to the code it drives and exposes `cli_main(argv) -> int`; this file only
routes `imtcxr GROUP ...` to it, importing lazily so that `imtcxr --help` stays fast and a group's heavy
dependencies are loaded only when that group runs.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from pathlib import Path

# group name -> (module holding `cli_main`, one-line description)
COMMAND_GROUPS: dict[str, tuple[str, str]] = {
    "model": ("imtcxr_jax.models.cli", "inspect and exercise the model (info, smoke)"),
    "tokenizer": ("imtcxr_jax.text.tokenizer", "train or inspect a tokenizer"),
    "data": ("imtcxr_jax.data.cli", "generate phantom radiographs and build datasets"),
    "metrics": ("imtcxr_jax.evaluation.cli", "score reports and label them CheXpert-style"),
    "train": ("imtcxr_jax.train.cli", "train or resume a model in a workdir"),
    "eval": ("imtcxr_jax.evaluate", "score a trained workdir on held-out data"),
    "analyze": ("imtcxr_jax.analyze", "run the four-task evidence workflow on images"),
    "convert": ("imtcxr_jax.convert.cli", "convert checkpoints: OFA / IMT-CXR fairseq <-> ours, ResNet"),
}

# The groups that compile XLA programs: their compiled programs are kept between runs (see below).
JAX_GROUPS = frozenset({"model", "train", "eval", "analyze"})

# Programs that compile in less than this are compiled again rather than read back. With JAX's default (1 s)
# it keeps only 3 of the programs `imtcxr analyze` compiles for the demo's model, and a second analysis of
# one image took 10.9 s; from 0.1 s, 7.0 s (17.5 s without the cache, on a 2-core CPU).
CACHE_MIN_COMPILE_SECONDS = 0.1
CACHE_MAX_BYTES = 2 * 2**30  # beyond this JAX deletes the least recently used programs


def compilation_cache_dir(environ: Mapping[str, str] = os.environ) -> Path | None:
    """Where JAX's persistent compilation cache goes for an `imtcxr` run: IMTCXR_COMPILATION_CACHE (a folder,
    or "off"), else $XDG_CACHE_HOME/imtcxr_jax/xla (~/.cache/imtcxr_jax/xla). None when it is off, or when
    JAX_COMPILATION_CACHE_DIR is set (JAX then uses that folder with its own settings; the tests do this)."""
    if environ.get("JAX_COMPILATION_CACHE_DIR"):
        return None
    chosen = environ.get("IMTCXR_COMPILATION_CACHE")
    if chosen is not None:
        return None if chosen.strip().lower() in ("", "off", "0", "none") else Path(chosen).expanduser()
    cache_home = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home) / "imtcxr_jax" / "xla"


def configure_compilation_cache(environ: Mapping[str, str] = os.environ) -> Path | None:
    """Keep compiled XLA programs between runs, in `compilation_cache_dir(environ)`. A program is looked up
    by a hash of the program itself, the JAX/XLA versions, the backend and the compiler options, so a
    cached program is exactly what compiling would give. Returns the folder (None: nothing was changed)."""
    folder = compilation_cache_dir(environ)
    if folder is not None:
        import jax

        jax.config.update("jax_compilation_cache_dir", str(folder))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_SECONDS)
        jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
    return folder


def _usage() -> str:
    lines = ["usage: imtcxr GROUP [ARGS...]", "", "groups:"]
    lines += [f"  {name:<10} {description}" for name, (_, description) in COMMAND_GROUPS.items()]
    lines += ["", "Run `imtcxr GROUP --help` for the commands of a group."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    group, rest = argv[0], argv[1:]
    if group not in COMMAND_GROUPS:
        print(f"imtcxr: unknown command group {group!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    if group in JAX_GROUPS and not any(flag in rest for flag in ("-h", "--help")):
        configure_compilation_cache()
    module = importlib.import_module(COMMAND_GROUPS[group][0])
    return int(module.cli_main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
