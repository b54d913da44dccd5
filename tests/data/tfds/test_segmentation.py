"""SIIM, CheXmask, JSRT + SCR and the IMT-CXR TSVs: masks decoded and checked against known masks."""

import numpy as np
from PIL import Image

from imtcxr_jax import geometry
from imtcxr_jax.data.pipeline import load_image
from imtcxr_jax.data.tfds import TfdsImages, rle
from tests.data.tfds.fixtures import build_and_read, disk, phantom, pixels, write_csv, write_dicom, write_png


def test_siim(tmp_path):
    root = tmp_path / "siim"
    shape = (96, 96)
    part_a, part_b = disk(30, 30, 12, shape), disk(70, 60, 6, shape)
    for k, image_id in enumerate(["1.2.3.1", "1.2.3.2", "1.2.3.3"]):
        write_dicom(
            root / "dicom-images-train" / image_id / "s" / f"{image_id}.dcm", pixels(k, 96), patient=f"P{k}"
        )
    write_csv(
        root / "train-rle.csv",
        ["ImageId, EncodedPixels", f"1.2.3.1, {rle.siim_encode(part_a)}", f"1.2.3.1, {rle.siim_encode(part_b)}",
         "1.2.3.2, -1", "1.2.3.3, 5 99999"],
    )  # fmt: skip
    records, log = build_and_read("siim", root, tmp_path / "out")
    assert log.report.counts == {"malformed_rle": 1}
    assert log.notes["pneumothorax components beyond the largest (not outlined)"] == 1
    first = records["1.2.3.1"]
    assert first.labels == ("pneumothorax",) and first.families == ("segmentation",)
    decoded = geometry.polygon_to_mask(first.polygons["pneumothorax"], shape)
    assert geometry.dice(decoded, part_a) > 0.93
    assert records["1.2.3.2"].polygons == {}


def test_chexmask(tmp_path):
    root = tmp_path / "chexmask"
    size = 128
    source = phantom(3, size)
    names = {"right lung": "right_lung", "left lung": "left_lung", "heart": "heart"}
    masks = {
        s: geometry.polygon_to_mask(np.round(source.polygons[n]), (size, size)) for s, n in names.items()
    }
    landmarks = np.concatenate(
        [geometry.resample_polygon(np.round(source.polygons[names[s]]), n) for s, n in
         (("right lung", 44), ("left lung", 50), ("heart", 26))]
    )  # fmt: skip
    masks = {s: geometry.polygon_to_mask(landmarks[sl], (size, size)) for s, sl in
             (("right lung", slice(0, 44)), ("left lung", slice(44, 94)), ("heart", slice(94, 120)))}  # fmt: skip
    text = "[" + ", ".join(f"[{x:.1f}, {y:.1f}]" for x, y in landmarks) + "]"
    numpy_style = str(np.round(landmarks, 1))  # "[[ x  y]\n [ x  y] ...]": the other writer's format
    enc = {s: rle.chexmask_encode(m) for s, m in masks.items()}
    header = "image_id,Dice RCA (Mean),Dice RCA (Max),Landmarks,Left Lung,Right Lung,Heart,Height,Width"

    def row(image_id, rca, landmark_text, left=None):
        cells = [
            image_id,
            rca,
            "0.9",
            f'"{landmark_text}"',
            left or enc["left lung"],
            enc["right lung"],
            enc["heart"],
        ]
        return ",".join([*cells, str(size), str(size)])

    for k, image_id in enumerate(["v1", "v2", "v3", "v4", "v5"]):
        write_png(root / "images" / f"{image_id}.png", pixels(k, size))
    write_csv(
        root / "OriginalResolution" / "VinDr-CXR.csv",
        [header, row("v1", "0.85", text), row("v2", "0.80", numpy_style.replace("\n", " ")),
         row("v3", "0.5", text), row("v4", "0.9", text, left="3 2 1 5"), row("v5", "0.9", "")],
    )  # fmt: skip
    records, log = build_and_read("chexmask", root, tmp_path / "out")
    assert log.report.counts == {"malformed_rle": 1}
    assert log.skipped == {"Dice RCA (Mean) < 0.7": 1}
    for key in ("VinDr-CXR/v1", "VinDr-CXR/v2", "VinDr-CXR/v5"):
        record = records[key]
        assert set(record.polygons) == {"right lung", "left lung", "heart"}
        for structure, mask in masks.items():
            decoded = geometry.polygon_to_mask(record.polygons[structure], (size, size))
            assert geometry.dice(decoded, mask) > (0.999 if key != "VinDr-CXR/v5" else 0.9), (key, structure)
    # the RLE decoder against the known masks
    for structure, mask in masks.items():
        np.testing.assert_array_equal(rle.chexmask_decode(enc[structure], size, size), mask)


