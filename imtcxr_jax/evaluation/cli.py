"""`imtcxr metrics ...`: score generated reports and label reports CheXpert-style.

    imtcxr metrics report --refs R --hyps H [--phrases-dir D] [--tokenizer auto|python|corenlp] [--no-meteor]
    imtcxr metrics label --reports F [--phrases-dir D]

Report files hold one report per line (a blank line is an empty report, so pairing by line number holds).
`report` prints, as its last line, one JSON object with bleu_1..bleu_4, meteor (a number, or null with a
``meteor_unavailable`` reason), rouge_l, cider and the clinical-efficacy ce_precision, ce_recall, ce_f1
(micro-averaged over the 14 CheXpert observations, a label counting as positive only when it is 1). `label`
prints one JSON object per report mapping each mentioned observation to 1, 0 or -1.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence


class InputError(Exception):
    """A problem with the user's input files or options, reported without a traceback."""


def _read_reports(path: str) -> list[str]:
    """One report per line; a final newline does not make an extra, empty report."""
    file = pathlib.Path(path)
    if not file.is_file():
        raise InputError(f"{path}: no such file (expected a text file with one report per line)")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not UTF-8 text ({error})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _labeler(phrases_dir: str | None):  # -> CheXpertLabeler, imported lazily
    from imtcxr_jax.evaluation.labeler import CheXpertLabeler

    try:
        return CheXpertLabeler(phrases_dir)
    except (FileNotFoundError, ValueError) as error:
        raise InputError(str(error)) from None


def _report(args: argparse.Namespace) -> int:
    from imtcxr_jax.evaluation.labeler import OBSERVATIONS
    from imtcxr_jax.evaluation.metrics import clinical_efficacy
    from imtcxr_jax.evaluation.report_metrics import score_reports

    references = _read_reports(args.refs)
    hypotheses = _read_reports(args.hyps)
    if len(references) != len(hypotheses):
        raise InputError(
            f"--refs {args.refs} has {len(references)} lines but --hyps {args.hyps} has {len(hypotheses)}; "
            "the files must pair line by line (one report per line). Nothing was computed."
        )
    if not references:
        raise InputError(f"--refs {args.refs} and --hyps {args.hyps} hold no reports. Nothing was computed.")
    labeler = _labeler(args.phrases_dir)  # fail on a bad phrase directory before the slow metrics
    print(f"scoring {len(references)} report pairs", file=sys.stderr)
    scores = score_reports(
        references, hypotheses, tokenizer=args.tokenizer, meteor=False if args.no_meteor else None
    )
    if args.no_meteor:
        scores["meteor_unavailable"] = "disabled by --no-meteor"
    efficacy = clinical_efficacy(
        labeler.label_many(references), labeler.label_many(hypotheses), observations=OBSERVATIONS
    )
    result = {key: scores[key] for key in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor")}
    if scores["meteor"] is None:
        result["meteor_unavailable"] = scores["meteor_unavailable"]
    result |= {
        "rouge_l": scores["rouge_l"],
        "cider": scores["cider"],
        "ce_precision": efficacy["precision"],
        "ce_recall": efficacy["recall"],
        "ce_f1": efficacy["f1"],
        "n_reports": len(references),
        "tokenizer": scores["tokenizer"],
    }
    print(json.dumps(result))
    return 0


def _label(args: argparse.Namespace) -> int:
    reports = _read_reports(args.reports)
    labeler = _labeler(args.phrases_dir)
    for report in reports:
        print(json.dumps(labeler.label(report)))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imtcxr metrics", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    phrases_help = (
        "directory of the CheXpert labeler phrase lists (default: ../shared/data/chexpert-labeler-phrases "
        "next to the repository)"
    )

    report = commands.add_parser(
        "report", help="BLEU-1..4, METEOR, ROUGE-L, CIDEr-D and CE P/R/F1 of reports"
    )
    report.add_argument("--refs", required=True, help="reference reports, one per line")
    report.add_argument("--hyps", required=True, help="generated reports, one per line, paired with --refs")
    report.add_argument("--phrases-dir", default=None, help=phrases_help)
    report.add_argument(
        "--tokenizer",
        choices=("auto", "python", "corenlp"),
        default="auto",
        help="PTB tokenizer: pycocoevalcap's CoreNLP jar, our Python equivalent, or auto (the jar if available)",
    )
    report.add_argument("--no-meteor", action="store_true", help="skip METEOR (it starts a JVM, ~10 s)")
    report.set_defaults(run=_report)

    label = commands.add_parser("label", help="label reports with the 14 CheXpert observations")
    label.add_argument("--reports", required=True, help="reports, one per line")
    label.add_argument("--phrases-dir", default=None, help=phrases_help)
    label.set_defaults(run=_label)
    return parser


def cli_main(argv: Sequence[str] | None = None) -> int:
    """Run ``imtcxr metrics`` with `argv` (without the group name); returns the exit code."""
    try:
        args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exit_:  # argparse exits on --help and on usage errors; hand back its code instead
        return int(exit_.code or 0)
    try:
        return args.run(args)
    except InputError as error:
        print(f"imtcxr metrics {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli_main())
