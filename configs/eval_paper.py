"""The paper's evaluation protocols: one entry per test set, run with

  imtcxr eval --config configs/eval_paper.py --checkpoint W --config.data_dir=/data/tfds [--out DIR]

Every dataset is read from a TFDS-built dataset under `data_dir` (`imtcxr_jax.data.tfds.read_records`), or, with
--config.datasets.KEY.source=manifest --config.datasets.KEY.path=FOLDER, from a folder in the manifest format.
`run` lists the datasets to evaluate, in order (--config.run=chexpert,mimic_cxr runs two; `siim` is defined
but not in the default run). Splits are the builders' (CheXpert: the official validation set; datasets without
an official split: the builders' patient-level split). Labels, box labels
and structures are the words the model is asked about (the checkpoint's vocabulary: tasks/classification.py
DISEASES, tasks/segmentation.py STRUCTURES); imtcxr_jax/evaluation/protocols.py documents every field.
"""

import ml_collections

from configs.eval_phantom import suite_defaults
from imtcxr_jax.evaluation.protocols import dataset_entry

# NIH ChestX-ray14: its 14 findings in our words (Effusion -> pleural effusion, Pleural_Thickening -> ...).
CHESTXRAY14_LABELS = (
    "atelectasis", "cardiomegaly", "pleural effusion", "infiltration", "mass", "nodule", "pneumonia",
    "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis", "pleural thickening", "hernia",
)  # fmt: skip
# The 8 labels of BBox_List_2017.csv (Infiltrate -> infiltration, Effusion -> pleural effusion).
CHESTXRAY14_BOX_LABELS = (
    "atelectasis", "cardiomegaly", "pleural effusion", "infiltration", "mass", "nodule", "pneumonia",
    "pneumothorax",
)  # fmt: skip
# The CheXpert competition five.
CHEXPERT_LABELS = ("atelectasis", "cardiomegaly", "consolidation", "edema", "pleural effusion")
# MS-CXR's eight phrase-grounding classes.
MS_CXR_BOX_LABELS = (
    "atelectasis", "cardiomegaly", "consolidation", "edema", "lung opacity", "pleural effusion", "pneumonia",
    "pneumothorax",
)  # fmt: skip
LUNGS_AND_HEART = ("left lung", "right lung", "heart")


def get_config():
    c = suite_defaults()
    c.data_dir = ""  # root of the TFDS datasets (and of relative manifest paths); required for tfds sources
    c.beam_size = 6  # the paper's beam
    c.run = "chestxray14,chexpert,rsna,ms_cxr,jsrt,chexmask,ms_ps,mimic_cxr"
    c.datasets = ml_collections.ConfigDict()
    c.datasets.chestxray14 = dataset_entry(
        "ChestX-ray14", tfds_name="chestxray14", protocols=("classification", "localization"),
        labels=CHESTXRAY14_LABELS, box_labels=CHESTXRAY14_BOX_LABELS,
    )  # fmt: skip
    c.datasets.chexpert = dataset_entry(
        "CheXpert", tfds_name="chexpert", split="validation", protocols=("classification",),
        labels=CHEXPERT_LABELS,
    )  # fmt: skip
    c.datasets.rsna = dataset_entry(
        "RSNA Pneumonia", tfds_name="rsna_pneumonia", protocols=("classification", "localization"),
        labels=("pneumonia",), box_labels=("pneumonia",), complete_labels=True,  # Target 0/1
    )  # fmt: skip
    c.datasets.ms_cxr = dataset_entry(
        "MS-CXR", tfds_name="ms_cxr", protocols=("localization",), box_labels=MS_CXR_BOX_LABELS
    )
    c.datasets.jsrt = dataset_entry(
        "JSRT", tfds_name="jsrt", protocols=("segmentation",), structures=LUNGS_AND_HEART
    )
    c.datasets.chexmask = dataset_entry(
        "CheXmask", tfds_name="chexmask", protocols=("segmentation",), structures=LUNGS_AND_HEART
    )
    # MS-PS (the IMT-CXR release's pneumothorax set) has no TFDS builder: convert it to a manifest folder
    # DATA_DIR/ms_ps (or --config.datasets.ms_ps.path=FOLDER). SIIM-ACR is built by the `siim` builder.
    c.datasets.ms_ps = dataset_entry(
        "MS-PS", source="manifest", path="ms_ps", protocols=("segmentation",), structures=("pneumothorax",)
    )
    c.datasets.siim = dataset_entry(
        "SIIM-ACR", tfds_name="siim", protocols=("segmentation",), structures=("pneumothorax",)
    )
    c.datasets.mimic_cxr = dataset_entry("MIMIC-CXR", tfds_name="mimic_cxr", protocols=("report",))
    return c
