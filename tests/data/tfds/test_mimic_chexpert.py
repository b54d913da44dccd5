import numpy as np

from imtcxr_jax.data.tfds import TfdsImages
from imtcxr_jax.data.tfds.mimic_cxr import report_sections
from tests.data.tfds.fixtures import build_and_read, pixels, write_csv, write_jpeg

CHEXPERT_COLUMNS = (
    "Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,Fracture,Lung Lesion,Lung Opacity,"
    "No Finding,Pleural Effusion,Pleural Other,Pneumonia,Pneumothorax,Support Devices"
)
REPORT = "\n".join(
    [
        "                                 FINAL REPORT",
        " EXAMINATION:  CHEST (PA AND LAT)",
        "",
        " INDICATION:  ___ with cough",
        "",
        " FINDINGS:",
        " ",  # MIMIC reports hold lines of one space
        " There is a small left pleural effusion.  The heart is mildly",
        " enlarged.",
        " ",
        " IMPRESSION:",
        " ",
        " Small left effusion.  Mild cardiomegaly.",
        "",
    ]
)


def _cells(**values):
    return ",".join(values.get(name, "") for name in CHEXPERT_COLUMNS.split(","))


def test_report_sections():
    findings, impression = report_sections(REPORT)
    assert findings == "There is a small left pleural effusion. The heart is mildly enlarged."
    assert impression == "Small left effusion. Mild cardiomegaly."


def test_mimic_cxr(tmp_path):
    root = tmp_path / "mimic"
    ids = [("d1", "10000032", "50414267", "PA", "train"), ("d2", "10000032", "50414267", "LATERAL", "train"),
           ("d3", "10000033", "50000001", "AP", "validate"), ("d4", "10000034", "50000002", "PA", "test"),
           ("d5", "10000035", "50000003", "PA", "train")]  # fmt: skip
    meta = ["dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,"
            "StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
            "PatientOrientationCodeSequence_CodeMeaning"]  # fmt: skip
    split = ["dicom_id,study_id,subject_id,split"]
    for k, (dicom, subject, study, view, name) in enumerate(ids):
        meta.append(
            f"{dicom},{subject},{study},CHEST (PA AND LAT),{view},64,64,21800506,213014.531,x,y,Erect"
        )
        split.append(f"{dicom},{study},{subject},{name}")
        if dicom != "d4":  # d4: missing image
            write_jpeg(
                root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg", pixels(k)
            )
    write_csv(root / "mimic-cxr-2.0.0-metadata.csv", meta)
    write_csv(root / "mimic-cxr-2.0.0-split.csv", split)
    write_csv(
        root / "mimic-cxr-2.0.0-chexpert.csv",
        [
            f"subject_id,study_id,{CHEXPERT_COLUMNS}",
            "10000032,50414267,"
            + _cells(Cardiomegaly="1.0", **{"Pleural Effusion": "-1.0", "Edema": "-1.0"}),
            "10000033,50000001," + _cells(**{"No Finding": "1.0"}),
            "10000034,50000002," + _cells(Atelectasis="1.0"),
            "10000035,50000003," + _cells(Cardiomegaly="2.0"),  # bad value
        ],
    )
    (root / "files" / "p10" / "p10000032" / "s50414267.txt").write_text(REPORT)
    records, log = build_and_read("mimic_cxr", root, tmp_path / "out")
    assert log.report.counts == {"missing_image": 1, "bad_field": 1}
    assert log.skipped == {"view LATERAL (not frontal)": 1}
    assert set(records) == {"d1", "d3"}
    d1, d3 = records["d1"], records["d3"]
    assert d1.split == "train" and d3.split == "validation"
    assert d1.labels == ("cardiomegaly", "edema")  # uncertain edema positive, uncertain effusion negative
    assert d1.report == (
        "there is a small left pleural effusion. the heart is mildly enlarged. small left effusion. mild cardiomegaly."
    )
    assert d3.labels == () and d3.report is None
    assert d1.families == ("classification", "report")
    data = TfdsImages(tmp_path / "out").open_image(d1.image).read()
    assert data == (root / "files/p10/p10000032/s50414267/d1.jpg").read_bytes()  # original JPEG bytes


def test_chexpert(tmp_path):
    root = tmp_path / "chexpert"
    header = f"Path,Sex,Age,Frontal/Lateral,AP/PA,{CHEXPERT_COLUMNS}"
    rows = [
        ("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg", "Frontal", _cells(Edema="-1.0", Cardiomegaly="-1.0")),
        ("CheXpert-v1.0-small/train/patient00001/study1/view2_lateral.jpg", "Lateral", _cells(Edema="1.0")),
        ("CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg", "Frontal", _cells(**{"No Finding": "1.0", "Support Devices": "1.0"})),
    ]  # fmt: skip
    for k, (path, _, _) in enumerate(rows):
        write_jpeg(root / path, pixels(k))
    write_csv(
        root / "CheXpert-v1.0-small" / "train.csv", [header] + [f"{p},Male,60,{v},AP,{c}" for p, v, c in rows]
    )
    valid = "CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg"
    write_jpeg(root / valid, pixels(9))
    write_csv(
        root / "CheXpert-v1.0-small" / "valid.csv",
        [header, f"{valid},Female,70,Frontal,PA," + _cells(Atelectasis="1.0")],
    )
    records, log = build_and_read("chexpert", root, tmp_path / "out")
    assert log.report.rejected == 0 and sum(log.skipped.values()) == 1
    first = records[rows[0][0]]
    assert first.labels == ("edema",) and first.patient == "patient00001" and first.split == "train"
    assert records[rows[2][0]].labels == ("support devices",)
    assert records[valid].split == "validation" and records[valid].labels == ("atelectasis",)
    np.testing.assert_array_equal(records[valid].width, 64)
