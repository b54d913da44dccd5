"""The harmonisation rules of the real-dataset builders, as data: one table per decision.

Every builder maps its dataset's own words onto the project's vocabularies through these tables and nothing
else, so that the choices can be read (and changed) in one place:

* `LABELS`: per dataset, each label *as the dataset spells it* -> the harmonised disease label (lower-case).
  Synonyms meet on one name (``Effusion``, ``Pleural effusion`` -> ``pleural effusion``; NIH's ``Infiltrate``
  box label -> ``infiltration``; ``Pleural_Thickening`` -> ``pleural thickening``). Labels outside the model's
  26-name vocabulary (`classification.DISEASES`) keep their own name and are listed in `EXTRA_DISEASES`, so
  that no ground truth is dropped and a "which diseases?" answer stays complete. A label missing from its
  dataset's table is an ``unknown_label`` reject: a new release with a new class must be looked at, not
  guessed.
* `UNCERTAIN`: what a CheXpert-style ``-1.0`` (uncertain) label becomes, per label, with a default. Blank
  (not mentioned) and ``0.0`` are negative.
* `LOCATION_SYNONYMS` / `SEVERITY_SYNONYMS`: words of attribute strings (IMT-CXR ``vqa_attribute`` rows) ->
  the location and severity vocabularies of `classification`.
* `FRONTAL_VIEWS`: the view positions kept where a dataset holds laterals too (the tasks are posed on frontal
  films; CTR is defined on PA/AP). Other views are skipped *by policy* and counted in the build report.
* `SPLIT_NAMES`: a dataset's split words -> ``train`` / ``validation`` / ``test``.
* `PATIENT_SPLIT`: the fractions of the deterministic patient-level split used where a dataset has no
  official one (`common.patient_split`).

Choices that the paper does not pin down are marked [choice].
"""

from __future__ import annotations

from types import MappingProxyType

from imtcxr_jax.tasks import classification


def _table(entries: dict) -> MappingProxyType:
    return MappingProxyType(entries)


# Labels some datasets hold that the model's 26-name vocabulary lacks; kept under their own (lower-case) name.
EXTRA_DISEASES = (
    "aortic enlargement",
    "calcification",
    "diffuse nodule",
    "interstitial lung disease",
    "other lesion",
)

# CheXpert / MIMIC-CXR observation columns: the same 14 names in both.
_CHEXPERT = {
    name: name.lower()
    for name in (
        "Atelectasis",
        "Cardiomegaly",
        "Consolidation",
        "Edema",
        "Enlarged Cardiomediastinum",
        "Fracture",
        "Lung Lesion",
        "Lung Opacity",
        "No Finding",
        "Pleural Effusion",
        "Pleural Other",
        "Pneumonia",
        "Pneumothorax",
        "Support Devices",
    )
}

