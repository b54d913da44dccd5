"""``imtcxr data build NAME --manual-dir DIR --out DIR [--strict] [--overwrite]``: build one real dataset."""

from __future__ import annotations

import argparse
import json
import sys

from imtcxr_jax.data.tfds import BUILDERS, build, builder_class


def add_parser(commands: argparse._SubParsersAction) -> None:
    epilog = "\n".join(
        f"  {name:15s} {(builder_class(name).__doc__ or '').strip().splitlines()[0]}" for name in BUILDERS
    )
    parser = commands.add_parser(
        "build",
        help="build a real dataset (downloaded by you) into TFDS ArrayRecord files",
        description="Build a real chest X-ray dataset from its download (--manual-dir) into TFDS ArrayRecord "
        "files under --out/NAME/<version>, with records-<split>.jsonl and build_report.json. Bad rows are "
        "counted by reason and the build goes on (--strict: stop at the first).",
        epilog="datasets:\n" + epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", choices=list(BUILDERS), metavar="NAME", help="dataset (listed below)")
    parser.add_argument("--manual-dir", required=True, help="the folder holding the downloaded dataset")
    parser.add_argument("--out", required=True, help="TFDS data dir to write into")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad row")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing build")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_command(args: argparse.Namespace) -> int:
    import tensorflow_datasets as tfds

    from imtcxr_jax.data.tfds.common import BuildError

    tfds.disable_progress_bar()  # ours shows images per split
    try:
        folder, log = build(
            args.name,
            args.manual_dir,
            args.out,
            strict=args.strict,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except (BuildError, FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"imtcxr data build {args.name}: {error}", file=sys.stderr)
        return 1
    print(log.summary())
    print(f"built {folder} (report: {folder / 'build_report.json'})")
    print(json.dumps({"dataset": args.name, "folder": str(folder), **log.to_dict()}, separators=(",", ":")))
    return 0
