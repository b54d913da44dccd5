"""CheXpert-style label cells (CheXpert CSVs, MIMIC-CXR's chexpert/negbio files) -> harmonised labels.

``1.0`` positive; ``0.0`` and blank (not mentioned) negative; ``-1.0`` uncertain, resolved per label by
`harmonise.uncertain_policy`. ``No Finding`` holds when no other observation is positive (after the policy):
``Support Devices`` alone does not make a study abnormal, but it is kept as a label. Any other cell value is a
``bad_field`` reject naming the column.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from imtcxr_jax.data.tfds import common, harmonise
from imtcxr_jax.data.tfds.common import BadRow

OBSERVATIONS = tuple(harmonise.LABELS["chexpert"])  # the 14 column names


def labels_from_cells(
    dataset: str, row: Mapping[str, str], columns: Sequence[str] = OBSERVATIONS
) -> list[str]:
    """Harmonised positive labels of one row, in column order; ``[]`` = no finding."""
    positive = []
    for column in columns:
        if column == "No Finding":
            continue
        cell = row[column].strip()
        if cell in ("", "0", "0.0"):
            continue
        if cell in ("1", "1.0"):
            value = True
        elif cell in ("-1", "-1.0"):
            value = harmonise.uncertain_policy(common.harmonise_label(dataset, column)) == "positive"
        else:
            raise BadRow("bad_field", f"column {column!r} is {cell!r}, expected 1.0, 0.0, -1.0 or blank")
        if value:
            positive.append(common.harmonise_label(dataset, column))
    return positive
