"""Results of a protocol suite as the paper lays them out: one markdown file, one JSON file, ROC-curve PNGs.

Tables (rows: datasets in the suite's order; only datasets that ran the protocol appear):

* Classification: AUC, F1 (macro over labels), images; then per classification dataset a per-label table.
* Localization: ACC (IoU >= 0.5), mIoU, samples.
* Segmentation: Dice over all samples, then per structure.
* Report generation: BLEU-1..4, METEOR, ROUGE-L, CIDEr, reports.
* Clinical efficacy: precision, recall, F1 (micro over the 14 CheXpert observations), reports.

A cell is ``value [low, high]``: the point estimate on the full test set and its bootstrap interval, three
decimals; ``—`` where the metric is undefined (e.g. AUC of a label with one class). The JSON holds the same
tables with numbers (``{"estimate", "low", "high"}`` per cell), the run's settings and every dataset's full
results (per-label values, counts, ROC points).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

MARKDOWN_NAME = "results.md"
JSON_NAME = "results.json"
DASH = "—"

# (table title, protocol, [(column title, metric key)], count key, count title)
MAIN_TABLES: tuple[tuple[str, str, tuple[tuple[str, str], ...], str, str], ...] = (
    ("Classification", "classification", (("AUC", "auc"), ("F1", "f1")), "n_images", "images"),
    (
        "Localization",
        "localization",
        (("ACC (IoU ≥ 0.5)", "acc"), ("mIoU", "miou")),
        "n_samples",
        "samples",
    ),
    ("Segmentation (Dice)", "segmentation", (("Dice", "dice"),), "n_samples", "samples"),
    (
        "Report generation",
        "report",
        (
            ("BLEU-1", "bleu_1"),
            ("BLEU-2", "bleu_2"),
            ("BLEU-3", "bleu_3"),
            ("BLEU-4", "bleu_4"),
            ("METEOR", "meteor"),
            ("ROUGE-L", "rouge_l"),
            ("CIDEr", "cider"),
        ),
        "n_reports",
        "reports",
    ),
    (
        "Clinical efficacy",
        "report",
        (("Precision", "ce_precision"), ("Recall", "ce_recall"), ("F1", "ce_f1")),
        "n_reports",
        "reports",
    ),
)


def format_cell(cell: Mapping[str, Any] | None, decimals: int = 3) -> str:
    """``value [low, high]``, ``value`` without an interval, ``—`` when undefined."""
    if cell is None or cell.get("estimate") is None:
        return DASH
    text = f"{cell['estimate']:.{decimals}f}"
    if cell.get("low") is not None and cell.get("high") is not None:
        text += f" [{cell['low']:.{decimals}f}, {cell['high']:.{decimals}f}]"
    return text


def _cell(interval: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if interval is None:
        return None
    return {key: interval.get(key) for key in ("estimate", "low", "high")}


def build_tables(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The tables of `results` (what `evaluate.evaluate_suite` returns): each ``{"title", "columns",
    "rows": [{"dataset", "key", "cells": {column: cell}, "count"}]}``, cells as in the JSON file."""
    datasets: Mapping[str, Any] = results["datasets"]
    tables = []
    for title, protocol, columns, count_key, count_title in MAIN_TABLES:
        ran = [(key, d) for key, d in datasets.items() if protocol in d]
        if not ran:
            continue
        column_pairs = list(columns)
        if protocol == "segmentation":  # one column per structure, in order of first appearance
            structures = dict.fromkeys(s for _, d in ran for s in d[protocol]["structures"])
            column_pairs += [(structure, f"dice/{structure}") for structure in structures]
        rows = []
        for key, dataset in ran:
            scored = dataset[protocol]["metrics"]
            cells = {column: _cell(scored.get(metric)) for column, metric in column_pairs}
            rows.append(
                {
                    "dataset": dataset["name"],
                    "key": key,
                    "cells": cells,
                    "count": dataset[protocol][count_key],
                }
            )
        tables.append(
            {"title": title, "columns": [c for c, _ in column_pairs], "count": count_title, "rows": rows}
        )
        if protocol == "classification":
            for key, dataset in ran:
                scored = dataset[protocol]
                rows = [
                    {
                        "dataset": label,
                        "key": key,
                        "cells": {
                            "AUC": _cell(scored["metrics"].get(f"auc/{label}")),
                            "F1": _cell(scored["metrics"].get(f"f1/{label}")),
                        },
                        "count": scored["positives"][label],
                    }
                    for label in scored["labels"]
                ]
                tables.append(
                    {
                        "title": f"Classification per label: {dataset['name']}",
                        "columns": ["AUC", "F1"],
                        "count": "positives",
                        "rows": rows,
                        "first_column": "Label",
                    }
                )
    return tables