LABELS = _table(
    {
        "mimic_cxr": _table(_CHEXPERT),
        "chexpert": _table(_CHEXPERT),
        "ms_cxr": _table(
            {
                "Atelectasis": "atelectasis",
                "Cardiomegaly": "cardiomegaly",
                "Consolidation": "consolidation",
                "Edema": "edema",
                "Lung Opacity": "lung opacity",
                "Pleural Effusion": "pleural effusion",
                "Pneumonia": "pneumonia",
                "Pneumothorax": "pneumothorax",
            }
        ),
        "vindr_cxr": _table(
            {
                "Aortic enlargement": "aortic enlargement",
                "Atelectasis": "atelectasis",
                "Calcification": "calcification",
                "Cardiomegaly": "cardiomegaly",
                "Consolidation": "consolidation",
                "ILD": "interstitial lung disease",
                "Infiltration": "infiltration",
                "Lung Opacity": "lung opacity",
                "Nodule/Mass": "nodule",  # [choice] VinDr merges the two; IMT-CXR's box list has both
                "Other lesion": "other lesion",
                "Pleural effusion": "pleural effusion",
                "Pleural thickening": "pleural thickening",
                "Pneumothorax": "pneumothorax",
                "Pulmonary fibrosis": "fibrosis",
                "No finding": "no finding",
            }
        ),
        "chestx_det": _table(
            {
                "Atelectasis": "atelectasis",
                "Calcification": "calcification",
                "Cardiomegaly": "cardiomegaly",
                "Consolidation": "consolidation",
                "Diffuse Nodule": "diffuse nodule",
                "Effusion": "pleural effusion",
                "Emphysema": "emphysema",
                "Fibrosis": "fibrosis",
                "Fracture": "fracture",
                "Mass": "mass",
                "Nodule": "nodule",
                "Pleural Thickening": "pleural thickening",
                "Pneumothorax": "pneumothorax",
            }
        ),
        "chestxray14": _table(
            {
                "Atelectasis": "atelectasis",
                "Cardiomegaly": "cardiomegaly",
                "Consolidation": "consolidation",
                "Edema": "edema",
                "Effusion": "pleural effusion",
                "Emphysema": "emphysema",
                "Fibrosis": "fibrosis",
                "Hernia": "hernia",
                "Infiltration": "infiltration",
                "Infiltrate": "infiltration",  # BBox_List_2017.csv spells it so
                "Mass": "mass",
                "Nodule": "nodule",
                "Pleural_Thickening": "pleural thickening",
                "Pneumonia": "pneumonia",
                "Pneumothorax": "pneumothorax",
                "No Finding": "no finding",
            }
        ),
        # RSNA: Target 1 is "opacity suggestive of pneumonia" (the competition's label).
        "rsna_pneumonia": _table({"1": "pneumonia", "0": "no finding"}),
        # SIIM: a mask is a pneumothorax.
        "siim": _table({"pneumothorax": "pneumothorax"}),
        # IMT-CXR TSVs use the 26 names (any capitalisation; looked up lower-cased); attribute rows say "effusion".
        "imtcxr_tsv": _table(
            {name: name for name in classification.DISEASES + EXTRA_DISEASES}
            | {"effusion": "pleural effusion"}
        ),
    }
)

# CheXpert-style -1.0: [choice] U-Zeros by default, U-Ones for the two observations where the CheXpert paper
# found it better (Atelectasis, Edema). "positive" or "negative".
UNCERTAIN_DEFAULT = "negative"
UNCERTAIN = _table({"atelectasis": "positive", "edema": "positive"})

# Attribute words -> `classification.LOCATIONS` (left/right are the patient's).
LOCATION_SYNONYMS = _table(
    {
        **{word: word for word in classification.LOCATIONS},
        "bilateral": "bilateral",
        "both": "bilateral",
        "basal": "base",
        "bases": "base",
        "lower": "lower",
        "lower lobe": "lower lobe",
        "lower zone": "lower",
        "middle lobe": "middle",
        "mid zone": "mid",
        "upper lobe": "upper",
        "upper zone": "upper",
        "apex": "apical",
        "apices": "apical",
        "hilar": "perihilar",
    }
)
SEVERITY_SYNONYMS = _table(
    {
        "mild": "mild",
        "minimal": "mild",
        "small": "mild",
        "trace": "mild",
        "moderate": "moderate",
        "severe": "severe",
        "large": "severe",
        "massive": "severe",
    }
)

FRONTAL_VIEWS = frozenset({"PA", "AP"})

SPLIT_NAMES = _table(
    {
        "train": "train",
        "training": "train",
        "validate": "validation",  # MIMIC-CXR
        "validation": "validation",
        "valid": "validation",  # CheXpert
        "val": "validation",  # MS-CXR, IMT-CXR TSVs
        "test": "test",
    }
)

# Deterministic patient-level split where none is official: (train, validation, test) fractions. [choice]
PATIENT_SPLIT = (0.8, 0.1, 0.1)


def uncertain_policy(label: str) -> str:
    """ "positive" or "negative" for a CheXpert-style uncertain (-1.0) ``label`` (harmonised name)."""
    return UNCERTAIN.get(label, UNCERTAIN_DEFAULT)


def vocabulary() -> tuple[str, ...]:
    """Every harmonised disease label a builder may write: the model's 26 plus `EXTRA_DISEASES`."""
    return classification.DISEASES + EXTRA_DISEASES
