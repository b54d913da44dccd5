import json

import numpy as np
import pytest

from imtcxr_jax.data import tfds as cxr_tfds
from imtcxr_jax.data.pipeline import load_image
from tests.data.tfds.fixtures import pixels, write_csv, write_png

DATA_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)


def make_nih(root):
    rows = [
        ("00000001_000.png", "Cardiomegaly|Effusion", "1"),
        ("00000001_001.png", "No Finding", "1"),
        ("00000002_000.png", "Infiltration", "2"),
        ("00000003_000.png", "Pleural_Thickening|Mass", "3"),
        ("00000004_000.png", "Nodule", "4"),  # its box lies outside the image
        ("00000005_000.png", "Flu", "5"),  # unknown label
        ("00000006_000.png", "Hernia", "6"),  # image missing
    ]
    lines = [DATA_ENTRY_HEADER]
    for k, (name, labels, patient) in enumerate(rows):
        lines.append(f"{name},{labels},{k},{patient},50,M,PA,64,64,0.143,0.143")
        if name != "00000006_000.png":
            write_png(root / "images_001" / "images" / name, pixels(k))
    write_csv(root / "Data_Entry_2017_v2020.csv", lines)
    write_csv(
        root / "BBox_List_2017.csv",
        [
            "Image Index,Finding Label,Bbox [x,y,w,h],,,",
            "00000001_000.png,Cardiomegaly,10.5,20.0,30.25,20,,,",
            "00000002_000.png,Infiltrate,5,6,10,12,,,",
            "00000004_000.png,Nodule,50,50,30,30,,,",
        ],
    )
    (root / "train_val_list.txt").write_text(
        "\n".join(n for n, _, _ in rows if not n.startswith("00000003")) + "\n"
    )
    (root / "test_list.txt").write_text("00000003_000.png\n")


def test_chestxray14_build_and_read(tmp_path):
    make_nih(tmp_path / "nih")
    folder, log = cxr_tfds.build("chestxray14", tmp_path / "nih", tmp_path / "out", progress=False)
    assert log.report.counts == {"invalid_box": 1, "unknown_label": 1, "missing_image": 1}
    report = json.loads((folder / "build_report.json").read_text())
    assert report["rejected"] == 3 and report["accepted"] == 4
    assert "BBox_List_2017.csv" not in report["examples"]["unknown_label"][0]
    records = {}
    for split in ("train", "validation", "test"):
        try:
            part, rejected = cxr_tfds.read_records(tmp_path / "out", "chestxray14", split)
        except FileNotFoundError:
            continue
        assert rejected.rejected == 0
        records.update({r.key: r for r in part})
    assert set(records) == {"00000001_000", "00000001_001", "00000002_000", "00000003_000"}
    assert records["00000003_000"].split == "test"
    assert records["00000001_000"].split == records["00000001_001"].split  # same patient
    first = records["00000001_000"]
    assert first.labels == ("cardiomegaly", "pleural effusion")
    np.testing.assert_allclose(first.boxes("cardiomegaly"), [[10.5, 20.0, 40.75, 40.0]])
    assert records["00000002_000"].findings[0].label == "infiltration"
    assert records["00000003_000"].labels == ("pleural thickening", "mass")
    assert records["00000001_001"].labels == ()
    assert first.families == ("classification", "localization")
    images = cxr_tfds.TfdsImages(tmp_path / "out")
    np.testing.assert_array_equal(load_image(images.open_image(first.image)), pixels(0))


def test_chestxray14_strict_stops_at_first_bad_row(tmp_path):
    make_nih(tmp_path / "nih")
    with pytest.raises(cxr_tfds.BuildError, match=r"Data_Entry_2017_v2020\.csv:7: unknown_label"):
        cxr_tfds.build("chestxray14", tmp_path / "nih", tmp_path / "out", strict=True, progress=False)
    assert not (tmp_path / "out" / "chestxray14" / "1.0.0").exists()
