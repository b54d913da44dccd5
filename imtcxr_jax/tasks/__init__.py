"""The four instruction tasks: each module builds instructions, formats targets and parses model outputs.

* `classification`: which diseases, is X present, where is X, how severe is X.
* `localization`: the boxes of a lesion.
* `segmentation`: the polygon of a lung, the heart or a pneumothorax.
* `report`: the report, plain or prompted with the evidence of the other tasks.

`common` holds what they share: `Task`, `TaskSample`, `Unparseable` and the text normalisation of spec §9.2.
"""

from imtcxr_jax.tasks import classification, localization, report, segmentation
from imtcxr_jax.tasks.common import Task, TaskSample, Unparseable

__all__ = ["Task", "TaskSample", "Unparseable", "classification", "localization", "report", "segmentation"]