def test_jsrt_raw_images_and_scr_masks(tmp_path):
    root = tmp_path / "jsrt"
    base = phantom(4, 256)
    values = (4095 - np.kron(base.image.astype(np.uint16) * 16, np.ones((8, 8), dtype=np.uint16))).astype(
        ">u2"
    )
    (root / "All247images").mkdir(parents=True)
    (root / "All247images" / "JPCLN001.IMG").write_bytes(values.tobytes())
    (root / "All247images" / "JPCNN001.IMG").write_bytes(b"\0" * 100)  # truncated
    (root / "All247images" / "JPCNN002.IMG").write_bytes(values.tobytes())  # no masks
    known = {}
    for structure, name in (("left lung", "left_lung"), ("right lung", "right_lung"), ("heart", "heart")):
        mask = np.kron(base.masks[name], np.ones((4, 4), dtype=bool))  # 1024 x 1024, half resolution
        known[structure] = mask
        for stem in ("JPCLN001", "JPCNN001"):
            path = root / "scratch" / "fold1" / "masks" / structure / f"{stem}.gif"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    records, log = build_and_read("jsrt", root, tmp_path / "out")
    assert log.report.counts == {"unreadable_image": 1, "bad_field": 1}
    record = records["JPCLN001"]
    assert (record.width, record.height) == (2048, 2048) and record.split == "train"
    for structure, mask in known.items():
        decoded = geometry.polygon_to_mask(np.asarray(record.polygons[structure]) / 2, (1024, 1024))
        assert geometry.dice(decoded, mask) > 0.95, structure
    with Image.open(TfdsImages(tmp_path / "out").open_image(record.image)) as image:
        stored = np.asarray(image)
    assert stored.shape == (2048, 2048) and stored.dtype == np.uint16
    expected = (4095 - values.astype(np.uint32)) * 65535 // 4095
    np.testing.assert_array_equal(stored, expected)


def test_imtcxr_tsv(tmp_path):
    root = tmp_path / "tsv"
    for k in range(4):
        write_png(root / "images" / f"{k}.png", pixels(k))
    (root / "report_classification").mkdir()
    (root / "report_classification" / "train.tsv").write_text(
        "1\t1\tthe heart is enlarged . small effusion .\tCardiomegaly&&Pleural Effusion\timages/0.png,images/1.png\t10\t50\t\n"
        "2\t2\tno acute process .\tNo Finding\timages/1.png\t11\t51\t\n"
        "3\t3\tx\tDragon\timages/1.png\t11\t51\t\n"
    )
    (root / "vqa_attribute").mkdir()
    (root / "vqa_attribute" / "val.tsv").write_text(
        "7\t7\tr\tAtelectasis&&Pleural Effusion\timages/2.png\t12\t52\t"
        "atelectasis,right&small&base,effusion,left&moderate\n"
    )
    (root / "localization").mkdir()
    (root / "localization" / "trian.tsv").write_text(
        "194_111\t20\tNodule,Mass\t1,2,10,12,20,20,30,30&&5,5,40,40\timages/3.png\n"
        "194_112\t21\tNodule\t1,2,10\timages/3.png\n"
    )
    (root / "segmentation").mkdir()
    (root / "segmentation" / "trian.tsv").write_text(
        "30\tleft lung&&heart\t1,1,20,1,20,20&&30,30;40,30;40,40\timages/0.png\t10\t50\n"
        "31\tright\t1,1,20,1,20,20\timages/1.png\t10\t50\n"
    )
    records, log = build_and_read("imtcxr_tsv", root, tmp_path / "out")
    assert log.report.counts == {"unknown_label": 1, "invalid_box": 1}
    report = records["report_classification/train/1"]
    assert report.labels == ("cardiomegaly", "pleural effusion") and report.families == (
        "classification",
        "report",
    )
    assert report.report == "the heart is enlarged . small effusion ."
    np.testing.assert_array_equal(
        load_image(TfdsImages(tmp_path / "out").open_image(report.image)), pixels(0)
    )
    attribute = records["vqa_attribute/validation/7"]
    assert attribute.attributes == {
        "atelectasis": ("right", "mild"),
        "pleural effusion": ("left", "moderate"),
    }
    boxes = records["localization/train/20"]
    np.testing.assert_allclose(boxes.boxes("nodule"), [[1, 2, 10, 12], [20, 20, 30, 30]])
    seg = records["segmentation/train/30"]
    assert set(seg.polygons) == {"left lung", "heart"} and seg.families == ("segmentation",)
    assert set(records["segmentation/train/31"].polygons) == {"right lung"}


def test_every_stored_example_lines_up_with_its_record(tmp_path):
    test_imtcxr_tsv(tmp_path)
    images = TfdsImages(tmp_path / "out")
    records, _ = build_and_read("imtcxr_tsv", tmp_path / "tsv", tmp_path / "again")
    for record in records.values():
        images.example(record.image)  # raises when the stored key differs
