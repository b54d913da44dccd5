"""The main job: an OFA-architecture model sized for a CPU, trained on phantom radiographs (~15 min, 2 cores).

  imtcxr train --config configs/phantom_tiny.py --workdir runs/phantom_tiny

Every module type of ofa_tiny (ResNet bottlenecks, biased attention with relative positions, NormFormer
layers, tied embedding), with small dimensions, 128 px images and the trained tokenizer's small vocabulary.
"""

from configs.base import base_config


def get_config():
    c = base_config("micro")
    c.model_size = "phantom_tiny"
    c.model.update(
        dict(
            embed_dim=128, ffn_dim=256, encoder_layers=2, decoder_layers=2, heads=4,
            resnet_blocks=(1, 1, 1), resnet_width=16, max_source_positions=128, max_target_positions=128,
            token_bucket_size=32, image_bucket_size=16, code_image_size=64,
        )
    )  # fmt: skip
    c.tokenizer.vocab_size = 2048
    c.dataset.train_examples = 2000
    c.dataset.eval_examples = 100
    c.dataset.phantom_size = 256
    c.data.image_size = 128
    c.data.max_src_len = 48
    c.data.max_tgt_len = 128
    c.data.batch_size = 32
    c.total_steps = 1200
    c.warmup_steps = 100
    c.learning_rate = 2e-3
    c.log_every = 25
    c.checkpoint_every = 500
    c.eval_every = 600
    c.eval_examples_per_task = 64
    c.beam_size = 1
    return c
