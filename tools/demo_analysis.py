"""The main job's last step: analyse one held-out phantom of a training workdir with the four-task workflow
(`imtcxr analyze`) and print what it found beside what was drawn into the phantom.

  python tools/demo_analysis.py runs/phantom_tiny [--out DIR]

The phantom is the first held-out one with a finding (the first one if none has). The evidence document and
its overlay go to DIR (default WORKDIR/analysis), named after the image.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from imtcxr_jax.analyze import cli_main as analyze_main
from imtcxr_jax.cli import configure_compilation_cache


def first_phantom_with_a_finding(manifest: Path) -> dict:
    """The manifest's first record with a finding, else its first record."""
    records = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not records:
        raise ValueError(f"{manifest}: no records")
    return next((record for record in records if record.get("findings")), records[0])


def _number(value) -> str:
    return "none" if value is None else f"{value:.2f}"


def _finding_line(label: str, details: list[str], box) -> str:
    if box:
        details = [*details, "box [" + ", ".join(f"{v:.0f}" for v in box) + "]"]
    return f"  {label}" + (f": {', '.join(details)}" if details else "")


def describe(document: dict, truth: dict) -> list[str]:
    """Lines comparing the evidence document's findings, measurements and report with the phantom's truth."""
    lines = ["found:"]
    for finding in document["findings"] or [{"label": "no finding"}]:
        confidence = finding.get("confidence")
        details = [] if confidence is None else [f"confidence {confidence:.2f}"]
        details += [f"{key} {finding[key]}" for key in ("severity", "location") if finding.get(key)]
        lines.append(_finding_line(finding["label"], details, finding.get("box")))
    measured = document["measurements"]
    lines.append(f"  CTR {_number(measured.get('ctr'))}, PCR {_number(measured.get('pcr'))}")
    lines.append(f"  report: {document['report'] or '(none)'}")
    for flag in document.get("flags", []):
        lines.append(f"  flag ({flag['kind']}): {flag['message']}")
    lines.append("drawn into the phantom:")
    for finding in truth.get("findings") or [{"label": "no finding"}]:
        location = finding.get("location")
        where = " ".join(location.values()) if isinstance(location, dict) else location
        details = [str(part) for part in (finding.get("severity"), where) if part]
        lines.append(_finding_line(finding["label"], details, finding.get("box")))
    lines.append(f"  CTR {_number(truth.get('ctr'))}, PCR {_number(truth.get('pcr'))}")
    lines.append(f"  report: {truth.get('report', '')}")
    return lines


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("workdir", type=Path, help="a training workdir of the phantom main job")
    parser.add_argument(
        "--out", type=Path, help="where the document and overlay go (default WORKDIR/analysis)"
    )
    args = parser.parse_args(argv)
    held_out = args.workdir / "data" / "eval"
    try:
        truth = first_phantom_with_a_finding(held_out / "manifest.jsonl")
    except (OSError, ValueError) as error:
        print(f"demo_analysis: the workdir's held-out phantoms: {error}", file=sys.stderr)
        return 2
    image = held_out / truth["image"]
    out = args.out or args.workdir / "analysis"
    configure_compilation_cache()  # as `imtcxr analyze` does
    code = analyze_main([str(image), "--checkpoint", str(args.workdir), "--out", str(out)])
    if code != 0:
        return code
    document = json.loads((out / f"{image.stem}.json").read_text(encoding="utf-8"))
    print(f"analysed {image} -> {out / image.stem}.json and .png")
    print("\n".join(describe(document, truth)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
