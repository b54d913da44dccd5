"""VinDr-CXR, ChestX-Det, RSNA and MS-CXR: box datasets."""

import json

import numpy as np

from imtcxr_jax.data.pipeline import load_image
from imtcxr_jax.data.tfds import TfdsImages
from tests.data.tfds.fixtures import build_and_read, pixels, write_csv, write_dicom, write_jpeg, write_png


def test_vindr_cxr_fuses_readers(tmp_path):
    root = tmp_path / "vindr"
    for k, image_id in enumerate(["a1", "a2", "a3", "t1"]):
        folder = "test" if image_id.startswith("t") else "train"
        write_dicom(root / folder / f"{image_id}.dicom", pixels(k, 80, 64))
    header = "image_id,rad_id,class_name,x_min,y_min,x_max,y_max"
    write_csv(
        root / "annotations" / "annotations_train.csv",
        [
            header,
            "a1,R1,Cardiomegaly,20,30,60,50",
            "a1,R2,Cardiomegaly,22,30,62,52",
            "a1,R3,Nodule/Mass,5,5,10,10",  # one reader of three: dropped
            "a1,R3,Cardiomegaly,21,31,61,51",
            "a2,R1,No finding,,,,",
            "a2,R2,No finding,,,,",
            "a2,R3,No finding,,,,",
            "a3,R1,Pleural effusion,10,40,30,20",  # y_min > y_max: invalid box
        ],
    )
    write_csv(root / "annotations" / "annotations_test.csv", [header, "t1,R8,ILD,10,10,40,40"])
    records, log = build_and_read("vindr_cxr", root, tmp_path / "out")
    assert log.report.counts == {"invalid_box": 1}
    assert "annotations_train.csv:9" in log.report.examples["invalid_box"][0]
    a1 = records["a1"]
    assert a1.labels == ("cardiomegaly",) and (a1.width, a1.height) == (80, 64)
    np.testing.assert_allclose(a1.boxes("cardiomegaly"), [[21, 30.33, 61, 51]], atol=0.01)
    assert records["a2"].labels == ()
    assert records["t1"].split == "test" and records["t1"].labels == ("interstitial lung disease",)
    stored = load_image(TfdsImages(tmp_path / "out").open_image(a1.image))
    source = pixels(0, 80, 64).astype(float)  # DICOM without a window: min-max to 0..255 (image_io), then PNG
    expected = (source - source.min()) * 255 / (source.max() - source.min())
    assert stored.shape == (64, 80) and np.abs(stored - expected).max() <= 1


def test_chestx_det(tmp_path):
    root = tmp_path / "det"
    for k, name in enumerate(["36302.png", "36303.png", "40000.png"]):
        write_png(root / "train" / name, pixels(k))
    write_png(root / "test" / "50000.png", pixels(5))
    ptx = [[10, 10], [30, 10], [30, 30], [30, 30], [10, 30]]
    train = [
        {"file_name": "36302.png", "syms": ["Effusion", "Pneumothorax"], "boxes": [[1, 2, 20, 30], [10, 10, 30, 30]],
         "polygons": [[[1, 2], [20, 2], [20, 30]], ptx]},
        {"file_name": "36303.png", "syms": [], "boxes": [], "polygons": []},
        {"file_name": "40000.png", "syms": ["Tumour"], "boxes": [[1, 1, 5, 5]], "polygons": [[[1, 1], [5, 1], [5, 5]]]},
    ]  # fmt: skip
    (root / "ChestX_Det_train.json").write_text(json.dumps(train))
    (root / "ChestX_Det_test.json").write_text(
        json.dumps([{"file_name": "50000.png", "syms": ["Mass"], "boxes": [[5, 5, 90, 9]], "polygons": []}])
    )
    records, log = build_and_read("chestx_det", root, tmp_path / "out")
    assert log.report.counts == {"unknown_label": 1, "invalid_box": 1}  # Tumour; box past the 64 px image
    first = records["36302"]
    assert first.labels == ("pleural effusion", "pneumothorax")
    np.testing.assert_allclose(first.polygons["pneumothorax"], [[10, 10], [30, 10], [30, 30], [10, 30]])
    assert records["36303"].labels == ()
    assert log.notes["lesion outlines not used (not a model task)"] == 1


def test_rsna_pneumonia(tmp_path):
    root = tmp_path / "rsna"
    for k, patient in enumerate(["p-1", "p-2", "p-3"]):
        write_dicom(root / "stage_2_train_images" / f"{patient}.dcm", pixels(k), patient=patient)
    write_csv(
        root / "stage_2_train_labels.csv",
        ["patientId,x,y,width,height,Target", "p-1,10,12,20,30,1", "p-1,40,12,10,30,1", "p-2,,,,,0",
         "p-3,10,10,-5,5,1", "p-4,,,,,0"],
    )  # fmt: skip
    write_csv(
        root / "stage_2_detailed_class_info.csv", ["patientId,class", "p-1,Lung Opacity", "p-1,Lung Opacity"]
    )
    records, log = build_and_read("rsna_pneumonia", root, tmp_path / "out")
    assert log.report.counts == {"invalid_box": 1, "missing_image": 1}
    np.testing.assert_allclose(records["p-1"].boxes("pneumonia"), [[10, 12, 30, 42], [40, 12, 50, 42]])
    assert records["p-1"].extras["class"] == "Lung Opacity"
    assert records["p-2"].labels == () and records["p-2"].families == ("localization",)


def test_ms_cxr(tmp_path):
    root = tmp_path / "ms"
    path = "files/p10/p10000032/s50414267/d1.jpg"
    write_jpeg(root / path, pixels(1, 96, 64))
    write_jpeg(root / "files/p11/p11000001/s5/d2.jpg", pixels(2))
    write_csv(
        root / "MS_CXR_Local_Alignment_v1.1.0.csv",
        [
            "dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height,split",
            f"d1,Pneumonia,right lower lobe pneumonia,{path},10,20,30,15,96,64,train",
            f"d1,Pneumonia,right lower lobe pneumonia,{path},50,20,10,10,96,64,train",
            f"d1,Pleural Effusion,small left effusion,{path},60,40,20,10,96,64,train",
            "d2,Edema,mild edema,files/p11/p11000001/s5/d2.jpg,1,1,5,5,100,100,val",  # wrong size
        ],
    )
    records, log = build_and_read("ms_cxr", root, tmp_path / "out")
    assert log.report.counts == {"image_size_mismatch": 1}
    d1 = records["d1"]
    assert d1.labels == ("pneumonia", "pleural effusion") and d1.patient == "10000032"
    np.testing.assert_allclose(d1.boxes("pneumonia"), [[10, 20, 40, 35], [50, 20, 60, 30]])
    assert d1.extras["phrases"]["pleural effusion"] == ["small left effusion"]
