"""Defaults shared by every experiment. An experiment file imports `base_config()` and changes a few keys.

Every key here can be overridden on the command line as --config.KEY=VALUE (nested: --config.data.image_size=128).
"""

import ml_collections

from imtcxr_jax.data.pipeline import default_config
from imtcxr_jax.models.config import get_model_config


def base_config(model_size: str = "micro") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    # Model: a named size (imtcxr_jax/models/config.py) plus any field override. vocab_size follows the tokenizer.
    c.model_size = model_size
    c.model = ml_collections.ConfigDict(get_model_config(model_size).to_dict())

    # Initial weights: "" (random) or a converted checkpoint folder (`imtcxr convert from-ofa|resnet --out DIR`);
    # its architecture must match config.model. Read only when the workdir has no checkpoint yet.
    c.init_from = ""

    # Tokenizer: "trained" (byte-level BPE trained on the training texts; the offline default) or "ofa".
    c.tokenizer = ml_collections.ConfigDict({"kind": "trained", "vocab_size": 2048, "bpe_dir": ""})

    # Dataset: phantom radiographs generated into the workdir, existing folders in the manifest format, or real
    # datasets built with `imtcxr data build NAME --manual-dir DL --out DATA_DIR` (README "Real datasets").
    c.dataset = ml_collections.ConfigDict()
    c.dataset.source = "phantom"  # "phantom" (generated on first use), "manifest" (train/eval_dir), "tfds"
    c.dataset.train_dir = ""
    c.dataset.eval_dir = ""
    # source "tfds": data_dir is the --out folder of the builds; datasets the builders to mix, comma-separated,
    # each NAME or NAME:SPLIT (the split trained on, default train), e.g. "mimic_cxr,vindr_cxr,chexmask". Their
    # records are pooled and every record feeds only the task families its dataset annotates (a family with a
    # weight in data.weights needs one dataset that annotates it). Held out (evaluation during training and
    # `imtcxr eval --checkpoint W`): each dataset's validation split where it was built, else its test split
    # (never a split it trains on).
    c.dataset.data_dir = ""
    c.dataset.datasets = ""
    c.dataset.train_examples = 2000  # phantoms generated for training (seeds 0..n-1)
    c.dataset.eval_examples = 100  # held-out phantoms (seeds from 1_000_000 on, never trained on)
    c.dataset.phantom_size = 256  # pixels of the generated phantom files
    c.dataset.phantom_max_shift = 0.0  # positioning of the phantoms (imtcxr data phantom --max-shift)
    c.dataset.phantom_min_zoom = 1.0  # ... and --min-zoom
    c.dataset.phantom_finding_weights = ""  # "LABEL=W,..." (--finding-weights); "": every finding label
    c.dataset.phantom_workers = 0  # processes drawing the phantoms (--workers); 0: one per CPU core

    # Input pipeline (imtcxr_jax/data/pipeline.py documents every key); batch_size is the global batch.
    c.data = default_config()
    c.data.image_size = 128
    c.data.max_src_len = 48
    c.data.max_tgt_len = 96
    c.data.batch_size = 16

    # Optimisation (DESIGN decision 6).
    c.accumulation_steps = 1
    c.total_steps = 1000
    c.warmup_steps = 50
    c.warmup_init_lr = 1e-7
    c.learning_rate = 1e-3
    c.end_learning_rate = 0.0
    c.schedule = "cosine"  # "cosine", "polynomial" (the original's linear decay) or "constant"
    c.adam_b1 = 0.9
    c.adam_b2 = 0.999
    c.adam_eps = 1e-8
    c.weight_decay = 0.01
    c.clip_norm = 1.0
    c.label_smoothing = 0.0
    c.first_token_weight = 1.0  # > 1: each target's first token weighs more in the loss (steps.py)
    c.first_tokens = 1  # ... or its first this many tokens (EOS excepted)
    c.first_token_families = ""  # ... of these task families' answers ("localization,segmentation"; "": all)
    c.bin_sigma = 0.0  # > 0: bin targets scored against a Gaussian this many bins wide (steps.py)
    c.nan_policy = "error"  # "error": stop naming the step; "skip": skip the update and count it

    # Devices: mesh (data, fsdp, tensor); -1 takes the remaining devices.
    c.mesh = (-1, 1, 1)

    # Bookkeeping.
    c.log_every = 10
    c.checkpoint_every = 200
    c.keep_checkpoints = 3
    c.eval_every = 500
    c.eval_examples_per_task = 32
    c.eval_presence_images = 0  # images asked every presence question (the AUC); 0: eval_examples_per_task
    c.beam_size = 3
    return c
