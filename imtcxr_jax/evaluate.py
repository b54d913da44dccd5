"""Run a model over held-out examples and score every task, with the best constant answer as a yardstick.

- classification: for every (image, label) the model is asked " is {label} in this image?"; the score is
  P(" yes") / (P(" yes") + P(" no")) of the first answer token (one teacher-forced decoder step). AUC per label
  and macro; F1 at 0.5.
- localization: the box of each finding, decoded greedily under the box constraint (4 bins, x0 <= x1,
  y0 <= y1); ACC@IoU>=0.5 and mIoU against the best-matching ground-truth box. Baseline: the mean ground-truth
  box of the same label over the evaluated set (an oracle constant, so the comparison favours the baseline).
- segmentation: each structure's 30-point polygon under the polygon constraint; Dice. Baseline: the
  point-wise mean polygon of the structure (polygons share start point and orientation).
- report: greedy (or beam) report, plain and evidence-prompted; CE precision/recall/F1 through the
  CheXpert-style labeler against the reference report; BLEU-4 and ROUGE-L (project tokenizer, no Java).

`evaluate_suite` runs the paper's protocols of an evaluation config instead (`evaluation.protocols`: per
dataset, scored in original pixels, with bootstrap intervals; `evaluation.tables` writes them). Both use the
same per-task answers: `presence_probabilities`, `predict_boxes`, `predict_polygons`, `generate_reports`.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from imtcxr_jax.data.pipeline import EvalExample, EvalSet
from imtcxr_jax.decoding.beam_search import beam_search, encode, first_token_log_probs
from imtcxr_jax.decoding.constraints import BoxConstraint, PolygonConstraint
from imtcxr_jax.evaluation import metrics
from imtcxr_jax.evaluation.labeler import OBSERVATIONS, CheXpertLabeler
from imtcxr_jax.evaluation.report_metrics import bleu, rouge_l
from imtcxr_jax.models.imtcxr import IMTCXR
from imtcxr_jax.tasks import localization, segmentation
from imtcxr_jax.tasks.common import Task, Unparseable
from imtcxr_jax.text.tokenizer import Tokenizer

HEADLINE_LABELS = ("cardiomegaly", "pleural effusion", "pneumothorax")
log = logging.getLogger(__name__)


def _batches(examples: list[EvalExample], eval_set: EvalSet, batch_size: int):
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        padded = chunk + [chunk[-1]] * (batch_size - len(chunk))  # static shapes: one compilation
        src = np.stack([e.arrays["src"] for e in padded])
        yield chunk, jnp.asarray(src), jnp.asarray(eval_set.images(padded))


def _decode_texts(
    model, graphdef, state, examples, eval_set, tokenizer, batch_size, constraint, max_len, beam
):
    texts = []
    for chunk, src, images in _batches(examples, eval_set, batch_size):
        enc = encode(graphdef, state, src, images)
        result = beam_search(
            model, enc, beam_size=beam, max_len=max_len, constraint=constraint,
            no_repeat_ngram_size=0 if constraint is not None else 3,
        )  # fmt: skip
        tokens = np.asarray(result.tokens[:, 0])
        texts += [tokenizer.decode(row.tolist()) for row in tokens[: len(chunk)]]
    return texts


# --- Model answers per task, shared by `evaluate` and `evaluate_suite` ----------------------------------------


def presence_probabilities(
    model: IMTCXR, examples: list[EvalExample], eval_set: EvalSet, tokenizer: Tokenizer, batch_size: int
) -> np.ndarray:
    """P(" yes") / (P(" yes") + P(" no")) of the first answer token of each presence question."""
    if not examples:
        return np.zeros(0)
    graphdef, state = nnx.split(model)
    yes, no = tokenizer.encode(" yes")[0], tokenizer.encode(" no")[0]
    probabilities = []
    for chunk, src, images in _batches(examples, eval_set, batch_size):
        lp = np.asarray(first_token_log_probs(graphdef, state, src, images))[: len(chunk)]
        probabilities += list(1.0 / (1.0 + np.exp(lp[:, no] - lp[:, yes])))
    return np.asarray(probabilities, dtype=np.float64)


def presence_matrix(
    examples: list[EvalExample], probabilities: np.ndarray, labels: list[str], records: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """(truth, score), each (len(records), len(labels)): the answer and P(yes) per (record, label); score is
    NaN where no question was asked (e.g. left out for being too long)."""
    truth = np.zeros((len(records), len(labels)))
    score = np.full((len(records), len(labels)), np.nan)
    rows = {record: row for row, record in enumerate(records)}
    columns = {label: column for column, label in enumerate(labels)}
    for example, p in zip(examples, probabilities, strict=True):
        row, col = rows[example.ref.record], columns[example.ref.subject]
        truth[row, col], score[row, col] = float(example.truth), p
    return truth, score


def predict_boxes(
    model: IMTCXR, examples: list[EvalExample], eval_set: EvalSet, tokenizer: Tokenizer, batch_size: int,
    beam_size: int,
) -> list[np.ndarray | None]:  # fmt: skip
    """The first box of each answer, (4,) canvas pixels, decoded under the box constraint; None when
    unparseable."""
    if not examples:
        return []
    graphdef, state = nnx.split(model)
    texts = _decode_texts(model, graphdef, state, examples, eval_set, tokenizer, batch_size,
                          BoxConstraint(vocab_size=model.cfg.vocab_size), 5, beam_size)  # fmt: skip
    predictions = []
    for example, text in zip(examples, texts, strict=True):
        size = example.transform.canvas_size
        parsed = localization.parse_boxes(text, size, size)
        predictions.append(None if isinstance(parsed, Unparseable) else np.asarray(parsed)[0])
    return predictions


def predict_polygons(
    model: IMTCXR, examples: list[EvalExample], eval_set: EvalSet, tokenizer: Tokenizer, batch_size: int,
    beam_size: int,
) -> list[np.ndarray | None]:  # fmt: skip
    """Each answer's polygon, (N, 2) canvas pixels with N the reference's point count (the same for every
    example), decoded under the polygon constraint; None when unparseable."""
    if not examples:
        return []
    graphdef, state = nnx.split(model)
    points = len(examples[0].truth)
    texts = _decode_texts(model, graphdef, state, examples, eval_set, tokenizer, batch_size,
                          PolygonConstraint(vocab_size=model.cfg.vocab_size, num_points=points), 2 * points + 1,
                          beam_size)  # fmt: skip
    predictions = []
    for example, text in zip(examples, texts, strict=True):
        size = example.transform.canvas_size
        parsed = segmentation.parse_polygon(text, size, size, num_points=points)
        predictions.append(None if isinstance(parsed, Unparseable) else np.asarray(parsed))
    return predictions


def generate_reports(
    model: IMTCXR, examples: list[EvalExample], eval_set: EvalSet, tokenizer: Tokenizer, batch_size: int,
    beam_size: int, max_report_len: int,
) -> list[str]:  # fmt: skip
    """The generated report of each report question (no-repeat-trigram, at most `max_report_len` tokens, capped
    at the decoder's positions)."""
    if not examples:
        return []
    max_report_len = min(max_report_len, model.cfg.max_target_positions - 1)  # BOS takes one position
    graphdef, state = nnx.split(model)
    return _decode_texts(model, graphdef, state, examples, eval_set, tokenizer, batch_size, None,
                         max_report_len, beam_size)  # fmt: skip


def select_examples(
    eval_set: EvalSet, per_task: int | None, presence_images: int | None = None
) -> dict[Task, list[EvalExample]]:
    """The first `per_task` questions of each task in `eval_set`'s order, except presence: every label's
    question about each of the first `presence_images` images (default `per_task`), since the AUC needs every
    label's score on the same images. None: no limit."""
    # A presence answer is one decoder step, so the AUC can afford many more images than the boxes, outlines
    # and reports: on 64 images with ~15 positives per label its standard error is ~0.05.
    presence_images = per_task if presence_images is None else presence_images
    by_task: dict[Task, list[EvalExample]] = collections.defaultdict(list)
    presence_records: set[int] = set()
    for example in eval_set:
        if example.task is Task.PRESENCE:
            limit, seen = presence_images, example.ref.record in presence_records
            if limit is None or seen or len(presence_records) < limit:
                presence_records.add(example.ref.record)
                by_task[example.task].append(example)
        elif per_task is None or len(by_task[example.task]) < per_task:
            by_task[example.task].append(example)
    return by_task


def evaluate(
    model: IMTCXR,
    eval_set: EvalSet,
    tokenizer: Tokenizer,
    *,
    batch_size: int = 16,
    per_task: int | None = None,
    presence_images: int | None = None,
    beam_size: int = 1,
    max_report_len: int = 96,
) -> dict[str, Any]:
    """Scores of `model` on `eval_set`, flat {name: number}, on the examples `select_examples` picks."""
    by_task = select_examples(eval_set, per_task, presence_images)
    scores: dict[str, Any] = {}

    # Classification: P(yes) of presence questions -> AUC per label.
    presence = by_task.get(Task.PRESENCE, [])
    if presence:
        probabilities = presence_probabilities(model, presence, eval_set, tokenizer, batch_size)
        labels = sorted({e.ref.subject for e in presence})
        records = sorted({e.ref.record for e in presence})
        truth, score = presence_matrix(presence, probabilities, labels, records)
        known = ~np.isnan(score)
        auc = metrics.multilabel_auc(truth, np.nan_to_num(score), mask=known, class_names=labels)
        f1 = metrics.multilabel_f1(
            truth, (np.nan_to_num(score) >= 0.5).astype(int), mask=known, class_names=labels
        )
        scores["auc_images"] = len(records)
        scores["auc_macro"] = auc.macro
        scores["f1_macro"] = f1.macro
        for label, value in zip(labels, auc.per_class, strict=True):
            scores[f"auc/{label}"] = value
        headline = [auc.per_class[labels.index(lab)] for lab in HEADLINE_LABELS if lab in labels]
        headline = [v for v in headline if v is not None]
        if headline:
            scores["auc_headline"] = float(np.mean(headline))

    # Localization: one greedy box per question.
    boxes = by_task.get(Task.BOX, [])
    if boxes:
        predictions = predict_boxes(model, boxes, eval_set, tokenizer, batch_size, beam_size)
        truths, means = [np.asarray(example.truth) for example in boxes], {}
        for example in boxes:
            means.setdefault(example.ref.subject, []).append(np.asarray(example.truth, float).mean(axis=0))
        ours = metrics.box_accuracy(predictions, truths)
        constant = metrics.box_accuracy([np.mean(means[e.ref.subject], axis=0) for e in boxes], truths)
        scores |= {"box_acc": ours.accuracy, "box_miou": ours.mean_iou}
        scores |= {"box_acc_mean_box": constant.accuracy, "box_miou_mean_box": constant.mean_iou}

    # Segmentation: 30-point polygons.
    polygons = by_task.get(Task.SEGMENTATION, [])
    if polygons:
        predicted = predict_polygons(model, polygons, eval_set, tokenizer, batch_size, beam_size)
        mean_polygon = collections.defaultdict(list)
        for example in polygons:
            mean_polygon[example.ref.subject].append(np.asarray(example.truth))
        ours, constant = collections.defaultdict(list), collections.defaultdict(list)
        for example, prediction in zip(polygons, predicted, strict=True):
            size = example.transform.canvas_size
            ours[example.ref.subject].append(metrics.polygon_dice(prediction, example.truth, (size, size)))
            mean = np.mean(mean_polygon[example.ref.subject], axis=0)
            constant[example.ref.subject].append(metrics.polygon_dice(mean, example.truth, (size, size)))
        for structure in ours:
            scores[f"dice/{structure}"] = float(np.mean(ours[structure]))
            scores[f"dice_mean_polygon/{structure}"] = float(np.mean(constant[structure]))
        scores["dice"] = float(np.mean([v for values in ours.values() for v in values]))
        scores["dice_mean_polygon"] = float(np.mean([v for values in constant.values() for v in values]))

    # Reports: clinical efficacy through the labeler, plus BLEU-4 / ROUGE-L.
    reports = by_task.get(Task.REPORT, [])
    if reports:
        hypotheses = generate_reports(
            model, reports, eval_set, tokenizer, batch_size, beam_size, max_report_len
        )
        references = [str(example.truth) for example in reports]
        labeler = CheXpertLabeler()
        ce = metrics.clinical_efficacy(
            labeler.label_many(references), labeler.label_many(hypotheses), OBSERVATIONS
        )
        scores |= {"ce_precision": ce["precision"], "ce_recall": ce["recall"], "ce_f1": ce["f1"]}
        scores["bleu_4"] = bleu([[r] for r in references], hypotheses)[3]
        scores["rouge_l"] = rouge_l([[r] for r in references], hypotheses).score
        scores["report_example"] = hypotheses[0]
    return scores


def evaluate_during_training(
    graphdef, state, eval_set: EvalSet, tokenizer: Tokenizer, config
) -> dict[str, Any]:
    """The loop's hook: the train state's current parameters in inference mode, on one device.

    Decoding runs on a single device: XLA's CPU backend aborts compiling the beam search's top-k barrier over
    parameters sharded across devices, and held-out evaluation is small. In a multi-host run the parameters
    are not all addressable from one process, so evaluation is skipped there (run `imtcxr eval` afterwards).
    """
    if jax.process_count() > 1:
        log.warning("held-out evaluation is skipped in multi-host runs; run `imtcxr eval` on the workdir")
        return {}
    single = jax.devices()[0]
    params, model_state = jax.device_put((state.params, state.model_state), single)
    model = nnx.merge(graphdef, params, model_state)
    return evaluate(
        model, eval_set, tokenizer, per_task=config.eval_examples_per_task,
        presence_images=config.get("eval_presence_images") or None, beam_size=config.beam_size,
        max_report_len=config.data.max_tgt_len,
    )  # fmt: skip


def evaluate_suite(
    model: IMTCXR,
    tokenizer: Tokenizer,
    config,
    suite,
    *,
    checkpoint: str = "",
    step: int | None = None,
    loaded: dict[str, tuple[list, Any, str]] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the paper's protocols (`evaluation.protocols.Suite`) with `model` and score them; the results that
    `evaluation.tables.write_results` lays out as the paper's tables.

    `config` is the checkpoint's experiment config (its ``data`` section sizes the canvas and the token
    lengths); `loaded` optionally holds `protocols.read_dataset`'s answer per dataset key (read already, e.g. to
    fail on a missing folder before the model loads). Coordinates are scored in the original image's pixels.
    """
    from tqdm.auto import tqdm

    from imtcxr_jax.data.pipeline import PipelineConfig, make_eval_examples
    from imtcxr_jax.evaluation import protocols

    bootstrap = protocols.Bootstrap.of(suite)
    max_report_len = suite.max_report_len or config.data.max_tgt_len
    # A reference answer is never fed to the model, so its length must not exclude a test case: only the
    # instruction has to fit (max_src_len); targets get room for any report the pipeline writes (<= 128 words).
    data_config = PipelineConfig.from_config(config.data)
    data_config = dataclasses.replace(data_config, max_tgt_len=max(data_config.max_tgt_len, 1024))
    labeler = None
    results: dict[str, Any] = {"checkpoint": str(checkpoint), "step": step, "settings": suite.settings()}
    results["datasets"] = {}
    bar = tqdm(
        total=sum(len(spec.protocols) for spec in suite.datasets), desc="protocols", disable=not progress
    )
    for spec in suite.datasets:
        if loaded is not None and spec.key in loaded:
            records, image_dir, rejected = loaded[spec.key]
        else:
            records, image_dir, rejected = protocols.read_dataset(spec, suite.data_dir)
        eval_set = make_eval_examples(
            records, image_dir, tokenizer, data_config, families=spec.protocols,
            labels=spec.labels or None, report_prompts=(spec.report_prompt,),
        )  # fmt: skip
        result: dict[str, Any] = {"name": spec.name, "source": spec.source, "split": spec.split}
        result |= {"n_records": len(records), "rejected": rejected, "skipped": eval_set.report.to_dict()}

        def asked(
            task: Task, subjects: tuple[str, ...], eval_set=eval_set, records=records, spec=spec
        ) -> list[EvalExample]:
            """The questions of `task` about `subjects`, on records whose dataset has that ground truth."""
            return [
                e
                for e in eval_set
                if e.task is task
                and (not subjects or e.ref.subject in subjects)
                and protocols.supports(records[e.ref.record], e.family, spec)
            ]

        for protocol in spec.protocols:
            bar.set_postfix_str(f"{spec.key}: {protocol}")
            if protocol == "classification":
                rows = [i for i, record in enumerate(records) if protocols.supports(record, protocol, spec)]
                if not rows:
                    raise protocols.ProtocolError(
                        f"config.datasets.{spec.key}.protocols: its records have no classification ground truth "
                        "(set complete_labels=True if its labels are complete for the listed labels)"
                    )
                presence = asked(Task.PRESENCE, spec.labels)
                probabilities = presence_probabilities(model, presence, eval_set, tokenizer, suite.batch_size)
                truth, score = presence_matrix(presence, probabilities, list(spec.labels), rows)
                result[protocol] = protocols.score_classification(
                    truth, score, spec.labels, suite.threshold, bootstrap
                )
            elif protocol == "localization":
                boxes = asked(Task.BOX, spec.box_labels)
                if not boxes:
                    raise protocols.ProtocolError(
                        f"config.datasets.{spec.key}: no record has a box of {list(spec.box_labels)}"
                    )
                predicted = predict_boxes(
                    model, boxes, eval_set, tokenizer, suite.batch_size, suite.beam_size
                )
                predicted = [
                    None if box is None else e.transform.boxes_from_canvas(box)[0]
                    for e, box in zip(boxes, predicted, strict=True)
                ]
                truths = [records[e.ref.record].boxes(e.ref.subject) for e in boxes]
                result[protocol] = protocols.score_localization(
                    predicted, truths, [e.ref.subject for e in boxes], bootstrap
                )
            elif protocol == "segmentation":
                polygons = asked(Task.SEGMENTATION, spec.structures)
                if not polygons:
                    raise protocols.ProtocolError(
                        f"config.datasets.{spec.key}: no record has a polygon of {list(spec.structures)}"
                    )
                predicted: list[np.ndarray | None] = [None] * len(polygons)
                by_points = collections.defaultdict(list)  # one decode (and compilation) per point count
                for index, example in enumerate(polygons):
                    by_points[len(example.truth)].append(index)
                for indices in by_points.values():
                    group = [polygons[i] for i in indices]
                    answers = predict_polygons(
                        model, group, eval_set, tokenizer, suite.batch_size, suite.beam_size
                    )
                    for i, answer in zip(indices, answers, strict=True):
                        predicted[i] = None if answer is None else polygons[i].transform.from_canvas(answer)
                originals = [records[e.ref.record] for e in polygons]
                result[protocol] = protocols.score_segmentation(
                    predicted,
                    [record.polygons[e.ref.subject] for record, e in zip(originals, polygons, strict=True)],
                    [e.ref.subject for e in polygons],
                    [(record.height, record.width) for record in originals],
                    bootstrap,
                )
            elif protocol == "report":
                reports = asked(Task.REPORT, ())
                if not reports:
                    raise protocols.ProtocolError(f"config.datasets.{spec.key}: no record has a report")
                if labeler is None:
                    labeler = CheXpertLabeler(suite.phrases_dir or None)
                hypotheses = generate_reports(
                    model, reports, eval_set, tokenizer, suite.batch_size, suite.beam_size, max_report_len
                )
                result[protocol] = protocols.score_reports(
                    [str(e.truth) for e in reports], hypotheses, bootstrap, labeler=labeler,
                    meteor=suite.meteor, tokenizer=suite.ptb_tokenizer,
                )  # fmt: skip
                result[protocol]["examples"] = [
                    {"reference": str(e.truth), "generated": h}
                    for e, h in zip(reports[:3], hypotheses, strict=False)
                ]
            bar.update()
        results["datasets"][spec.key] = result
    bar.close()
    return results


def cli_main(argv: list[str]) -> int:
    """`imtcxr eval --checkpoint W [--data DIR] [--per-task N]`: score a training workdir's newest checkpoint
    on held-out data (default: the workdir's own -- its held-out phantoms, the manifest eval_dir, or the
    held-out splits of its built datasets); prints the scores as a JSON last line.

    `imtcxr eval --checkpoint W --config EVAL_CONFIG [--out DIR] [--config.KEY=VALUE ...]`: run the paper's
    protocols of an evaluation config (configs/eval_paper.py, configs/eval_phantom.py) and write results.md,
    results.json and ROC-curve PNGs into DIR (default W/eval); the JSON last line names the files."""
    import argparse
    import json
    import sys
    from pathlib import Path

    from imtcxr_jax.data.pipeline import make_eval_examples
    from imtcxr_jax.train.loop import load_data, load_trained_model

    parser = argparse.ArgumentParser(prog="imtcxr eval", description=cli_main.__doc__)
    parser.add_argument("--checkpoint", required=True, help="a training workdir")
    parser.add_argument(
        "--data", help="a folder in the manifest format (default: the workdir's held-out data)"
    )
    parser.add_argument("--per-task", type=int, default=64, help="examples per task (default 64)")
    parser.add_argument(
        "--presence-images",
        type=int,
        help="images asked every presence question (default: the run's eval_presence_images, else --per-task)",
    )
    parser.add_argument("--beam", type=int, default=1)
    parser.add_argument("--config", help="an evaluation config (protocol suite), e.g. configs/eval_paper.py")
    parser.add_argument("--out", help="with --config: where the tables go (default: WORKDIR/eval)")
    args, overrides = parser.parse_known_args(argv)
    if args.config is None and (overrides or args.out):
        parser.error(f"{' '.join(overrides) or '--out'} needs --config (an evaluation config)")
    if args.config is not None:
        return _suite_main(args, overrides, parser)
    try:  # the data first: a missing folder fails before the model loads
        data = Path(args.data) if args.data else _held_out_data(Path(args.checkpoint))
        records, images = load_data(data)
    except (ValueError, FileNotFoundError) as error:
        print(f"imtcxr eval: error: {error}", file=sys.stderr)
        return 2
    model, tokenizer, config, step = load_trained_model(args.checkpoint)
    eval_set = make_eval_examples(records, images, tokenizer, config.data)
    scores = evaluate(
        model, eval_set, tokenizer, per_task=args.per_task,
        presence_images=args.presence_images or config.get("eval_presence_images") or None,
        beam_size=args.beam, max_report_len=config.data.max_tgt_len,
    )  # fmt: skip
    print_scores(scores)
    print(json.dumps({"step": step, **scores}))
    return 0


def print_scores(scores: dict[str, Any]) -> None:
    """One aligned line per numeric score, then `summary_lines` (what `imtcxr eval` and the end of
    `imtcxr train` show)."""
    for key, value in scores.items():
        if isinstance(value, float):
            print(f"{key:>32}: {value:.4f}")
    for line in summary_lines(scores):
        print(line)


def summary_lines(scores: dict[str, Any]) -> list[str]:
    """The scores the main job is judged on, each beside its yardstick: the headline presence AUC against
    chance, boxes and outlines against the best constant answer (margin in brackets), the report's CE-F1.
    Lines only for the tasks that were scored."""
    lines = []
    # An AUC is None where the held-out examples of a label hold one class only.
    aucs = [
        f"{label} {_two_places(scores[f'auc/{label}'])}"
        for label in HEADLINE_LABELS
        if f"auc/{label}" in scores
    ]
    if "auc_headline" in scores:
        images = f" on {scores['auc_images']} images" if "auc_images" in scores else ""
        lines.append(
            f"presence AUC {_two_places(scores['auc_headline'])}{images} ({', '.join(aucs)}; chance 0.50)"
        )
    if "box_miou" in scores:
        acc, miou = scores["box_acc"], scores["box_miou"]
        acc_0, miou_0 = scores["box_acc_mean_box"], scores["box_miou_mean_box"]
        lines.append(
            f"boxes ACC@0.5 {acc:.2f} / mIoU {miou:.2f}; the mean box {acc_0:.2f} / {miou_0:.2f} "
            f"({acc - acc_0:+.2f} / {miou - miou_0:+.2f})"
        )
    outlines = []
    for key, value in scores.items():
        structure = key.removeprefix("dice/")
        constant = scores.get(f"dice_mean_polygon/{structure}")
        if key.startswith("dice/") and constant is not None:
            outlines.append(f"{structure} {value:.2f} vs {constant:.2f} ({value - constant:+.2f})")
    if outlines:
        lines.append(f"outline Dice against the mean polygon: {'; '.join(outlines)}")
    if "ce_f1" in scores:
        lines.append(
            f"report CE-F1 {scores['ce_f1']:.2f} (BLEU-4 {scores['bleu_4']:.2f}, ROUGE-L {scores['rouge_l']:.2f})"
        )
    return lines


def _two_places(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _held_out_data(workdir):
    """The held-out data a training workdir names (`train.loop.held_out_data`); for built datasets that cannot
    be read here, a ValueError saying what to pass instead."""
    from imtcxr_jax.train.experiment import config_from_json
    from imtcxr_jax.train.loop import held_out_data

    path = workdir / "config.json"
    if not path.is_file():  # a converted checkpoint, say: no held-out data of its own
        return workdir / "data" / "eval"
    config = config_from_json(path.read_text())
    if config.dataset.source != "tfds":
        return held_out_data(config, workdir)
    instead = (
        "pass --data FOLDER (the manifest format) or run the paper's protocols: "
        "--config configs/eval_paper.py --config.data_dir=DIR"
    )
    try:
        source = held_out_data(config, workdir)
    except ValueError as error:
        raise ValueError(
            f"{workdir} trained on built datasets not readable here ({error}); {instead}"
        ) from None
    if not source.splits:
        raise ValueError(
            f"{workdir}: none of its datasets ({config.dataset.datasets}) has a validation or test split; "
            + instead
        )
    return source


def _suite_main(args, overrides: list[str], parser) -> int:
    """The --config branch of `cli_main`: validate the suite and read every dataset before loading the model,
    so that a bad field or a missing folder fails at once, naming it."""
    import json
    import sys
    from pathlib import Path

    from imtcxr_jax.evaluation import protocols, tables
    from imtcxr_jax.train.experiment import apply_overrides, load_config_file
    from imtcxr_jax.train.loop import load_trained_model

    if args.data is not None:
        parser.error("--data is for the held-out evaluation; with --config set config.datasets.KEY.path")
    try:
        suite = protocols.suite_from_config(
            apply_overrides(load_config_file(args.config), overrides), checkpoint=args.checkpoint
        )
        loaded = {spec.key: protocols.read_dataset(spec, suite.data_dir) for spec in suite.datasets}
    except ValueError as error:  # ProtocolError, and override / config-file errors
        print(f"imtcxr eval: error: {error}", file=sys.stderr)
        return 2
    for key, (records, _, rejected) in loaded.items():
        print(
            f"{key}: {len(records)} records" + (f"; rejected: {rejected}" if rejected else ""),
            file=sys.stderr,
        )
    model, tokenizer, config, step = load_trained_model(args.checkpoint)
    results = evaluate_suite(
        model, tokenizer, config, suite, checkpoint=args.checkpoint, step=step, loaded=loaded
    )
    out = Path(args.out) if args.out else Path(args.checkpoint) / "eval"
    written = tables.write_results(results, out, roc_curves=suite.roc_curves)
    print(written["markdown"].read_text(encoding="utf-8"))
    print(json.dumps({"step": step, **{kind: str(path) for kind, path in written.items()}}))
    return 0
