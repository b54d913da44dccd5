"""`imtcxr analyze FILE... --checkpoint W --out DIR`: the four-task evidence workflow on image files.

For each readable input (PNG, JPEG or DICOM, read by `data.image_io.read_image`) the command writes
``DIR/<name>.json``, the evidence document of `imtcxr_jax.workflow` (its schema is documented there), and
``DIR/<name>.png``, the overlay of `imtcxr_jax.overlay`. ``<name>`` is the input's file stem; inputs whose stems
collide (``a/x.png`` and ``b/x.png``, or ``x.png`` and ``x.dcm``) are told apart by their suffix and then a
counter (``x_png``, ``x_png-2``), and stderr says which input went where. Outputs of an earlier run with the same
names are replaced; each file is written to a temporary name first, so a failure never leaves half a file.

Files are read and analysed ``--batch-size`` at a time (every question of a workflow stage batched across the
images of a chunk), with a progress bar. An unreadable input (empty, truncated, not an image, a DICOM without
pixel data, too small) is named on stderr with the reason and skipped; the others still run, and the exit code
is 1 if any input failed (2 for a usage error). Images larger than `image_io.MAX_SIDE` are downscaled when read
(the document still reports the original size and coordinates; the overlay is drawn at most
`overlay.MAX_SIDE` pixels on a side).

Edited evidence. A FILE ending in ``.json`` is an evidence document written by an earlier run, whose
``findings`` (remove one, change a severity or location) and ``measurements`` (ctr, pcr) the user may have
edited: only its report is asked again, from that evidence and with the settings the document records (the
options below apply to images only), its ``flags`` are recomputed and it is written, with a new overlay, as
``DIR/<name>.json`` / ``.png`` like any other input (``--out`` the document's own folder replaces it). Its
image is read from the path the document records (``image.path``): as given, else relative to the document's
folder, else the file of that name in the document's folder. The document's ``model`` provenance gains
``report_regenerated_by``, the checkpoint and step that asked the report again.

What is asked: by default the labels, and which of them get a location, a severity or a box, are those the
checkpoint was trained on (read from its training data, `workflow.questions_from_records`); ``--labels``
overrides the label list. W is a training workdir (`imtcxr train --workdir`): its newest checkpoint is used;
or a converted checkpoint folder (`imtcxr convert from-ofa`), whose OFA BPE folder ``--bpe-dir`` may override.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

log = logging.getLogger(__name__)


def cli_main(argv: list[str]) -> int:
    """`imtcxr analyze FILE... --checkpoint W --out DIR`: evidence JSON and an overlay PNG per image, or per
    edited evidence document (its report asked again)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1 or (args.beam is not None and args.beam < 1):
        parser.error("--batch-size and --beam must be at least 1")
    for name in ("threshold", "review_threshold"):
        value = getattr(args, name)
        if value is not None and not 0.0 <= value <= 1.0:
            parser.error(f"--{name.replace('_', '-')} must be a probability in [0, 1], got {value}")

    # Heavy imports only once the arguments are known to be good (fast --help and usage errors).
    from imtcxr_jax import workflow
    from imtcxr_jax.train.loop import load_trained_model

    try:
        model, tokenizer, config, step = load_trained_model(args.checkpoint, bpe_dir=args.bpe_dir)
    except (ValueError, FileNotFoundError) as error:
        print(f"imtcxr analyze: --checkpoint {args.checkpoint}: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    inputs = _unique_inputs(args.files)
    names = output_names(inputs)
    images = [(path, name) for path, name in zip(inputs, names, strict=True) if not _is_document(path)]
    documents = [(path, name) for path, name in zip(inputs, names, strict=True) if _is_document(path)]
    options = _image_options(args, config, workflow) if images else None
    if images and options is None:
        return 2
    if documents and any(getattr(args, name) is not None for name in _IMAGE_OPTIONS):
        print(
            "imtcxr analyze: --labels, --threshold, --review-threshold and --beam apply to images only; the "
            "reports of evidence documents are asked again with the settings each document records",
            file=sys.stderr,
        )
    provenance = {"checkpoint": str(Path(args.checkpoint).absolute()), "step": step}

    out.mkdir(parents=True, exist_ok=True)
    for path, name in zip(inputs, names, strict=True):
        if name != path.stem:
            print(
                f"imtcxr analyze: {path} -> {out / name}.json (another input has the stem {path.stem!r})",
                file=sys.stderr,
            )

    failed = 0
    progress = tqdm(total=len(inputs), desc="analyze", unit="file", file=sys.stderr)
    for chunk in _chunks(images, args.batch_size):
        failed += _analyze_chunk(chunk, model, tokenizer, options, provenance, out, args.no_overlay)
        progress.update(len(chunk))
    for chunk in _chunks(documents, args.batch_size):
        failed += _regenerate_chunk(
            chunk, model, tokenizer, args.batch_size, provenance, out, args.no_overlay
        )
        progress.update(len(chunk))
    progress.close()
    written = len(inputs) - failed
    print(f"imtcxr analyze: {written} of {len(inputs)} inputs analysed into {out}", file=sys.stderr)
    if failed:
        print(f"imtcxr analyze: {failed} input(s) failed (named above)", file=sys.stderr)
    return 1 if failed else 0


_IMAGE_OPTIONS = ("labels", "threshold", "review_threshold", "beam")


def _image_options(args: argparse.Namespace, config: Any, workflow: Any) -> Any | None:
    """The `workflow.WorkflowOptions` images are analysed with: the checkpoint's config, what its training data
    taught (`_trained_questions`) and the command line; None (after saying why) if they are not valid."""
    overrides: dict[str, Any] = _trained_questions(config, Path(args.checkpoint))
    if args.labels:
        overrides |= {"labels": tuple(label.strip() for label in args.labels.split(",") if label.strip())}
    for name in ("threshold", "review_threshold"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.beam is not None:
        overrides["beam_size"] = args.beam
    try:
        return workflow.WorkflowOptions.from_config(config, batch_size=args.batch_size, **overrides)
    except ValueError as error:
        print(f"imtcxr analyze: {error}", file=sys.stderr)
        return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imtcxr analyze",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "files", nargs="+", metavar="FILE",
        help="PNG, JPEG or DICOM images, or (edited) evidence documents (.json) whose reports to ask again",
    )  # fmt: skip
    parser.add_argument(
        "--checkpoint", required=True, metavar="W",
        help="a training workdir (newest checkpoint) or a converted checkpoint (imtcxr convert)",
    )  # fmt: skip
    parser.add_argument("--bpe-dir", metavar="BPE", help="OFA BPE folder, overriding the checkpoint's record")
    parser.add_argument("--out", required=True, metavar="DIR", help="where <name>.json and <name>.png go")
    parser.add_argument(
        "--batch-size", type=int, default=16, help="files per chunk and questions per model call (16)"
    )
    parser.add_argument(
        "--beam", type=int, default=None, metavar="K", help="beam size (default: the config's); images only"
    )
    parser.add_argument(
        "--labels", help="comma-separated labels to ask about (default: those trained on); images only"
    )
    parser.add_argument(
        "--threshold", type=float, help="P(yes) from which a label is a finding (0.5); images only"
    )
    parser.add_argument(
        "--review-threshold", type=float, help="flag findings less confident than this (0.75); images only"
    )
    parser.add_argument("--no-overlay", action="store_true", help="write the JSON documents only")
    return parser


# ------------------------------------------------------------------------------------------------------------
# Inputs and output names


def _unique_inputs(files: Sequence[str]) -> list[Path]:
    """The inputs in order, a file given twice (by any spelling of its path) only once."""
    seen: set[Path] = set()
    unique = []
    for file in files:
        path = Path(file)
        key = path.resolve()
        if key in seen:
            print(f"imtcxr analyze: {path} is given more than once; analysed once", file=sys.stderr)
            continue
        seen.add(key)
        unique.append(path)
    return unique


def output_names(paths: Sequence[Path]) -> list[str]:
    """One output name per input, distinct: the stem; for stems shared by several inputs, stem + "_" + suffix
    (``x_png``); for what still collides, a counter from the second on (``x_png-2``). Case-insensitive, so that
    the names are distinct on case-insensitive file systems too."""
    stems = collections.Counter(path.stem.lower() for path in paths)
    names = [
        path.stem if stems[path.stem.lower()] == 1 else f"{path.stem}_{path.suffix.lstrip('.') or 'none'}"
        for path in paths
    ]
    used: set[str] = set()
    unique = []
    for name in names:
        candidate, count = name, 1
        while candidate.lower() in used:
            count += 1
            candidate = f"{name}-{count}"
        used.add(candidate.lower())
        unique.append(candidate)
    return unique


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _trained_questions(config: Any, workdir: Path) -> dict[str, Any]:
    """`workflow.questions_from_records` of the checkpoint's training data, when it can still be read;
    otherwise nothing (every label of the default vocabulary is asked everything)."""
    from imtcxr_jax.data.sources import load_records
    from imtcxr_jax.workflow import questions_from_records

    dataset = config.dataset
    folder = workdir / "data" / "train" if dataset.source == "phantom" else Path(dataset.train_dir or "")
    if not (folder / "manifest.jsonl").is_file():
        print(
            f"imtcxr analyze: training data {folder} not found; asking about the default labels",
            file=sys.stderr,
        )
        return {}
    records, _ = load_records(folder, check_images=False)
    questions = questions_from_records(records)
    return questions if questions["labels"] else {}


# ------------------------------------------------------------------------------------------------------------
# One chunk


def _analyze_chunk(chunk, model, tokenizer, options, provenance, out: Path, no_overlay: bool) -> int:
    """Read, analyse and write the files of one chunk; returns how many failed (each named on stderr)."""
    from imtcxr_jax import workflow
    from imtcxr_jax.data.image_io import ImageReadError, read_image

    failed = 0
    ready = []  # (name, pixels, prepared image)
    for path, name in chunk:
        try:
            loaded = read_image(path)
            prepared = workflow.prepare_image(
                loaded.pixels, options, str(path), (loaded.width, loaded.height)
            )
        except (ImageReadError, ValueError) as error:
            _fail(path, error)
            failed += 1
            continue
        ready.append((name, loaded.pixels, prepared))
    if not ready:
        return failed
    try:
        documents = workflow.run_workflow(
            model, tokenizer, [prepared for _, _, prepared in ready], options, provenance=provenance
        )
    except Exception as error:  # a failure of the model run must not end the other chunks
        log.debug("workflow failed", exc_info=True)
        for _, _, prepared in ready:
            _fail(prepared.path, error)
        return failed + len(ready)
    for (name, pixels, prepared), document in zip(ready, documents, strict=True):
        failed += _write_outputs(out, name, document, pixels, no_overlay, prepared.path)
    return failed


def _regenerate_chunk(
    chunk, model, tokenizer, batch_size: int, provenance, out: Path, no_overlay: bool
) -> int:
    """Ask the reports of a chunk of (edited) evidence documents again, batched, and write the documents and
    their overlays; returns how many failed (each named on stderr)."""
    from imtcxr_jax import workflow
    from imtcxr_jax.data.image_io import ImageReadError, read_image

    failed = 0
    ready = []  # (path, name, document, pixels, prepared image)
    for path, name in chunk:
        try:
            document = _read_document(path)
            loaded = read_image(_document_image(path, document))
            prepared = workflow.check_edited_document(document, loaded.pixels)
        except (ImageReadError, ValueError) as error:
            _fail(path, error)
            failed += 1
            continue
        ready.append((path, name, document, loaded.pixels, prepared))
    if not ready:
        return failed
    try:
        documents = workflow.regenerate_reports(
            model, tokenizer, [item[2] for item in ready], [item[4] for item in ready], batch_size=batch_size
        )
    except Exception as error:  # a failure of the model run must not end the other chunks
        log.debug("report regeneration failed", exc_info=True)
        for path, *_ in ready:
            _fail(path, error)
        return failed + len(ready)
    for (path, name, _, pixels, _), document in zip(ready, documents, strict=True):
        evidence_from = document.get("model") if isinstance(document.get("model"), dict) else {}
        if {k: evidence_from.get(k) for k in provenance} != provenance:
            tqdm.write(
                f"imtcxr analyze: {path}: its evidence came from {evidence_from.get('checkpoint')} (step "
                f"{evidence_from.get('step')}); the report is asked of {provenance['checkpoint']} (step "
                f"{provenance['step']})",
                file=sys.stderr,
            )
        document["model"] = {**evidence_from, "report_regenerated_by": dict(provenance)}
        failed += _write_outputs(out, name, document, pixels, no_overlay, path)
    return failed


def _write_outputs(out: Path, name: str, document: dict, pixels, no_overlay: bool, source: Any) -> int:
    """Write DIR/<name>.json and (unless no_overlay) DIR/<name>.png; 1 if that failed (named on stderr)."""
    from imtcxr_jax.overlay import draw_overlay

    try:
        _write_atomic(out / f"{name}.json", json.dumps(document, indent=2, allow_nan=False).encode() + b"\n")
        if not no_overlay:
            _write_png(out / f"{name}.png", draw_overlay(pixels, document))
    except (OSError, ValueError) as error:
        _fail(source, error)
        return 1
    return 0


def _is_document(path: Path) -> bool:
    return path.suffix.lower() == ".json"


def _read_document(path: Path) -> dict:
    """The evidence document in `path`: a JSON object with a schema_version (the rest is checked by
    `workflow.check_edited_document`)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot be read as text: {error}") from error
    if not text.strip():
        raise ValueError(
            f"{path}: empty file, expected an evidence document (JSON) written by imtcxr analyze"
        )
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path}: not JSON ({error}); expected an evidence document of imtcxr analyze"
        ) from None
    if not isinstance(document, dict) or "schema_version" not in document:
        what = "an object without schema_version" if isinstance(document, dict) else type(document).__name__
        raise ValueError(
            f"{path}: expected a JSON object, an evidence document of imtcxr analyze; got {what}"
        )
    return document


def _document_image(path: Path, document: dict) -> Path:
    """The image a document was made from: its ``image.path`` as given, else relative to the document's
    folder, else the file of that name in the document's folder."""
    image = document.get("image")
    recorded = image.get("path") if isinstance(image, dict) else None
    if not isinstance(recorded, str) or not recorded:
        raise ValueError(f"{path}: names no image (image.path), so its report cannot be asked again")
    given = Path(recorded)
    candidates = [given] if given.is_absolute() else [given, path.parent / given]
    candidates = list(dict.fromkeys([*candidates, path.parent / given.name]))
    found = next((candidate for candidate in candidates if candidate.is_file()), None)
    if found is None:
        looked = ", ".join(str(candidate) for candidate in candidates)
        raise ValueError(f"{path}: its image {recorded} is not found (looked for {looked})")
    return found


def _fail(path: Any, error: BaseException) -> None:
    """Name the input and the reason on stderr (image_io's and prepare_image's messages start with the path)."""
    message = str(error)
    if not message.startswith(str(path)):
        message = f"{path}: {type(error).__name__}: {message}"
    tqdm.write(f"imtcxr analyze: {message}", file=sys.stderr)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file next to `path`, then rename it over `path`."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _write_png(path: Path, image: Any) -> None:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    _write_atomic(path, buffer.getvalue())