def markdown(results: Mapping[str, Any], tables: Sequence[Mapping[str, Any]]) -> str:
    settings = results.get("settings", {})
    lines = [f"# Evaluation: {results.get('checkpoint', '')} (step {results.get('step', '?')})", ""]
    lines.append(
        f"Point estimate on the full test set [{settings.get('confidence', 0.95):.0%} bootstrap interval, "
        f"{settings.get('n_resamples', '?')} resamples, seed {settings.get('seed', '?')}]. F1 at "
        f"P(yes) ≥ {settings.get('threshold', 0.5)}; beam {settings.get('beam_size', '?')}."
    )
    for table in tables:
        first = table.get("first_column", "Dataset")
        lines += ["", f"## {table['title']}", ""]
        header = [first, *table["columns"], table["count"]]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
        for row in table["rows"]:
            cells = [format_cell(row["cells"][column]) for column in table["columns"]]
            lines.append("| " + " | ".join([row["dataset"], *cells, str(row["count"])]) + " |")
    notes = []
    for dataset in results["datasets"].values():
        if dataset.get("rejected"):
            notes.append(f"- {dataset['name']}: rejected records: {dataset['rejected']}")
        skipped = dataset.get("skipped", {}).get("skipped", {})
        if skipped:
            notes.append(f"- {dataset['name']}: questions left out for length: {skipped}")
        report = dataset.get("report")
        if report and report.get("meteor_note"):
            notes.append(f"- {dataset['name']}: METEOR: {report['meteor_note']}")
    if notes:
        lines += ["", "## Notes", "", *notes]
    return "\n".join(lines) + "\n"


def plot_roc(classification: Mapping[str, Any], title: str, path: Path) -> None:
    """All labels' ROC curves of one dataset on one figure, AUC in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 6.0), dpi=100)
    axes.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance")
    for label, curve in classification["roc"].items():
        auc = classification["metrics"].get(f"auc/{label}", {}).get("estimate")
        name = f"{label} (AUC {auc:.3f})" if auc is not None else label
        axes.plot(curve["fpr"], curve["tpr"], linewidth=1.5, label=name, drawstyle="default")
    axes.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false-positive rate", ylabel="true-positive rate")
    macro = classification["metrics"].get("auc", {}).get("estimate")
    axes.set_title(f"{title}: ROC" + (f" (macro AUC {macro:.3f})" if macro is not None else ""))
    axes.legend(loc="lower right", fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_results(
    results: Mapping[str, Any], out_dir: str | Path, *, roc_curves: bool = True
) -> dict[str, Path]:
    """Write ``results.md``, ``results.json`` and ``roc_<dataset>.png`` (one per classification dataset) into
    `out_dir` (created); returns the paths by kind."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = build_tables(results)
    written = {"markdown": out_dir / MARKDOWN_NAME, "json": out_dir / JSON_NAME}
    written["markdown"].write_text(markdown(results, tables), encoding="utf-8")
    document = {key: value for key, value in results.items() if key != "datasets"} | {
        "tables": tables,
        "datasets": results["datasets"],
    }
    written["json"].write_text(json.dumps(document, indent=1, allow_nan=False), encoding="utf-8")
    if roc_curves:
        for key, dataset in results["datasets"].items():
            if "classification" in dataset and dataset["classification"]["roc"]:
                path = out_dir / f"roc_{key}.png"
                plot_roc(dataset["classification"], dataset["name"], path)
                written[f"roc_{key}"] = path
    return written
