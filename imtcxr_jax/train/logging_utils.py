"""Training logs: metrics.jsonl (one JSON object per logged step), TensorBoard event files, and a PNG of the
training curves."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jax

# The held-out scores drawn (one per task, and the constant-answer yardsticks); metrics.jsonl keeps them all.
EVAL_CURVES = ("eval/auc_headline", "eval/box_miou", "eval/box_miou_mean_box", "eval/dice", "eval/dice_mean_polygon",
               "eval/ce_f1")  # fmt: skip


class MetricsWriter:
    """Appends to W/metrics.jsonl and W/tensorboard/ (only on process 0 of a multi-host run)."""

    def __init__(self, workdir: Path):
        self.enabled = jax.process_index() == 0
        self._jsonl = open(workdir / "metrics.jsonl", "a") if self.enabled else None  # noqa: SIM115
        self._tensorboard = None
        if self.enabled:
            from tensorboardX import SummaryWriter

            self._tensorboard = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, scalars: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps(scalars) + "\n")
        self._jsonl.flush()
        step = int(scalars["step"])
        for key, value in scalars.items():
            if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                # TensorBoard tags have no spaces ("eval/dice/left lung"); tensorboardX would rename each
                # such tag itself and log a line about it at every evaluation.
                self._tensorboard.add_scalar(key.replace(" ", "_"), value, step)

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tensorboard.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_training_curve(metrics_path: Path, out_path: Path) -> Path | None:
    """Loss per task family (left) and evaluation scores (right) over steps; the last logged value of a step
    wins (a resumed run logs re-run steps again)."""
    rows = read_metrics(metrics_path)
    if not rows or jax.process_index() != 0:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, dict[int, float]] = {}
    for row in rows:
        for key, value in row.items():
            if (
                key != "step"
                and isinstance(value, int | float)
                and (key.startswith("loss") or key in EVAL_CURVES)
            ):
                series.setdefault(key, {})[int(row["step"])] = float(value)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for key, points in sorted(series.items()):
        axis = right if key.startswith("eval/") else left
        steps = sorted(points)
        axis.plot(steps, [points[s] for s in steps], label=key, linewidth=2 if key == "loss" else 1)
    left.set(xlabel="step", ylabel="token cross-entropy", title="training loss", yscale="log")
    right.set(xlabel="step", ylabel="score", title="held-out evaluation")
    for axis in (left, right):
        if axis.lines:
            axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
