"""Defaults shared by every experiment. An experiment file imports `base_config()` and changes a few keys.

Every key here can be overridden on the command line as --config.KEY=VALUE (nested: --config.data.image_size=128).
"""

import ml_collections

from imtcxr_jax.models.config import get_model_config


def base_config(model_size: str = "micro") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    # Model: a named size (imtcxr_jax/models/config.py) plus any field override. vocab_size follows the tokenizer.
    c.model_size = model_size
    c.model = ml_collections.ConfigDict(get_model_config(model_size).to_dict())

    # Tokenizer: "trained" (byte-level BPE trained on the training texts; the offline default) or "ofa".
    c.tokenizer = ml_collections.ConfigDict({"kind": "trained", "vocab_size": 2048, "bpe_dir": ""})

    # Data: phantom radiographs generated into the workdir (or any folder in the manifest format).
    c.data = ml_collections.ConfigDict()
    c.data.source = (
        "phantom"  # "phantom" (generated) or "manifest" (an existing folder: data.train_dir/eval_dir)
    )
    c.data.train_dir = ""
    c.data.eval_dir = ""
    c.data.train_examples = 2000  # phantoms generated for training
    c.data.eval_examples = 100  # held-out phantoms (different seeds)
    c.data.phantom_size = 256  # pixels of the generated phantom files
    c.data.image_size = 128  # model input side
    c.data.resize = "letterbox"  # "letterbox" (aspect kept, padded) or "stretch" (the original)
    c.data.max_src_len = 48
    c.data.max_tgt_len = 96
    c.data.weights = ml_collections.ConfigDict(
        {"classification": 0.15, "localization": 0.20, "segmentation": 0.15, "report": 0.50}
    )
    c.data.augment = True
    c.data.num_workers = 0  # grain worker processes; keep it fixed for a run (batches depend on it)

    # Optimisation (DESIGN decision 6).
    c.batch_size = 16  # global batch (all hosts, all micro-batches)
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
    c.nan_policy = "error"  # "error": stop naming the step; "skip": skip the update and count it

    # Devices: mesh (data, fsdp, tensor); -1 takes the remaining devices.
    c.mesh = (-1, 1, 1)

    # Bookkeeping.
    c.log_every = 10
    c.checkpoint_every = 200
    c.keep_checkpoints = 3
    c.eval_every = 500
    c.eval_examples_per_task = 32
    c.beam_size = 3
    return c
