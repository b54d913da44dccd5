"""The `imtcxr` command line.

Each command group lives next to the code it drives and exposes `cli_main(argv) -> int`; this file only
routes `imtcxr GROUP ...` to it, importing lazily so that `imtcxr --help` stays fast and a group's heavy
dependencies are loaded only when that group runs.
"""

from __future__ import annotations

import importlib
import sys

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
    module = importlib.import_module(COMMAND_GROUPS[group][0])
    return int(module.cli_main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
