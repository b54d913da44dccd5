"""TFDS builders for the real chest X-ray datasets, and the readers the training pipeline uses.

One module per dataset (`BUILDERS` maps the name to its builder class); `common` holds the stored schema,
image encoding, validation and the build report; `harmonise` the label / uncertainty / location tables;
`rle` the CheXmask and SIIM run-length codecs. Builders are `tfds.core.GeneratorBasedBuilder`s with a
``manual_dir`` (the user downloads each dataset) that write ArrayRecord through TFDS; TensorFlow is not
needed to build or to read them.

`build(name, manual_dir, out_dir)` builds one dataset; `read_records(data_dir, name, split)` returns its
records and `TfdsImages(data_dir)` opens their images (what `pipeline.make_train_dataset` takes in place of
an image folder).
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path
from typing import Any

from imtcxr_jax.data.tfds.common import BuildError, BuildLog, DatasetRecord
from imtcxr_jax.data.tfds.reader import TfdsImages, dataset_dir, read_records, task_source

__all__ = [
    "BUILDERS",
    "BuildError",
    "BuildLog",
    "DatasetRecord",
    "TfdsImages",
    "build",
    "builder_class",
    "dataset_dir",
    "read_records",
    "task_source",
]

# name -> "module:Class"; imported on demand.
BUILDERS = {
    "mimic_cxr": "mimic_cxr:MimicCxr",
    "vindr_cxr": "vindr_cxr:VindrCxr",
    "chestx_det": "chestx_det:ChestxDet",
    "chexmask": "chexmask:Chexmask",
    "siim": "siim:Siim",
    "chestxray14": "chestxray14:Chestxray14",
    "chexpert": "chexpert:Chexpert",
    "rsna_pneumonia": "rsna_pneumonia:RsnaPneumonia",
    "jsrt": "jsrt:Jsrt",
    "ms_cxr": "ms_cxr:MsCxr",
    "imtcxr_tsv": "imtcxr_tsv:ImtcxrTsv",
}


def builder_class(name: str) -> type:
    if name not in BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; expected one of: {', '.join(BUILDERS)}")
    module, cls = BUILDERS[name].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def build(
    name: str,
    manual_dir: str | Path,
    out_dir: str | Path,
    *,
    strict: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[Path, BuildLog]:
    """Build dataset ``name`` from ``manual_dir`` into ``out_dir/name/<version>``; returns that folder and
    the build log (rejects by reason, policy skips, examples written per split).

    An existing build is an error unless ``overwrite``; with ``strict`` the first bad row raises `BuildError`
    (nothing is left in ``out_dir`` then: TFDS writes into a temporary folder and renames at the end).
    """
    import tensorflow_datasets as tfds

    manual_dir = Path(manual_dir)
    if not manual_dir.is_dir():
        raise FileNotFoundError(f"--manual-dir {manual_dir} is not a directory")
    builder: Any = builder_class(name)(data_dir=str(out_dir), strict=strict, progress=progress)
    target = Path(builder.data_dir)
    if target.exists():
        if not overwrite:
            raise FileExistsError(f"{target} exists; pass --overwrite to rebuild it")
        shutil.rmtree(target)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    return target, builder.build_log
