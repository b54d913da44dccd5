"""The paper's protocols on the workdir's held-out phantoms (no real data needed):

  imtcxr eval --config configs/eval_phantom.py --checkpoint runs/phantom_tiny [--out DIR]

One dataset with all four protocols, so every table of the paper's layout has a row. `{checkpoint}` in a path is
the --checkpoint workdir. The keys shared with configs/eval_paper.py are set in `suite_defaults`.
"""

import ml_collections

from imtcxr_jax.data.phantom import FINDING_LABELS
from imtcxr_jax.evaluation.protocols import dataset_entry


def suite_defaults() -> ml_collections.ConfigDict:
    """Settings every protocol suite has (imtcxr_jax/evaluation/protocols.py documents them)."""
    c = ml_collections.ConfigDict()
    c.data_dir = ""
    c.run = ""
    c.n_resamples = 1000  # bootstrap replicates of every interval
    c.confidence = 0.95
    c.seed = 0  # bootstrap seed
    c.threshold = 0.5  # F1: a label is predicted present when P(yes) >= threshold
    c.batch_size = 16
    c.beam_size = 1
    c.max_report_len = 0  # 0: the checkpoint's max_tgt_len
    c.meteor = True  # METEOR through the Meteor 1.5 jar when Java and pycocoevalcap are present
    c.ptb_tokenizer = "auto"  # "auto", "python" or "corenlp" (evaluation/ptb.py)
    c.phrases_dir = ""  # CheXpert labeler phrase lists ("" = ../shared/data/chexpert-labeler-phrases)
    c.roc_curves = True
    return c


def get_config():
    c = suite_defaults()
    c.run = "phantom"
    c.datasets = ml_collections.ConfigDict()
    c.datasets.phantom = dataset_entry(
        "Phantom (held-out)", source="manifest", path="{checkpoint}/data/eval", split="",
        protocols=("classification", "localization", "segmentation", "report"), labels=FINDING_LABELS,
        box_labels=FINDING_LABELS, structures=("left lung", "right lung", "heart", "pneumothorax"),
    )  # fmt: skip
    return c
