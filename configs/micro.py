"""Tests and quick checks: the micro model on 64 px phantoms, a few steps. Seconds on a CPU.

imtcxr train --config configs/micro.py --workdir /tmp/micro
"""

from configs.base import base_config


def get_config():
    c = base_config("micro")
    c.dataset.train_examples = 48
    c.dataset.eval_examples = 8
    c.dataset.phantom_size = 64
    c.data.image_size = 64
    c.data.batch_size = 8
    c.tokenizer.vocab_size = 1400
    c.total_steps = 20
    c.warmup_steps = 2
    c.log_every = 5
    c.checkpoint_every = 10
    c.eval_every = 20
    c.eval_examples_per_task = 4
    c.beam_size = 1
    return c
