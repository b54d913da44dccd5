"""Writers of tiny fixtures in the real datasets' formats: phantom pixels saved as PNG / JPEG / DICOM / raw."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from PIL import Image

from imtcxr_jax.data.phantom import Phantom, generate_phantom


@functools.lru_cache(maxsize=64)
def phantom(seed: int, size: int = 64) -> Phantom:
    return generate_phantom(seed, size)


def pixels(seed: int, width: int = 64, height: int | None = None) -> np.ndarray:
    """uint8 (height, width) phantom pixels (resized when not square)."""
    height = height or width
    image = phantom(seed, max(width, height)).image
    if image.shape != (height, width):
        image = np.asarray(Image.fromarray(image).resize((width, height)))
    return image


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_jpeg(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="JPEG", quality=95)
    return path


def write_dicom(path: Path, array: np.ndarray, *, patient: str = "P0", view: str = "PA") -> Path:
    """An uncompressed 8-bit MONOCHROME2 DX DICOM file with the preamble."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = patient
    ds.ViewPosition = view
    ds.Rows, ds.Columns = array.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def write_csv(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def disk(cx: float, cy: float, r: float, shape: tuple[int, int]) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r


def build_and_read(name: str, manual_dir: Path, out_dir: Path, **kwargs):
    """Build ``name`` and return (records by key over all splits, build log)."""
    from imtcxr_jax.data import tfds as cxr_tfds

    folder, log = cxr_tfds.build(name, manual_dir, out_dir, progress=False, **kwargs)
    records = {}
    for path in folder.glob("records-*.jsonl"):
        split = path.name[len("records-") : -len(".jsonl")]
        part, report = cxr_tfds.read_records(out_dir, name, split)
        assert report.rejected == 0
        records.update({record.key: record for record in part})
    return records, log
