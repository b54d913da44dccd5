"""ChestX-Det (Deepwise; data-eval-ecosystem §1.4): 13 lesion classes with boxes and polygons on NIH images.

Manual dir: ``ChestX_Det_train.json``, ``ChestX_Det_test.json`` (JSON lists of ``{"file_name", "syms",
"boxes", "polygons"}``, the three lists parallel per lesion) and the PNGs anywhere below (``train/``,
``test/``), found by file name.

* Labels: the distinct ``syms`` (harmonised); an empty record is a normal image. Boxes: integer
  ``[x1, y1, x2, y2]`` pixels. Polygons: the lesion contours are not a task of the model except the
  pneumothorax, kept as the ``pneumothorax`` structure when the image has exactly one (several: none kept,
  counted in the notes); other lesion polygons are counted in the notes. Repeated contour points are removed.
* Split: official train / test; validation carved from train by `common.patient_split` on the NIH patient id
  (the file name's prefix) [choice]. Families: classification, localization, segmentation.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from imtcxr_jax.data.tfds import common
from imtcxr_jax.data.tfds.common import BadRow, Item, Rejected

NAME = "chestx_det"


class ChestxDet(common.CxrBuilder, skip_registration=True):
    """ChestX-Det: 3,578 NIH radiographs with 13 lesion classes boxed and outlined by radiologists."""

    name = NAME
    FAMILIES = ("classification", "localization", "segmentation")
    HOMEPAGE = "https://github.com/Deepwise-AILab/ChestX-Det-Dataset"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Download ChestX_Det_train.json, ChestX_Det_test.json and the train/test image archives from
    https://github.com/Deepwise-AILab/ChestX-Det-Dataset and extract them into the manual dir.
    """

    def _items(self, manual_dir: Path) -> Iterator[Item | Rejected]:
        assert self.build_log is not None
        images = common.file_index(manual_dir, [".png"])
        for split_word in ("train", "test"):
            path = common.find_file(
                manual_dir, [f"ChestX_Det_{split_word}.json"], f"ChestX_Det_{split_word}.json"
            )
            entries = json.loads(path.read_text())
            if not isinstance(entries, list):
                raise ValueError(f"{path}: expected a JSON list of records, got {type(entries).__name__}")
            for k, entry in enumerate(entries):
                where = f"{path.name}[{k}]"
                try:
                    key, row, patient = self._row(entry)
                    if key not in images:
                        raise BadRow(
                            "missing_image", f"image {entry['file_name']!r} not found under {manual_dir}"
                        )
                except BadRow as bad:
                    yield Rejected(bad.reason, where, bad.message)
                    continue
                split = (
                    "test" if split_word == "test" else common.patient_split(NAME, patient, (0.9, 0.1, 0.0))
                )
                yield Item(key, split, str(images[key].relative_to(manual_dir)), where, row, patient=patient)

    def _row(self, entry: object) -> tuple[str, dict, str]:
        assert self.build_log is not None
        if not isinstance(entry, dict) or not isinstance(entry.get("file_name"), str):
            raise BadRow("bad_field", f"expected an object with a string 'file_name', got {entry!r:.120}")
        syms, boxes, polygons = (entry.get(name, []) for name in ("syms", "boxes", "polygons"))
        if not all(isinstance(v, list) for v in (syms, boxes, polygons)) or not len(syms) == len(boxes):
            raise BadRow("bad_field", "'syms' and 'boxes' must be parallel lists")
        if polygons and len(polygons) != len(syms):
            raise BadRow("bad_field", "'polygons' must be parallel to 'syms'")
        labels = [common.harmonise_label(NAME, str(sym)) for sym in syms]
        findings = [
            {"label": label, "box": common.xyxy_box(box, f"boxes[{i}]")}
            for i, (label, box) in enumerate(zip(labels, boxes, strict=True))
        ]
        structures = {}
        pneumothorax = [p for label, p in zip(labels, polygons, strict=False) if label == "pneumothorax"]
        if len(pneumothorax) == 1:
            points = list(dict.fromkeys(tuple(point) for point in pneumothorax[0]))
            structures["pneumothorax"] = [list(point) for point in points]
        elif len(pneumothorax) > 1:
            self.build_log.note("pneumothorax outlines not kept (several per image)")
        self.build_log.note("lesion outlines not used (not a model task)", len(polygons) - len(structures))
        key = entry["file_name"].rsplit(".", 1)[0]
        return (
            key,
            {"labels": common.labels_field(labels), "findings": findings, "polygons": structures},
            key.split("_")[0],
        )
