"""The paper's joint training: ofa_huge at 512 px, global batch 256, AdamW lr 1e-5 warmed up from 1e-7, cosine,
30 epochs, weight decay 0.01, dropout 0.1 (drop-path 0.1), beam 6; the OFA tokenizer (its vocabulary is what
published checkpoints index into).

  # 8 x V100 per node (float16, no bfloat16 on Volta): launch/slurm_v100.sbatch
  imtcxr train --config configs/imtcxr_huge.py --workdir W --config.dataset.data_dir=/data/tfds \
      --config.model.dtype=float16 --config.mesh="(-1,8,1)"
  # TPU pod slice (bfloat16): launch/tpu_pod.sh
  imtcxr train --config configs/imtcxr_huge.py --workdir W --config.dataset.data_dir=/data/tfds \
      --config.model.dtype=bfloat16 --config.mesh="(1,-1,1)"

Data: the paper's training sets built with `imtcxr data build NAME --manual-dir DL --out /data/tfds` (README
"Real datasets"): MIMIC-CXR (classification, reports), VinDr-CXR and ChestX-Det (boxes), CheXmask and SIIM-ACR
(outlines); the paper's PadChest and CXR-AL14 sets have no builder. To train on the released IMT-CXR TSVs
instead: --config.dataset.datasets=imtcxr_tsv. Held out: each dataset's validation split, else its test split.

`total_steps` = 30 epochs of the training set / 256; set it for your data (e.g. --config.total_steps=...).
"""

from configs.base import base_config


def get_config():
    c = base_config("ofa_huge")
    c.model.update(
        dict(dropout=0.1, encoder_drop_path_rate=0.1, decoder_drop_path_rate=0.1, dtype="bfloat16")
    )
    c.tokenizer.kind = "ofa"
    c.tokenizer.bpe_dir = "../shared/data/ofa-bpe"
    c.dataset.source = "tfds"
    c.dataset.data_dir = ""  # required: the --out folder of `imtcxr data build`
    c.dataset.datasets = "mimic_cxr,vindr_cxr,chestx_det,chexmask,siim"
    c.data.image_size = 512
    c.data.resize_mode = "stretch"  # as the original
    c.data.max_src_len = 128
    c.data.max_tgt_len = 192
    c.data.batch_size = 256
    c.data.num_workers = 8
    c.accumulation_steps = 1
    c.total_steps = 30 * 1000  # placeholder epoch length: 30 epochs of 256,000 examples; override per dataset
    c.warmup_steps = 300
    c.warmup_init_lr = 1e-7
    c.learning_rate = 1e-5
    c.schedule = "cosine"
    c.weight_decay = 0.01
    c.clip_norm = 5.0  # the original's clip-norm
    c.mesh = (1, -1, 1)  # fully sharded data parallel over all devices
    c.log_every = 50
    c.checkpoint_every = 1000
    c.eval_every = 5000
    c.beam_size = 6
    return c
