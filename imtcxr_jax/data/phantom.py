"""Synthetic phantom chest radiographs with exact ground truth for every IMT-CXR task.

**Phantoms are not clinical data.** They are parametric drawings that look roughly like PA chest radiographs,
made so that the whole system can run, learn and be tested where no real radiographs can be had. Nothing
learned or measured on them says anything about patients or about the original model's accuracy.

`generate_phantom(seed, size, config)` draws one image and returns a `Phantom` holding it with its ground truth:
labels, findings (label, severity, location, box), masks and 30-point polygons of the lungs, the heart and any
pneumothorax, the cardiothoracic ratio (CTR), the pneumothorax ratio (PCR) and a findings + impression report.

What is drawn: body outline with neck and shoulders; two lung fields with apices, costophrenic angles and
hemidiaphragm domes (the right one higher); heart; mediastinum with trachea; spine; posterior and anterior
ribs; clavicles; a gastric bubble; branching vessels fanning out of the hila with finer texture; exposure,
contrast and noise variation; small rotations and patient-size variation. Findings: cardiomegaly, pleural
effusion (basal opacity with a meniscus), pneumothorax (retracted lung edge with a pleural line and no vessels
beyond it), nodule, mass, consolidation, pneumonia, atelectasis (plate-like band, or lobar collapse as a wedge)
and edema (bilateral perihilar haze); a study without any is "no finding".

Conventions (the pixel conventions are those of `imtcxr_jax.geometry`):

* The image is uint8 ``(size, size)``; brighter means more attenuation (bone white, lung dark).
* **Sides are the patient's.** Radiographs are PA views displayed facing the patient, so the patient's right
  lung (``right_lung``) is on the image's **left** and a "left" finding lies in the image's right half.
* ``right_lung`` / ``left_lung`` are the lung fields (the air space of each hemithorax, bounded by the chest
  wall, the diaphragm, the mediastinum and the heart), **including** any pneumothorax on that side;
  ``heart`` is the cardiac silhouette; ``pneumothorax`` is the pleural air between the retracted lung edge and
  the chest wall, a subset of its side's lung field.
* CTR is measured on the masks with `geometry.cardiothoracic_ratio`; the ``cardiomegaly`` label is present
  exactly when CTR > 0.51, with the severity of `geometry.ctr_severity`. PCR is `geometry.pneumothorax_ratio`
  of the pneumothorax and its lung field; its severity bins (`pcr_severity`: mild <= 0.25 < moderate <= 0.50 <
  severe) are this project's convention: there is no clinical standard.
* Zones divide each lung field's height (`zone_of`): apical (top 15 %), upper (to 40 %), middle (to 67 %),
  lower. Edema is ``bilateral`` / ``perihilar``, a pneumothorax ``apical``. A finding on both sides is two
  entries, one per side, each with its own box.
* Boxes are the tight pixel-edge boxes of the lesion masks (`Phantom.lesion_masks`); cardiomegaly's box is the
  heart's; edema, being diffuse, has none.
* Polygons are `geometry.mask_to_polygon` of the masks: 30 points from the top-most point, clockwise.
* Sizes in reports assume a nominal field of view of 400 mm across the image.

How it is drawn: anatomy and findings are geometric descriptions (polygons and shape functions in image
pixels). The ground-truth masks are evaluated from them at full resolution; the picture is rendered from the
same descriptions on an internal grid (full size up to 256 px, half size above: a radiograph's detail is
limited by its imaging chain anyway), upsampled (pixel doubling smoothed by a [1, 2, 1] blur, which amounts to
bilinear interpolation) and given full-resolution quantum noise. Edges in the picture therefore match the
masks to within a pixel of the internal grid.

Determinism: the same seed, size and config give identical bytes (with the same numpy and Pillow). The seed
feeds independent streams for anatomy, findings, texture and wording, so forcing other findings
(``PhantomConfig.findings``) leaves a seed's anatomy and noise unchanged. Texture banks (noise, vessel trees)
are drawn once per image size from a fixed seed and cached (the 4 latest sizes; about 2 MB at 512 px, 9 MB
at 1024 px), so the first phantom of a size takes longer (tens of milliseconds).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFilter

from imtcxr_jax import geometry
from imtcxr_jax.geometry import Mask, Polygon

FINDING_LABELS: tuple[str, ...] = (
    "cardiomegaly",
    "pleural effusion",
    "pneumothorax",
    "nodule",
    "mass",
    "consolidation",
    "pneumonia",
    "atelectasis",
    "edema",
)
NO_FINDING = "no finding"
LABELS: tuple[str, ...] = (*FINDING_LABELS, NO_FINDING)
SEVERITIES: tuple[str, ...] = ("mild", "moderate", "severe")
SIDES: tuple[str, ...] = ("right", "left", "bilateral")
ZONES: tuple[str, ...] = ("apical", "upper", "middle", "lower", "perihilar")
STRUCTURES: tuple[str, ...] = ("right_lung", "left_lung", "heart", "pneumothorax")
POLYGON_POINTS = 30
MIN_SIZE = 64
MAX_SIZE = 4096
# Zone boundaries as fractions of a lung field's height, from its top; below the last one is "lower".
ZONE_EDGES: tuple[tuple[float, str], ...] = ((0.15, "apical"), (0.40, "upper"), (0.67, "middle"))
# PCR severity (this project's convention): each bin includes its upper edge; above the last is "severe".
PCR_SEVERITY_EDGES: tuple[tuple[float, str], ...] = ((0.25, "mild"), (0.50, "moderate"))
FIELD_OF_VIEW_MM = 400.0
DEFAULT_FINDING_WEIGHTS: tuple[tuple[str, float], ...] = (
    ("cardiomegaly", 1.0),
    ("pleural effusion", 1.0),
    ("pneumothorax", 0.7),
    ("nodule", 0.8),
    ("mass", 0.5),
    ("consolidation", 0.8),
    ("pneumonia", 0.8),
    ("atelectasis", 0.9),
    ("edema", 0.6),
)

_SIGN = {"right": -1.0, "left": 1.0}  # the patient's right is on the image's left
_F32 = np.float32


# ------------------------------------------------------------------------------------------------------------
# Public types


@dataclass(frozen=True)
class PhantomConfig:
    """How phantoms are drawn. The defaults give a mixed dataset; tests and demos force findings.

    * ``p_normal``: share of studies without findings (when findings are sampled).
    * ``max_findings``: at most this many labels per study (1 to 3 are drawn, 55/30/15 %).
    * ``finding_weights``: relative frequency of each label among the findings drawn.
    * ``findings``: when given, exactly these labels instead of sampling (``()`` is a normal study).
    * ``severity``: when given, the intended severity of every finding. Measured findings (cardiomegaly,
      pneumothorax) are graded by their measurement, which at small sizes can differ from the intent; a
      cardiomegaly whose measured CTR is not above 0.51 is not labelled.
    * ``max_rotation_deg``, ``noise``: patient rotation range and a factor on the quantum noise.
    * ``max_shift``, ``min_zoom``: positioning. The finished radiograph (image, masks, polygons, boxes) is
      zoomed out by a factor in [``min_zoom``, 1] about its centre and shifted by up to ``max_shift`` image
      sides per axis, as far as the lungs and heart stay inside (real studies vary in centring and field of
      view; without it the mean outline of a structure is already a close answer). 0 and 1: no repositioning.
    * ``polygon_points``: points per ground-truth polygon.
    """

    p_normal: float = 0.3
    max_findings: int = 3
    finding_weights: tuple[tuple[str, float], ...] = DEFAULT_FINDING_WEIGHTS
    findings: tuple[str, ...] | None = None
    severity: str | None = None
    max_rotation_deg: float = 4.0
    noise: float = 1.0
    max_shift: float = 0.0
    min_zoom: float = 1.0
    polygon_points: int = POLYGON_POINTS

    def __post_init__(self) -> None:
        if not 0.0 <= self.p_normal <= 1.0:
            raise ValueError(f"p_normal must be in [0, 1], got {self.p_normal!r}")
        if self.max_findings < 1:
            raise ValueError(f"max_findings must be >= 1, got {self.max_findings!r}")
        for label, weight in self.finding_weights:
            _check_label(label, "finding_weights")
            if not weight >= 0:
                raise ValueError(f"finding_weights: weight of {label!r} must be >= 0, got {weight!r}")
        if not any(weight > 0 for _, weight in self.finding_weights):
            raise ValueError("finding_weights: at least one label needs a weight > 0")
        if self.findings is not None:
            if isinstance(self.findings, str):
                raise ValueError(f"findings must be a tuple of labels, got the string {self.findings!r}")
            for label in self.findings:
                _check_label(label, "findings")
            if len(set(self.findings)) != len(self.findings):
                raise ValueError(f"findings {self.findings!r} repeats a label")
        if self.severity is not None and self.severity not in SEVERITIES:
            raise ValueError(f"severity {self.severity!r} is not one of {SEVERITIES}")
        if not 0 <= self.max_rotation_deg <= 15:
            raise ValueError(f"max_rotation_deg must be in [0, 15], got {self.max_rotation_deg!r}")
        if not self.noise >= 0:
            raise ValueError(f"noise must be >= 0, got {self.noise!r}")
        if not 0 <= self.max_shift <= 0.25:
            raise ValueError(f"max_shift must be in [0, 0.25] image sides, got {self.max_shift!r}")
        if not 0.5 <= self.min_zoom <= 1:
            raise ValueError(f"min_zoom must be in [0.5, 1], got {self.min_zoom!r}")
        if self.polygon_points < 3:
            raise ValueError(f"polygon_points must be >= 3, got {self.polygon_points!r}")


@dataclass(frozen=True)
class Finding:
    """One finding. ``side``/``zone`` are None for cardiomegaly; ``box`` is None for edema."""

    label: str
    severity: str
    side: str | None
    zone: str | None
    box: tuple[float, float, float, float] | None  # x0, y0, x1, y1 in pixels

    @property
    def location(self) -> dict[str, str | None] | None:
        return None if self.side is None else {"side": self.side, "zone": self.zone}

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "severity": self.severity,
            "location": self.location,
            "box": None if self.box is None else list(self.box),
        }


@dataclass(frozen=True, eq=False)
class Phantom:
    """A phantom radiograph and its ground truth (see the module docstring for the conventions)."""

    seed: int
    image: NDArray[np.uint8]  # (size, size)
    findings: tuple[Finding, ...]  # in FINDING_LABELS order, right before left
    masks: Mapping[str, Mask]  # right_lung, left_lung, heart[, pneumothorax]: (size, size) bool
    polygons: Mapping[str, Polygon]  # the same keys: (polygon_points, 2) float64, pixels
    ctr: float
    pcr: float | None
    report_findings: str
    report_impression: str
    lesion_masks: tuple[Mask | None, ...] = field(repr=False)  # one per finding; None for edema

    @property
    def size(self) -> int:
        return int(self.image.shape[0])

    @property
    def labels(self) -> tuple[str, ...]:
        """Finding labels in `FINDING_LABELS` order, or ``("no finding",)``."""
        present = {f.label for f in self.findings}
        return tuple(label for label in FINDING_LABELS if label in present) or (NO_FINDING,)

    @property
    def report(self) -> str:
        return f"FINDINGS: {self.report_findings} IMPRESSION: {self.report_impression}"

    def to_record(self, image_relpath: str) -> dict[str, Any]:
        """The manifest record of this phantom, its image stored at ``image_relpath``; JSON-serialisable."""
        return {
            "image": image_relpath,
            "width": self.size,
            "height": self.size,
            "seed": self.seed,
            "source": "phantom",
            "view": "PA",
            "labels": list(self.labels),
            "findings": [f.to_dict() for f in self.findings],
            "polygons": {
                name: [[round(float(x), 2), round(float(y), 2)] for x, y in polygon]
                for name, polygon in self.polygons.items()
            },
            "ctr": self.ctr,
            "ctr_severity": geometry.ctr_severity(self.ctr),
            "pcr": self.pcr,
            "report": self.report,
            "report_findings": self.report_findings,
            "report_impression": self.report_impression,
        }


def generate_phantom(seed: int, size: int = 512, config: PhantomConfig | None = None) -> Phantom:
    """Draw phantom number ``seed`` as a ``size`` x ``size`` image (64 <= size <= 4096)."""
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if not isinstance(size, int | np.integer) or isinstance(size, bool) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(
            f"size must be an integer number of pixels in [{MIN_SIZE}, {MAX_SIZE}], got {size!r}"
        )
    config = config or PhantomConfig()
    seed, size = int(seed), int(size)
    # A fifth stream for the positioning: the first four (and so every unrepositioned phantom) are unchanged.
    anatomy_rng, findings_rng, texture_rng, report_rng, position_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5)
    )
    anatomy = _sample_anatomy(anatomy_rng, config)
    plans = _plan_findings(findings_rng, config)
    scene = _build_scene(anatomy, plans, size, findings_rng)
    image = _render(scene, texture_rng)

    ctr = geometry.cardiothoracic_ratio(scene.heart, scene.lungs["left"], scene.lungs["right"])
    assert ctr.value is not None, ctr.reason  # the anatomy always has a heart and two lungs
    findings, lesion_masks = _final_findings(scene, ctr.value)
    masks = {"right_lung": scene.lungs["right"], "left_lung": scene.lungs["left"], "heart": scene.heart}
    pcr = None
    if scene.pneumothorax is not None:
        masks["pneumothorax"] = scene.pneumothorax.mask
        pcr = scene.pneumothorax.pcr
    # The report is written from the patient as drawn: sizes in cm do not change when the view is zoomed.
    report_findings, report_impression = write_report(findings, ctr.value, pcr, size, report_rng)
    if config.max_shift > 0 or config.min_zoom < 1:
        image, masks, findings, lesion_masks = _reposition(
            image, masks, findings, lesion_masks, position_rng, config
        )
    polygons = {name: geometry.mask_to_polygon(mask, config.polygon_points) for name, mask in masks.items()}
    return Phantom(
        seed=seed,
        image=image,
        findings=findings,
        masks=masks,
        polygons=polygons,
        ctr=ctr.value,
        pcr=pcr,
        report_findings=report_findings,
        report_impression=report_impression,
        lesion_masks=lesion_masks,
    )


def pcr_severity(pcr: float) -> str:
    """``"mild"`` (PCR <= 0.25), ``"moderate"`` (<= 0.50) or ``"severe"``: this project's convention."""
    for upper, name in PCR_SEVERITY_EDGES:
        if pcr <= upper:
            return name
    return "severe"


def zone_of(y: float, top: float, bottom: float) -> str:
    """The zone at height ``y`` of a lung field spanning ``top`` .. ``bottom`` (pixels; see `ZONE_EDGES`)."""
    fraction = (y - top) / max(bottom - top, 1e-9)
    for upper, name in ZONE_EDGES:
        if fraction < upper:
            return name
    return "lower"


def _check_label(label: str, where: str) -> None:
    if label not in FINDING_LABELS:
        raise ValueError(f"{where}: unknown finding label {label!r}; expected one of {FINDING_LABELS}")


# ------------------------------------------------------------------------------------------------------------
# Anatomy: parameters in the patient frame, in units of the image size (x right, y down, both 0..1)


@dataclass(frozen=True)
class _Anatomy:
    centre_x: float  # the patient's midline
    angle: float  # radians: the patient frame is rotated by this about the image centre
    half_width: dict[str, float]  # lateral extent of each lung field from the midline
    apex: dict[str, float]  # y of each lung's apex
    costophrenic: dict[str, float]  # y of each costophrenic angle (a lung field's lowest point)
    dome: dict[str, float]  # y of the top of each hemidiaphragm
    mediastinum: float  # half-width of the upper mediastinum
    aortic_knob: float  # how far the aortic knob bulges into the left lung
    heart_ctr: float  # the CTR wanted when there is no cardiomegaly
    heart_right_fraction: float  # share of the heart's width right of the midline
    heart_top: float
    heart_tilt: float  # how far the left ventricle's border leans out
    hilum: dict[str, tuple[float, float]]  # (lateral offset, y); the left hilum is the higher one
    body_scale: float  # chest half-width / lung half-width
    neck: float  # half-width of the neck
    shoulders: float  # half-width across the shoulders
    shoulder_y: float
    rib_start: float
    rib_spacing: float
    rib_growth: float  # how much wider the lowest rib gaps are than the highest
    rib_arch: float
    exposure: float
    window: tuple[float, float]  # brightness window over the transmitted fraction
    noise: float  # grey levels


def _sample_anatomy(rng: np.random.Generator, config: PhantomConfig) -> _Anatomy:
    half_width = rng.uniform(0.33, 0.40)  # patient size
    apex = rng.uniform(0.11, 0.16)
    right_cp = rng.uniform(0.73, 0.80)
    right_dome = right_cp - rng.uniform(0.07, 0.10)
    left_cp = right_cp + rng.uniform(0.0, 0.03)
    left_dome = max(left_cp - rng.uniform(0.06, 0.09), right_dome + 0.01)  # the right dome is the higher one
    return _Anatomy(
        centre_x=0.5 + rng.normal(0, 0.01),
        angle=math.radians(rng.uniform(-1, 1) * config.max_rotation_deg),
        half_width={"right": half_width, "left": half_width * rng.uniform(0.95, 1.01)},
        apex={"right": apex, "left": apex + rng.uniform(-0.01, 0.01)},
        costophrenic={"right": right_cp, "left": left_cp},
        dome={"right": right_dome, "left": left_dome},
        mediastinum=rng.uniform(0.035, 0.05),
        aortic_knob=rng.uniform(0.015, 0.035),
        heart_ctr=rng.uniform(0.39, 0.49),
        heart_right_fraction=rng.uniform(0.28, 0.36),
        heart_top=rng.uniform(0.40, 0.45),
        heart_tilt=rng.uniform(0.0, 1.0),
        hilum={
            "right": (rng.uniform(0.085, 0.11), rng.uniform(0.43, 0.47)),
            "left": (rng.uniform(0.085, 0.11), rng.uniform(0.40, 0.44)),
        },
        body_scale=rng.uniform(1.1, 1.22),
        neck=rng.uniform(0.075, 0.1),
        shoulders=rng.uniform(0.47, 0.56),
        shoulder_y=apex - rng.uniform(0.01, 0.05),
        rib_start=apex - rng.uniform(0.02, 0.04),
        rib_spacing=rng.uniform(0.048, 0.058),
        rib_growth=rng.uniform(0.25, 0.45),
        rib_arch=rng.uniform(0.07, 0.11),
        exposure=rng.uniform(1.25, 1.6),
        window=(rng.uniform(0.0, 0.06), rng.uniform(0.8, 0.92)),
        noise=rng.uniform(2.0, 4.5) * config.noise,
    )


def _catmull_rom(points: NDArray[np.float64], samples: int) -> NDArray[np.float64]:
    """An open Catmull-Rom spline through ``points`` (n, 2): ``samples`` points per segment, both ends kept."""
    padded = np.concatenate([2 * points[:1] - points[1:2], points, 2 * points[-1:] - points[-2:-1]])
    p0, p1, p2, p3 = (padded[k : k + len(points) - 1, None, :] for k in range(4))
    t = (np.arange(samples) / samples)[None, :, None]
    curve = 0.5 * (
        2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (3 * p1 - p0 - 3 * p2 + p3) * t**3
    )
    return np.concatenate([curve.reshape(-1, 2), points[-1:]])


def _lung_outline(a: _Anatomy, side: str) -> NDArray[np.float64]:
    """A lung field's outline (M, 2) in the patient frame: one smooth curve from the medial base up the
    mediastinum, over the apex and down the chest wall to the (sharp) costophrenic angle, then the dome of the
    diaphragm back. The heart is cut out of it later."""
    width, top, cp, dome, m = (
        a.half_width[side],
        a.apex[side],
        a.costophrenic[side],
        a.dome[side],
        a.mediastinum,
    )
    knob = a.aortic_knob if side == "left" else 0.004  # on the right, only the faint bulge of the SVC
    span = cp - top
    wall = np.array(
        [  # (lateral offset from the midline, y)
            (m, dome + 0.3 * (cp - dome)),
            (m, dome - 0.12),
            (m, 0.40),
            (m + knob, 0.335),
            (m + 0.3 * knob, 0.28),
            (m + 0.012, top + 0.09),
            (0.25 * width, top + 0.028),
            (0.43 * width, top),
            (0.66 * width, top + 0.022),
            (0.85 * width, top + 0.1),
            (0.965 * width, top + 0.24),
            (1.0 * width, top + 0.45 * span),
            (0.99 * width, top + 0.72 * span),
            (0.955 * width, cp - 0.03),
            (0.925 * width, cp),
        ]
    )
    diaphragm = np.array(
        [
            (0.925 * width, cp),
            (0.78 * width, dome + 0.45 * (cp - dome)),
            (0.6 * width, dome + 0.07 * (cp - dome)),
            (0.44 * width, dome),
            (0.26 * width, dome + 0.12 * (cp - dome)),
            (m, dome + 0.3 * (cp - dome)),
        ]
    )
    outline = np.concatenate([_catmull_rom(wall, 8), _catmull_rom(diaphragm, 8)[1:-1]])
    return np.stack([a.centre_x + _SIGN[side] * outline[:, 0], outline[:, 1]], axis=1)


def _heart_outline(a: _Anatomy, width: float, bottom: float) -> NDArray[np.float64]:
    """The cardiac silhouette (M, 2) in the patient frame, ``width`` wide: the right atrium's gentle curve on
    the image's left, the left ventricle sweeping down to the apex on the image's right, the base hidden below
    the diaphragm."""
    height = bottom - a.heart_top
    left = a.centre_x - a.heart_right_fraction * width  # the right atrial border
    lean = 0.2 * a.heart_tilt
    control = np.array(
        [  # fractions of (width, height) from the top-left corner, clockwise on screen
            (0.30, 0.0),
            (0.50, -0.02),
            (0.66, 0.1),
            (0.82, 0.3 - lean),
            (0.97, 0.58 - lean),
            (1.0, 0.78),
            (0.9, 0.93),
            (0.55, 1.02),
            (0.15, 1.0),
            (0.0, 0.72),
            (0.03, 0.42),
            (0.12, 0.12),
        ]
    )
    closed = np.concatenate([control[-1:], control, control[:2]])
    outline = _catmull_rom(closed, 8)[8:-9]  # the closed curve through the control points
    return np.stack([left + outline[:, 0] * width, a.heart_top + outline[:, 1] * height], axis=1)


def _to_pixels(points: NDArray[np.float64], angle: float, size: int) -> NDArray[np.float64]:
    """Patient-frame points (units of the image size) -> image pixels: rotated about the image centre."""
    c, s = math.cos(angle), math.sin(angle)
    centred = points - 0.5
    rotated = np.stack([c * centred[:, 0] - s * centred[:, 1], s * centred[:, 0] + c * centred[:, 1]], axis=1)
    return (rotated + 0.5) * size


def _to_patient(x: NDArray, y: NDArray, angle: float, size: int) -> tuple[NDArray, NDArray]:
    """Image pixel coordinates (broadcastable) -> patient-frame coordinates (units of the image size)."""
    c, s = _F32(math.cos(angle)), _F32(math.sin(angle))
    xc, yc = x * _F32(1 / size) - _F32(0.5), y * _F32(1 / size) - _F32(0.5)
    return c * xc + s * yc + _F32(0.5), c * yc - s * xc + _F32(0.5)


# ------------------------------------------------------------------------------------------------------------
# Findings: what to draw (plans), then where (shapes in image pixels)


@dataclass(frozen=True)
class _Plan:
    label: str
    severity: str
    sides: tuple[str, ...]  # one lesion per side; () for cardiomegaly, ("bilateral",) for edema
    zone: str | None


def _plan_findings(rng: np.random.Generator, config: PhantomConfig) -> list[_Plan]:
    if config.findings is not None:
        labels = set(config.findings)
    elif rng.random() < config.p_normal:
        labels = set()
    else:
        names = [label for label, weight in config.finding_weights if weight > 0]
        weights = np.array([weight for _, weight in config.finding_weights if weight > 0])
        count = min(int(rng.choice([1, 2, 3], p=[0.55, 0.3, 0.15])), config.max_findings, len(names))
        labels = set(rng.choice(names, size=count, replace=False, p=weights / weights.sum()).tolist())

    def pick(options: Sequence[str], p: Sequence[float] | None = None) -> str:
        return str(rng.choice(list(options), p=p))

    def severity() -> str:
        return config.severity or pick(SEVERITIES)

    plans: list[_Plan] = []
    ptx_side = None
    for label in FINDING_LABELS:  # a fixed order keeps the random stream independent of set ordering
        if label not in labels:
            continue
        if label == "cardiomegaly":
            plans.append(_Plan(label, severity(), (), None))
        elif label == "pneumothorax":
            ptx_side = pick(("right", "left"))
            plans.append(_Plan(label, severity(), (ptx_side,), "apical"))
        elif label == "pleural effusion":
            sides = ("right", "left") if rng.random() < 0.25 else (pick(("right", "left")),)
            if ptx_side is not None:  # no hydropneumothorax: the fluid goes to the other side
                sides = tuple(side for side in ("right", "left") if side != ptx_side)
            plans.append(_Plan(label, severity(), sides, "lower"))
        elif label in ("nodule", "mass"):
            zone = pick(("apical", "upper", "middle", "lower"), p=(0.1, 0.35, 0.3, 0.25))
            plans.append(_Plan(label, severity(), (pick(("right", "left")),), zone))
        elif label in ("consolidation", "pneumonia"):
            zone = pick(("upper", "middle", "lower"), p=(0.25, 0.3, 0.45))
            both = label == "pneumonia" and rng.random() < 0.15
            plans.append(
                _Plan(label, severity(), ("right", "left") if both else (pick(("right", "left")),), zone)
            )
        elif label == "atelectasis":
            both = rng.random() < 0.3
            zone = "lower" if both or rng.random() < 0.75 else "middle"
            plans.append(
                _Plan(label, severity(), ("right", "left") if both else (pick(("right", "left")),), zone)
            )
        else:  # edema
            plans.append(_Plan(label, severity(), ("bilateral",), "perihilar"))
    return plans


@dataclass(frozen=True)
class _Grid:
    """A square pixel grid over the image: the image itself (scale 1) or the coarser grid it is rendered on."""

    n: int
    scale: float  # grid pixels per image pixel

    def window(self, bounds: tuple[float, float, float, float]) -> tuple[slice, slice]:
        """Rows and columns of this grid covering ``bounds`` (x0, y0, x1, y1 in image pixels)."""
        x0, y0, x1, y1 = (v * self.scale for v in bounds)
        rows = slice(max(math.floor(y0) - 1, 0), min(math.ceil(y1) + 1, self.n))
        cols = slice(max(math.floor(x0) - 1, 0), min(math.ceil(x1) + 1, self.n))
        return rows, cols

    def centres(self, rows: slice, cols: slice) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Image-pixel coordinates of the grid pixels' centres: x (1, w) and y (h, 1)."""
        x = (np.arange(cols.start, cols.stop, dtype=np.float32) + _F32(0.5)) * _F32(1 / self.scale)
        y = (np.arange(rows.start, rows.stop, dtype=np.float32) + _F32(0.5)) * _F32(1 / self.scale)
        return x[None, :], y[:, None]


class _Shape(Protocol):
    """A lesion as a function of position, evaluated the same way on the image (for its mask and box) and on
    the render grid (for its density)."""

    bounds: tuple[float, float, float, float]  # x0, y0, x1, y1 in image pixels

    def evaluate(
        self, grid: _Grid, rows: slice, cols: slice
    ) -> tuple[NDArray[np.float32], NDArray[np.bool_]]: ...  # (strength, inside) over the window


@dataclass(frozen=True)
class _Blob:
    """A round lesion with a wavy border. ``solid``: a sphere's projection (nodule, mass); otherwise a soft
    airspace opacity whose strength is modulated by a smooth random ``texture`` (consolidation, pneumonia)."""

    cx: float
    cy: float
    radius: float
    harmonics: tuple[tuple[float, int, float], ...]  # (amplitude, frequency, phase) of the border's waves
    solid: bool
    strength: float
    texture: NDArray[np.float32] | None = None  # (c, c) values in [0, 1] over the blob's bounding square
    patchy: bool = False
    threshold: float = 0.0  # inside: within the border and stronger than this share of ``strength``

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        reach = self.radius * (1 + sum(abs(amplitude) for amplitude, _, _ in self.harmonics))
        return (self.cx - reach, self.cy - reach, self.cx + reach, self.cy + reach)

    def evaluate(
        self, grid: _Grid, rows: slice, cols: slice
    ) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        x, y = grid.centres(rows, cols)
        dx, dy = x - _F32(self.cx), y - _F32(self.cy)
        angle = np.arctan2(dy, dx)
        border = np.full(angle.shape, _F32(1))
        for amplitude, frequency, phase in self.harmonics:
            border += _F32(amplitude) * np.sin(angle * _F32(frequency) + _F32(phase))
        r = np.sqrt(dx * dx + dy * dy) / (border * _F32(self.radius))
        if self.solid:
            strength = np.sqrt(np.clip(1 - r * r, 0, 1)) * _F32(self.strength)
        else:
            assert self.texture is not None
            reach = self.bounds[2] - self.cx
            texture = _sample(
                self.texture, dx * _F32(0.5 / reach) + _F32(0.5), dy * _F32(0.5 / reach) + _F32(0.5)
            )
            strength = np.clip((1 - r) * _F32(3), 0, 1) * (_F32(0.6) + _F32(0.6) * texture)
            if self.patchy:  # separate puffs rather than one confluent opacity
                strength *= np.clip(texture * _F32(2.2) - _F32(0.45), 0, 1)
            strength = np.minimum(strength, _F32(1)) * _F32(self.strength)
        inside = (r < 1) & (strength > _F32(self.threshold * self.strength))
        return strength, inside


@dataclass(frozen=True)
class _Band:
    """Plate-like atelectasis: a thin ellipse, nearly horizontal."""

    cx: float
    cy: float
    half_length: float
    half_thickness: float
    tilt: float
    strength: float

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        reach = self.half_length + self.half_thickness
        return (self.cx - reach, self.cy - reach, self.cx + reach, self.cy + reach)

    def evaluate(
        self, grid: _Grid, rows: slice, cols: slice
    ) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        x, y = grid.centres(rows, cols)
        dx, dy = x - _F32(self.cx), y - _F32(self.cy)
        c, s = _F32(math.cos(self.tilt)), _F32(math.sin(self.tilt))
        along = (dx * c + dy * s) * _F32(1 / self.half_length)
        across = (dy * c - dx * s) * _F32(1 / self.half_thickness)
        band = along * along + across * across
        return np.clip((1 - band) * _F32(2.5), 0, 1) * _F32(self.strength), band < 1


@dataclass(frozen=True)
class _Wedge:
    """Lobar collapse: a triangle of opacity from below the hilum to the medial hemidiaphragm."""

    polygon: NDArray[np.float64]  # (3, 2) image pixels
    strength: float

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = geometry.polygon_to_box(self.polygon)
        return (x0, y0, x1, y1)

    def evaluate(
        self, grid: _Grid, rows: slice, cols: slice
    ) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        inside = geometry.polygon_to_mask(self.polygon * grid.scale, (grid.n, grid.n))[rows, cols]
        return inside * _F32(self.strength), inside


@dataclass(frozen=True)
class _Effusion:
    """Pleural fluid up to a level over the base of one hemithorax, climbing the chest wall in a meniscus."""

    bounds: tuple[float, float, float, float]  # the lung field's box
    anatomy: _Anatomy
    side: str
    level: float  # patient-frame y of the fluid's surface medially
    meniscus: float  # how much higher it climbs at the chest wall
    strength: float
    size: int

    def evaluate(
        self, grid: _Grid, rows: slice, cols: slice
    ) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        a = self.anatomy
        u, v = _to_patient(*grid.centres(rows, cols), a.angle, self.size)
        lateral = np.clip((u - _F32(a.centre_x)) * _F32(_SIGN[self.side] / a.half_width[self.side]), 0, 1.1)
        depth = v - (_F32(self.level) - _F32(self.meniscus) * lateral * lateral * lateral)
        # The fluid thins towards its surface: a soft top edge.
        strength = np.clip(depth * _F32(1 / 0.06), 0, 1)
        return np.sqrt(strength) * _F32(self.strength), depth >= 0


def _sample(texture: NDArray[np.float32], u: NDArray, v: NDArray) -> NDArray[np.float32]:
    """Bilinear lookup of a small (c, c) texture at normalised positions u (columns) and v (rows) in [0, 1]."""
    c = texture.shape[0] - 1
    fx = np.clip(u * _F32(c), 0, c - 1e-3)
    fy = np.clip(v * _F32(c), 0, c - 1e-3)
    ix, iy = fx.astype(np.intp), fy.astype(np.intp)
    wx, wy = fx - ix, fy - iy
    top = texture[iy, ix] * (1 - wx) + texture[iy, ix + 1] * wx
    bottom = texture[iy + 1, ix] * (1 - wx) + texture[iy + 1, ix + 1] * wx
    return top * (1 - wy) + bottom * wy


@dataclass
class _Lesion:
    label: str
    severity: str  # intended; measured findings are re-graded in _final_findings
    side: str | None
    mask: Mask | None  # image-size ground truth; None for diffuse findings
    shape: _Shape | None = None
    effect: str = "fill"  # "fill": replaces air by fluid or tissue; "solid": adds density


@dataclass
class _Pneumothorax:
    side: str
    retracted_outline: NDArray[np.float64]  # image pixels
    mask: Mask  # pleural air
    retracted: Mask  # the lung that is left: its side's lung field minus the pleural air
    pcr: float


@dataclass
class _Scene:
    """Everything placed, in image pixels: the ground truth, and what the renderer needs to draw it."""

    size: int
    anatomy: _Anatomy
    heart_outline: NDArray[np.float64]
    lung_outlines: dict[str, NDArray[np.float64]]  # the fields before the heart is cut out
    heart: Mask
    lungs: dict[str, Mask]  # lung fields minus the heart, pneumothorax included
    hilum: dict[str, tuple[float, float]]
    pneumothorax: _Pneumothorax | None = None
    lesions: list[_Lesion] = field(default_factory=list)
    edema: float = 0.0  # 0 .. 1


_CTR_TARGETS = {"mild": (0.525, 0.54), "moderate": (0.565, 0.585), "severe": (0.62, 0.7)}
_PCR_TARGETS = {"mild": (0.1, 0.2), "moderate": (0.31, 0.43), "severe": (0.56, 0.72)}
# Fluid depth as a share of the lung field's height.
_EFFUSION_DEPTH = {"mild": (0.1, 0.15), "moderate": (0.25, 0.34), "severe": (0.46, 0.6)}
_DIAMETER_MM = {
    "nodule": {"mild": (7, 11), "moderate": (12, 19), "severe": (20, 28)},
    "mass": {"mild": (32, 42), "moderate": (45, 58), "severe": (60, 80)},
}
_AIRSPACE_RADIUS = {"mild": (0.035, 0.05), "moderate": (0.05, 0.065), "severe": (0.065, 0.085)}
_AIRSPACE_STRENGTH = {"mild": 0.45, "moderate": 0.62, "severe": 0.8}
_EDEMA = {"mild": 0.35, "moderate": 0.6, "severe": 0.85}


def _build_scene(a: _Anatomy, plans: list[_Plan], size: int, rng: np.random.Generator) -> _Scene:
    by_label = {plan.label: plan for plan in plans}
    shape = (size, size)
    outlines = {side: _to_pixels(_lung_outline(a, side), a.angle, size) for side in ("right", "left")}
    fields = {side: geometry.polygon_to_mask(outline, shape) for side, outline in outlines.items()}
    # The heart's width follows the CTR wanted, measured against the thorax of the lung fields as drawn.
    ctr = a.heart_ctr
    if "cardiomegaly" in by_label:
        ctr = rng.uniform(*_CTR_TARGETS[by_label["cardiomegaly"].severity])
    thorax = geometry.cardiothoracic_ratio(fields["right"], fields["left"], fields["right"]).thorax_span
    assert thorax is not None
    bottom = (a.dome["right"] + a.dome["left"]) / 2 + 0.035
    heart_outline, heart = _fit_heart(a, ctr * (thorax[1] - thorax[0]), bottom, size)
    hilum = {}
    for side, (offset, y) in a.hilum.items():
        x_px, y_px = _to_pixels(np.array([[a.centre_x + _SIGN[side] * offset, y]]), a.angle, size)[0]
        hilum[side] = (float(x_px), float(y_px))
    scene = _Scene(
        size=size,
        anatomy=a,
        heart_outline=heart_outline,
        lung_outlines=outlines,
        heart=heart,
        lungs={side: field_mask & ~heart for side, field_mask in fields.items()},
        hilum=hilum,
    )
    if "pneumothorax" in by_label:
        plan = by_label["pneumothorax"]
        scene.pneumothorax = _place_pneumothorax(scene, plan.sides[0], plan.severity, rng)
        scene.lesions.append(_Lesion(plan.label, plan.severity, plan.sides[0], scene.pneumothorax.mask))
    # Lesions sit in lung tissue, not in the pleural air of a pneumothorax.
    tissue = dict(scene.lungs)
    if scene.pneumothorax is not None:
        tissue[scene.pneumothorax.side] = scene.pneumothorax.retracted
    full = _Grid(size, 1.0)
    for plan in plans:
        if plan.label in ("cardiomegaly", "pneumothorax"):
            continue  # the heart's size is set above; the cardiomegaly finding follows from the measured CTR
        if plan.label == "edema":
            scene.edema = _EDEMA[plan.severity]
            scene.lesions.append(_Lesion(plan.label, plan.severity, "bilateral", None))
            continue
        for side in plan.sides:
            where = scene.lungs[side] if plan.label == "pleural effusion" else tissue[side]
            lesion_shape = _lesion_shape(
                scene, plan.label, plan.severity, side, plan.zone or "middle", where, rng
            )
            if lesion_shape is None:
                continue
            rows, cols = full.window(lesion_shape.bounds)
            _, inside = lesion_shape.evaluate(full, rows, cols)
            mask = np.zeros(shape, dtype=bool)
            mask[rows, cols] = inside & where[rows, cols]
            if mask.any():
                effect = "solid" if plan.label in ("nodule", "mass") else "fill"
                scene.lesions.append(_Lesion(plan.label, plan.severity, side, mask, lesion_shape, effect))
    return scene


def _fit_heart(a: _Anatomy, width_px: float, bottom: float, size: int) -> tuple[NDArray[np.float64], Mask]:
    """The heart outline (pixels) and mask, scaled horizontally so that the mask is ``width_px`` wide."""
    outline = _to_pixels(_heart_outline(a, width_px / size, bottom), a.angle, size)
    target = max(round(width_px), 1)
    for _ in range(3):  # rotation and the pixel grid leave the mask a pixel or so off the outline's extent
        centre = outline[:, 0].mean()
        extent = outline[:, 0].max() - outline[:, 0].min()
        outline = np.stack([centre + (outline[:, 0] - centre) * (target / extent), outline[:, 1]], axis=1)
        mask = geometry.polygon_to_mask(outline, (size, size))
        box = geometry.mask_to_box(mask)
        assert box is not None
        measured = box[2] - box[0]
        if measured == target:
            break
        target += target - measured  # aim the outline's extent so that the mask lands on the width wanted
    return outline, mask


def _place_pneumothorax(scene: _Scene, side: str, severity: str, rng: np.random.Generator) -> _Pneumothorax:
    """Retract the lung towards its hilum and base (the hilum and the pulmonary ligament hold it there),
    leaving pleural air over the apex and along the chest wall. The retraction is found by bisection so that
    the PCR lands near a target inside the severity's bin."""
    a, size, lung = scene.anatomy, scene.size, scene.lungs[side]
    offset = a.hilum[side][0] + 0.02
    anchor = _to_pixels(np.array([[a.centre_x + _SIGN[side] * offset, a.dome[side] - 0.03]]), a.angle, size)[
        0
    ]
    outline = scene.lung_outlines[side]
    target = rng.uniform(*_PCR_TARGETS[severity])
    area = max(int(np.count_nonzero(lung)), 1)
    low, high = 0.05, 1.0  # the PCR falls as the retracted lung's scale grows
    for _ in range(10):
        scale = 0.5 * (low + high)
        retracted_outline = anchor + scale * (outline - anchor)
        retracted = geometry.polygon_to_mask(retracted_outline, (size, size)) & lung
        pcr = 1 - np.count_nonzero(retracted) / area
        if abs(pcr - target) < 0.015:
            break
        low, high = (scale, high) if pcr > target else (low, scale)
    mask = lung & ~retracted
    measured = geometry.pneumothorax_ratio(mask, lung)
    assert measured.value is not None, measured.reason
    return _Pneumothorax(side, retracted_outline, mask, retracted, measured.value)


def _lung_rows(lung: Mask) -> tuple[int, int]:
    """First row and one past the last row of a lung field."""
    rows = np.flatnonzero(lung.any(axis=1))
    return int(rows[0]), int(rows[-1]) + 1


def _lesion_shape(
    scene: _Scene, label: str, severity: str, side: str, zone: str, where: Mask, rng: np.random.Generator
) -> _Shape | None:
    """Size, place and shape one lesion of ``label`` in ``where`` (a lung field or the tissue left in it)."""
    a, size = scene.anatomy, scene.size
    if label == "pleural effusion":
        depth = rng.uniform(*_EFFUSION_DEPTH[severity])
        box = geometry.mask_to_box(where)
        assert box is not None
        level = a.costophrenic[side] - depth * (a.costophrenic[side] - a.apex[side])
        bounds = (box[0], box[1], box[2], box[3])
        return _Effusion(bounds, a, side, level, 0.05 + 0.12 * depth, rng.uniform(0.85, 0.95), size)
    if label == "atelectasis" and severity == "severe":
        return _Wedge(_atelectasis_wedge(scene, side, rng), 0.85)

    px_per_mm = size / FIELD_OF_VIEW_MM
    if label in ("nodule", "mass"):
        radius = max(0.5 * rng.uniform(*_DIAMETER_MM[label][severity]) * px_per_mm, 1.6)
    elif label in ("consolidation", "pneumonia"):
        radius = rng.uniform(*_AIRSPACE_RADIUS[severity]) * size
    else:  # plate-like atelectasis: its half-length
        radius = rng.uniform(0.05, 0.08) * size
    centre = _find_centre(
        where, _zone_rows(where, zone), radius if label != "atelectasis" else 0.4 * radius, rng
    )
    if centre is None:
        return None
    cx, cy = centre
    if label in ("nodule", "mass"):
        waves = 0.04 if label == "nodule" else 0.1
        harmonics = ((waves, 3, rng.uniform(0, 2 * np.pi)), (waves / 2, 5, rng.uniform(0, 2 * np.pi)))
        strength = (0.3 if label == "nodule" else 0.36) * min(1.0, 0.5 + radius / (0.03 * size))
        return _Blob(cx, cy, radius, harmonics, solid=True, strength=strength)
    if label in ("consolidation", "pneumonia"):
        harmonics = tuple(
            (amplitude, k, rng.uniform(0, 2 * np.pi)) for amplitude, k in ((0.16, 2), (0.1, 3), (0.06, 5))
        )
        cells = 6 if label == "consolidation" else 9
        texture = rng.random((cells, cells)).astype(np.float32)
        strength = _AIRSPACE_STRENGTH[severity] * (1.0 if label == "consolidation" else 0.8)
        patchy = label == "pneumonia"
        return _Blob(cx, cy, radius, harmonics, False, strength, texture, patchy, threshold=0.15)
    thickness = (0.006 if severity == "mild" else 0.011) * size + 0.8
    tilt = rng.uniform(-0.3, 0.3) + _SIGN[side] * 0.12
    return _Band(cx, cy, radius, thickness, tilt, 0.7)


def _atelectasis_wedge(scene: _Scene, side: str, rng: np.random.Generator) -> NDArray[np.float64]:
    """Lobar collapse: a triangle (pixels) from below the hilum down to the hemidiaphragm along the heart's
    border, where a collapsed lower lobe lies."""
    a, size = scene.anatomy, scene.size
    sign = _SIGN[side]
    border = scene.heart_outline[:, 0].min() if side == "right" else scene.heart_outline[:, 0].max()
    reach = rng.uniform(0.3, 0.45) * a.half_width[side] * size
    hilum_x, hilum_y = scene.hilum[side]
    dome_y = _to_pixels(
        np.array([[a.centre_x + sign * 0.4 * a.half_width[side], a.dome[side]]]), a.angle, size
    )[0, 1]
    return np.array(
        [
            [hilum_x + sign * 0.01 * size, hilum_y + 0.05 * size],
            [border + sign * reach, dome_y + 0.02 * size],
            [border - sign * 0.01 * size, dome_y + 0.04 * size],
        ]
    )


def _zone_rows(lung: Mask, zone: str) -> tuple[float, float]:
    """Rows (pixels) where a lesion of ``zone`` may be centred: inside the zone, clear of its edges."""
    top, bottom = _lung_rows(lung)
    low, high = {"apical": (0.06, 0.13), "upper": (0.2, 0.36), "middle": (0.44, 0.62), "lower": (0.7, 0.84)}[
        zone
    ]
    return top + low * (bottom - top), top + high * (bottom - top)


def _find_centre(
    where: Mask, rows: tuple[float, float], radius: float, rng: np.random.Generator
) -> tuple[float, float] | None:
    """A random point of ``where`` between ``rows`` whose disc of ``radius`` lies (nearly) inside it; the disc
    shrinks after failed tries. None when nothing fits."""
    size = where.shape[0]
    full = _Grid(size, 1.0)
    for attempt in range(16):
        reach = radius * 0.9 ** (attempt // 2)
        y = rng.uniform(*rows)
        cols = np.flatnonzero(where[min(int(y), size - 1)])
        if cols.size == 0:
            continue
        low, high = cols[0] + reach, cols[-1] + 1 - reach
        if low >= high:
            continue
        x = rng.uniform(low, high)
        window = full.window((x - reach, y - reach, x + reach, y + reach))
        xs, ys = full.centres(*window)
        disc = (xs - x) ** 2 + (ys - y) ** 2 < reach * reach
        if np.count_nonzero(disc & ~where[window]) <= 0.1 * np.count_nonzero(disc):
            return x, y
    return None


def _final_findings(scene: _Scene, ctr: float) -> tuple[tuple[Finding, ...], tuple[Mask | None, ...]]:
    """Findings as recorded: measured severities and zones, boxes from the masks, in `FINDING_LABELS` order."""
    entries: list[tuple[Finding, Mask | None]] = []
    for lesion in scene.lesions:
        severity, zone = lesion.severity, None
        if lesion.label == "pneumothorax":
            assert scene.pneumothorax is not None
            severity, zone = pcr_severity(scene.pneumothorax.pcr), "apical"
        elif lesion.label == "edema":
            zone = "perihilar"
        elif lesion.mask is not None and lesion.side in scene.lungs:
            top, bottom = _lung_rows(scene.lungs[lesion.side])
            rows = np.flatnonzero(lesion.mask.any(axis=1))
            weights = np.count_nonzero(lesion.mask[rows], axis=1)
            zone = zone_of(float(np.average(rows + 0.5, weights=weights)), top, bottom)
        entries.append((Finding(lesion.label, severity, lesion.side, zone, _box(lesion.mask)), lesion.mask))
    if ctr > geometry.CTR_CARDIOMEGALY_THRESHOLD:  # labelled by the measurement, not by the intent
        severity = geometry.ctr_severity(ctr)
        assert severity is not None
        entries.append((Finding("cardiomegaly", severity, None, None, _box(scene.heart)), scene.heart))
    order = {label: k for k, label in enumerate(FINDING_LABELS)}
    side_order = {"right": 0, "left": 1, "bilateral": 2, None: 3}
    entries.sort(key=lambda entry: (order[entry[0].label], side_order[entry[0].side]))
    return tuple(finding for finding, _ in entries), tuple(mask for _, mask in entries)


def _box(mask: Mask | None) -> tuple[float, float, float, float] | None:
    box = None if mask is None else geometry.mask_to_box(mask)
    return None if box is None else (float(box[0]), float(box[1]), float(box[2]), float(box[3]))


# ------------------------------------------------------------------------------------------------------------
# Positioning: zoom out and shift the finished radiograph and all its ground truth together


def _reposition(
    image: NDArray[np.uint8],
    masks: dict[str, Mask],
    findings: tuple[Finding, ...],
    lesion_masks: tuple[Mask | None, ...],
    rng: np.random.Generator,
    config: PhantomConfig,
) -> tuple[NDArray[np.uint8], dict[str, Mask], tuple[Finding, ...], tuple[Mask | None, ...]]:
    """One similarity transform (zoom about the centre, then shift) applied to the image (bilinear) and every
    mask (nearest); boxes are re-measured from the moved lesion masks. CTR and PCR are ratios and do not move.
    The shift is drawn within the range that keeps the lungs and heart 2 px inside the image."""
    size = image.shape[0]
    zoom = rng.uniform(config.min_zoom, 1.0)
    centre = (size - 1) / 2
    anatomy = masks["right_lung"] | masks["left_lung"] | masks["heart"]
    rows, cols = np.nonzero(anatomy)
    shift = []
    for low, high, wanted in (
        (cols.min(), cols.max(), rng.uniform(-1, 1) * config.max_shift * size),
        (rows.min(), rows.max(), rng.uniform(-1, 1) * config.max_shift * size),
    ):
        lowest = 2 - (centre + (low - centre) * zoom)  # the shift that puts the first pixel at 2
        highest = size - 3 - (centre + (high - centre) * zoom)
        shift.append(float(np.clip(wanted, min(lowest, 0.0), max(highest, 0.0))))
    # PIL maps each output pixel (x, y) to the input pixel (a x + b y + c, d x + e y + f).
    inverse = (
        1 / zoom,
        0.0,
        centre - (centre + shift[0]) / zoom,
        0.0,
        1 / zoom,
        centre - (centre + shift[1]) / zoom,
    )
    corners = np.concatenate([image[:4, :4].ravel(), image[:4, -4:].ravel()])
    background = int(np.median(corners))  # air outside the body

    def warp(array: NDArray, resample: Image.Resampling, fill: int) -> Image.Image:
        return Image.fromarray(array).transform(
            (size, size), Image.Transform.AFFINE, inverse, resample=resample, fillcolor=fill
        )

    def warp_mask(mask: Mask | None) -> Mask | None:
        if mask is None:
            return None
        return np.asarray(warp(mask.astype(np.uint8) * 255, Image.Resampling.NEAREST, 0)) > 127

    moved_image = np.asarray(warp(image, Image.Resampling.BILINEAR, background))
    moved_masks = {name: warp_mask(mask) for name, mask in masks.items()}
    moved_lesions = tuple(warp_mask(mask) for mask in lesion_masks)
    moved_findings = tuple(
        finding if finding.box is None else replace(finding, box=_box(mask))
        for finding, mask in zip(findings, moved_lesions, strict=True)
    )
    return moved_image, moved_masks, moved_findings, moved_lesions


# ------------------------------------------------------------------------------------------------------------
# Rendering


def _render_size(size: int) -> int:
    """The grid the picture is rendered on: full size up to 256 px, half size above."""
    return size if size <= 256 else (size + 1) // 2


def _render(scene: _Scene, rng: np.random.Generator) -> NDArray[np.uint8]:
    """The scene's density (attenuation) on the render grid -> exposure curve -> upsampled -> noise -> uint8.

    Within the render grid, the smooth parts (mediastinum, heart shading, the depth of air) are computed on a
    grid of half its size. Everything is float32: this is the hot loop of dataset generation.
    """
    a, size = scene.anatomy, scene.size
    n = _render_size(size)
    grid = _Grid(n, n / size)
    textures = _texture_bank(n)
    coarse = (n + 1) // 2
    smooth, air = _render_coarse(scene, coarse)
    density = _render_body_and_bones(scene, n)
    density += _upsample2(smooth)[:n, :n]
    air = _upsample2(air)[:n, :n]

    # Lungs, heart and pneumothorax on the render grid, from the same outlines as the masks.
    shape = (n, n)
    heart = geometry.polygon_to_mask(scene.heart_outline * grid.scale, shape) if n != size else scene.heart
    lungs = {
        side: (geometry.polygon_to_mask(outline * grid.scale, shape) & ~heart)
        if n != size
        else scene.lungs[side]
        for side, outline in scene.lung_outlines.items()
    }
    both = lungs["right"] | lungs["left"]
    tissue = dict(lungs)
    ptx = scene.pneumothorax
    pleural_air = None
    if ptx is not None:
        if n != size:
            retracted = geometry.polygon_to_mask(ptx.retracted_outline * grid.scale, shape) & lungs[ptx.side]
        else:
            retracted = ptx.retracted
        pleural_air = lungs[ptx.side] & ~retracted
        tissue[ptx.side] = retracted

    fill = None
    solid = None
    for lesion in scene.lesions:
        if lesion.shape is None or lesion.side not in lungs:
            continue
        rows, cols = grid.window(lesion.shape.bounds)
        strength, _ = lesion.shape.evaluate(grid, rows, cols)
        where = lungs[lesion.side] if lesion.label == "pleural effusion" else tissue[lesion.side]
        strength = strength * where[rows, cols]
        if lesion.effect == "solid":
            solid = np.zeros(shape, dtype=np.float32) if solid is None else solid
            solid[rows, cols] += strength
        else:
            fill = np.zeros(shape, dtype=np.float32) if fill is None else fill
            np.maximum(fill[rows, cols], strength, out=fill[rows, cols])

    air *= both
    if fill is not None:
        air *= 1 - fill
    if pleural_air is not None:
        # No lung tissue there: twice the lung's air, so the rim is nearly black, as on a real film. (At 1.3x a
        # mild pneumothorax was invisible at 128 px, where the main job trains.)
        air[pleural_air] *= _F32(2.0)
    density -= air
    vessels = _vessels(scene, grid, textures, rng)
    vessels *= tissue["right"] | tissue["left"]  # none beyond the edge of a collapsed lung
    if fill is not None:
        vessels *= 1 - _F32(0.8) * fill  # fluid hides the vessels it surrounds
    density += vessels
    if solid is not None:
        density += solid
    if ptx is not None:  # the visceral pleural line at the retracted lung's edge, a bright hairline
        lung = tissue[ptx.side]
        density[lung & ~_erode(lung) & _erode(lungs[ptx.side] | heart)] += _F32(0.1)
    density = _blur121(density, scale=-a.exposure)  # soft edges on the render grid, before magnifying
    # Exposure: transmitted fraction -> film brightness through a random window. The blur below sums 16
    # weighted pixels, so the scale it divides by is folded in here, on the smaller grid.
    low, high = a.window
    brightness = np.exp(density)
    brightness *= _F32(-255 / 16 / (high - low))
    brightness += _F32(255 / 16 * (1 - low) / (high - low))
    if n != size:  # pixel doubling, smoothed by the blur below: half the cost of bilinear interpolation
        brightness = brightness.repeat(2, axis=0).repeat(2, axis=1)[:size, :size]
    brightness = _blur121(brightness, scale=None)  # unsharpness of the imaging chain
    brightness += _crop(_noise_bank(size), size, rng) * _F32(a.noise)
    np.clip(brightness, 0, 255, out=brightness)
    return brightness.astype(np.uint8)


def _render_coarse(scene: _Scene, n: int) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """On an n x n grid: smooth soft-tissue density (mediastinum, abdomen, heart, gastric bubble) and the depth
    of air in the lung fields (deepest mid-lung; shallow at the edges and apices, and around the hila in
    edema)."""
    a, size = scene.anatomy, scene.size
    grid = _Grid(n, n / size)
    u, v = _to_patient(*grid.centres(slice(0, n), slice(0, n)), a.angle, size)
    x = u - _F32(a.centre_x)
    right_side = x < 0
    width = _F32(0.5 * (a.half_width["right"] + a.half_width["left"]))
    # The mediastinum and spine are thick; so is the abdomen below the domes, more so under the liver.
    q = x * _F32(1 / 0.085)
    density = _F32(0.22) * np.exp(-q * q) * np.clip((v - _F32(0.02)) * 10, 0, 1)
    dome = np.where(right_side, _F32(a.dome["right"]), _F32(a.dome["left"]))
    below = np.clip((v - dome) * _F32(20), 0, 1) * np.clip((_F32(1.15) * width - np.abs(x)) * 10, 0, 1)
    density += below * np.where(right_side, _F32(0.12), _F32(0.07))
    # Heart: a little denser than the mediastinum around it, most in its thick middle; faded out below the
    # diaphragm, where it meets the liver.
    heart = geometry.polygon_to_mask(scene.heart_outline * grid.scale, (n, n)).astype(np.float32)
    heart = _box_blur(heart, max(1, n // 24))
    density += heart * np.clip((dome - v) * 30, 0, 1) * _F32(0.06)
    # Gastric bubble under the left hemidiaphragm.
    qx, qy = (x - _F32(0.42) * width) * _F32(1 / 0.05), (v - _F32(a.dome["left"] + 0.05)) * _F32(1 / 0.028)
    density -= _F32(0.1) * np.clip(1 - qx * qx - qy * qy, 0, 1)

    fields = np.zeros((n, n), dtype=np.float32)
    for outline in scene.lung_outlines.values():
        fields += geometry.polygon_to_mask(outline * grid.scale, (n, n))
    depth = _box_blur(fields, max(1, n // 12))
    depth *= _F32(0.27)
    depth += _F32(0.16)
    depth *= np.clip((v - _F32(a.apex["right"] - 0.015)) * _F32(5), 0.12, 1.0)  # soft tissue over the apices
    if scene.edema:
        hilum_y = np.where(right_side, _F32(a.hilum["right"][1]), _F32(a.hilum["left"][1]))
        qx = (np.abs(x) - _F32(a.hilum["right"][0] + 0.05)) * _F32(1 / 0.13)
        qy = (v - hilum_y) * _F32(1 / 0.16)
        depth *= 1 - _F32(0.75 * scene.edema) * np.exp(-qx * qx - qy * qy)
    return density, depth


def _render_body_and_bones(scene: _Scene, n: int) -> NDArray[np.float32]:
    """On an n x n grid: the body's soft tissue (outline with neck and shoulders), trachea and bones.

    The patient's small rotation is applied as the equivalent shear (u = x + angle * y, v = y - angle * x, to
    first order), which keeps most terms separable: a row profile plus a column profile costs one array
    operation instead of several.
    """
    a = scene.anatomy
    centres = (np.arange(n, dtype=np.float32) + _F32(0.5)) * _F32(1 / n)
    x_col = (centres - _F32(a.centre_x))[None, :]  # lateral offset of each column, before the rotation
    y_row = centres[:, None]
    shift_row = _F32(a.angle) * (y_row - _F32(0.5))  # the rotation moves each row sideways ...
    drop_col = _F32(-a.angle) * (centres - _F32(0.5))[None, :]  # ... and each column up or down
    width = 0.5 * (a.half_width["right"] + a.half_width["left"])
    # Body: an elliptic cross-section; the trunk widens to the shoulders and narrows to the neck above them.
    chest = a.body_scale * width
    trunk = _F32(chest) + _F32(a.shoulders - chest) * np.clip((_F32(0.36) - y_row) * _F32(4), 0, 1)
    half_width = _F32(a.neck) + (trunk - _F32(a.neck)) / (1 + np.exp((_F32(a.shoulder_y) - y_row) * _F32(40)))
    q = (x_col + shift_row) * (1 / half_width)
    q *= q
    density = np.sqrt(np.clip((1 - q) * _F32(2.5), 0, 1))  # flatter than an ellipse: a chest is boxy
    density *= _F32(0.6)
    # Trachea: an air column down the midline to the carina.
    trachea = np.clip(1 - (x_col * _F32(1 / 0.013)) ** 2, 0, 1)
    density -= (_F32(0.1) * np.clip((_F32(0.36) - y_row) * 30, 0, 1)) * trachea
    density += _bones(a, x_col, y_row, drop_col, _F32(width))
    return density


def _bones(a: _Anatomy, x_col, y_row, drop_col, width) -> NDArray[np.float32]:
    """Ribs (posterior and fainter anterior), clavicles and the thoracic spine, as density.

    ``x_col`` (1, n): lateral offsets of the columns; ``y_row`` (n, 1): heights of the rows; ``drop_col``
    (1, n): the height change the rotation gives each column; all in units of the image size.
    """
    t = np.abs(x_col) / width  # (1, n) lateral position: 0 at the midline, 1 at the chest wall
    # Posterior ribs arch up from the spine and turn down along the chest wall. Along the arch-corrected
    # height, the rib index is the integral of 1 / spacing, the spacing widening downwards.
    rise = np.sin(np.minimum(t, _F32(0.8)) * _F32(np.pi / 1.6))
    fall = np.maximum(t - _F32(0.8), 0) * _F32(1 / 0.26)
    height = (y_row - _F32(a.rib_start)) + (_F32(a.rib_arch) * (rise - fall * fall) + drop_col)
    phase = np.log1p(np.maximum(height, 0) * _F32(a.rib_growth / a.rib_spacing))
    phase *= _F32(1 / a.rib_growth)
    q = (phase - np.floor(phase) - _F32(0.2)) * _F32(1 / 0.19)
    rib = np.sqrt(np.clip(1 - q * q, 0, 1))  # a tube seen side-on
    cage_col = np.clip((_F32(1.1) - t) * 10, 0, 1) * np.clip((t - _F32(0.05)) * 12, 0, 1)
    cage = (_F32(0.075) * (y_row > _F32(a.apex["right"] - 0.05))) * cage_col
    cage *= (height > 0) & (phase < 10.6)
    bones = rib * cage
    # Anterior ribs: fainter, sloping down towards the sternum, invisible as cartilage near it.
    anterior = (y_row - _F32(a.rib_start + 0.08)) + (drop_col - _F32(0.13) * (1 - t))
    anterior *= _F32(1 / (1.3 * a.rib_spacing))
    q = (anterior - np.floor(anterior) - _F32(0.2)) * _F32(1 / 0.17)
    front = np.clip(1 - q * q, 0, 1)
    front *= cage * (np.clip((t - _F32(0.3)) * 5, 0, 1) * _F32(0.35))
    front *= (anterior > 0) & (anterior < 6.5)
    bones += front
    # Clavicles: from the sternal notch out and slightly up over the apices.
    course = _F32(a.apex["right"] + 0.045) - _F32(0.08) * t + _F32(0.02) * np.sin(t * _F32(np.pi)) - drop_col
    q = (y_row - course) * _F32(1 / 0.015)
    clavicle = np.sqrt(np.clip(1 - q * q, 0, 1))
    clavicle *= _F32(0.13) * np.clip((_F32(0.95) - t) * 8, 0, 1) * (t > 0.05)
    bones += clavicle
    # Spine: vertebral bodies with disc spaces, seen faintly through the mediastinum.
    vertebra = (y_row - _F32(0.02)) * _F32(1 / 0.05)
    q = (vertebra - np.floor(vertebra) - _F32(0.45)) * _F32(1 / 0.42)
    q *= q
    column = x_col * _F32(1 / 0.028)
    column *= column
    bones += (_F32(0.06) * np.clip(1 - q * q, 0, 1)) * np.clip(1 - column * column, 0, 1)
    return bones


def _vessels(
    scene: _Scene, grid: _Grid, textures: _Textures, rng: np.random.Generator
) -> NDArray[np.float32]:
    """Pulmonary vessels as density on the render grid: a tree from the bank at each hilum (mirrored for the
    left lung), plus fine filaments fading away from the hila."""
    n, a = grid.n, scene.anatomy
    hilum = {side: (x * grid.scale, y * grid.scale) for side, (x, y) in scene.hilum.items()}
    # Fine filaments, strongest near the hila: a separable falloff is enough for a soft weight.
    centres = np.arange(n, dtype=np.float32) + _F32(0.5)
    hilum_x = np.where(centres < n * a.centre_x, _F32(hilum["right"][0]), _F32(hilum["left"][0]))
    near_col = np.exp(np.abs(centres - hilum_x) * _F32(-1 / (0.5 * n))) * _F32(0.06)
    near_row = np.exp(np.abs(centres - _F32(hilum["right"][1])) * _F32(-1 / (0.5 * n)))
    vessels = _crop(textures.filaments, n, rng) * near_row[:, None]
    vessels *= near_col[None, :]
    strength = _F32(0.15 * (1 + 0.5 * scene.edema) / 255)  # the trees are stored as uint8
    for side in ("right", "left"):
        tree = textures.trees[int(rng.integers(len(textures.trees)))]
        anchor_row, anchor_col = textures.tree_anchor
        if side == "left":
            tree, anchor_col = tree[:, ::-1], tree.shape[1] - 1 - anchor_col
        top, left = int(hilum[side][1]) - anchor_row, int(hilum[side][0]) - anchor_col
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + tree.shape[0], n), min(left + tree.shape[1], n)
        if y0 < y1 and x0 < x1:
            vessels[y0:y1, x0:x1] += tree[y0 - top : y1 - top, x0 - left : x1 - left] * strength
    return vessels


@dataclass(frozen=True)
class _Textures:
    filaments: NDArray[np.float32]  # (m, m) in [0, 1]: thin curved lines, for the smallest vessels
    trees: tuple[NDArray[np.uint8], ...]  # vessel trees of a right lung, 0 .. 255 (uint8 saves memory)
    tree_anchor: tuple[int, int]  # (row, column) of the hilum in each tree


_TREE_COUNT = 24


@functools.lru_cache(maxsize=4)
def _texture_bank(n: int) -> _Textures:
    """Textures for a render grid of n pixels, drawn once from a fixed seed. Each phantom crops the filaments at
    a random offset and picks a vessel tree per hilum, which costs far less than drawing them."""
    rng = np.random.default_rng(20240229)
    m = n + n // 8
    # Zero crossings of band-limited noise form a network of thin curved lines.
    coarse = Image.fromarray(rng.standard_normal((m // 12, m // 12)).astype(np.float32), mode="F")
    fine = Image.fromarray(rng.standard_normal((m // 5, m // 5)).astype(np.float32), mode="F")
    band = np.asarray(fine.resize((m, m), Image.Resampling.BICUBIC)) - 0.5 * np.asarray(
        coarse.resize((m, m), Image.Resampling.BICUBIC)
    )
    width = 0.06 * float(np.std(band)) * max(1.0, 256 / n) ** 0.5
    filaments = np.exp(-((band / width) ** 2)).astype(np.float32)
    # Vessel trees of a right lung (on the image's left): the hilum sits near the canvas's right edge.
    shape = (int(0.85 * n), int(0.52 * n))
    anchor = (int(0.42 * n), int(0.44 * n))
    trees = []
    for _ in range(_TREE_COUNT):
        canvas = Image.new("L", (shape[1], shape[0]), 0)
        _draw_vessel_tree(ImageDraw.Draw(canvas), rng, (anchor[1] + 0.5, anchor[0] + 0.5), n)
        canvas = canvas.filter(ImageFilter.GaussianBlur(0.5 + n / 400))  # vessels have soft, round edges
        trees.append(np.asarray(canvas))
    return _Textures(filaments, tuple(trees), anchor)


@functools.lru_cache(maxsize=4)
def _noise_bank(size: int) -> NDArray[np.float32]:
    """Standard normal noise, a little larger than the image, drawn once from a fixed seed."""
    m = size + size // 8
    return np.random.default_rng(20240301).standard_normal((m, m), dtype=np.float32)


def _draw_vessel_tree(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, hilum: tuple[float, float], n: int
) -> None:
    """Branches of a right lung grown level by level from the hilum towards the image's left: each splits in two,
    shorter, narrower and fainter, wandering a little."""
    roots = np.array([-1.4, -1.0, -0.6, -0.2, 0.2, 0.55, 0.9, 1.25])  # radians from lateral; negative is up
    count = roots.size
    x = np.full(count, hilum[0]) + rng.normal(0, 0.01 * n, count)
    y = np.full(count, hilum[1]) + rng.normal(0, 0.015 * n, count)
    direction = roots + rng.normal(0, 0.1, count)
    length = 0.07 * n * rng.uniform(0.8, 1.2, count)
    width = max(1.0, 0.012 * n)
    for level in range(6):
        steps = 3
        turns = rng.normal(0, 0.15, (steps, count))
        points = [np.stack([x, y], axis=1)]
        for step in range(steps):
            direction = direction + turns[step]
            x = x - np.cos(direction) * length / steps
            y = y + np.sin(direction) * length / steps
            points.append(np.stack([x, y], axis=1))
        shade = int(255 - 36 * level)
        line_width = max(1, round(width))
        for polyline in np.stack(points, axis=1).tolist():  # (count, steps + 1, 2)
            draw.line([tuple(point) for point in polyline], fill=shade, width=line_width)
        spread = rng.uniform(0.25, 0.5, count)  # two daughters per branch, turning apart
        direction = np.concatenate([direction - spread, direction + spread])
        x, y = np.concatenate([x, x]), np.concatenate([y, y])
        length = np.concatenate([length, length]) * rng.uniform(0.7, 0.85, 2 * count)
        count *= 2
        width *= 0.68


def _crop(bank: NDArray[np.float32], n: int, rng: np.random.Generator) -> NDArray[np.float32]:
    """A random n x n crop of a texture bank, randomly flipped upside down."""
    y, x = rng.integers(0, bank.shape[0] - n + 1, 2)
    crop = bank[y : y + n, x : x + n]
    return crop[::-1] if rng.random() < 0.5 else crop


def _upsample2(image: NDArray[np.float32]) -> NDArray[np.float32]:
    """Bilinear upsampling by 2 with pixel centres aligned (output centre j + 0.5 samples input j / 2 - 0.25);
    edges are clamped."""
    out = image
    for axis in (0, 1):
        before = np.concatenate(
            [np.take(out, [0], axis), np.take(out, np.arange(out.shape[axis] - 1), axis)], axis
        )
        after = np.concatenate(
            [np.take(out, np.arange(1, out.shape[axis]), axis), np.take(out, [-1], axis)], axis
        )
        centre = out * _F32(0.75)
        shape = list(out.shape)
        shape[axis] *= 2
        doubled = np.empty(shape, dtype=np.float32)
        even = [slice(None), slice(None)]
        odd = [slice(None), slice(None)]
        even[axis], odd[axis] = slice(0, None, 2), slice(1, None, 2)
        doubled[tuple(even)] = centre + before * _F32(0.25)
        doubled[tuple(odd)] = centre + after * _F32(0.25)
        out = doubled
    return out


def _blur121(image: NDArray[np.float32], scale: float | None = 1.0) -> NDArray[np.float32]:
    """A [1, 2, 1] / 4 blur along both axes, times ``scale``; ``scale=None`` skips the normalisation and
    returns 16 times the blur (for callers that fold it into a multiplication they do anyway). The border
    rows and columns get three quarters of a blur."""
    rows = image + image
    rows[1:] += image[:-1]
    rows[:-1] += image[1:]
    out = rows + rows
    out[:, 1:] += rows[:, :-1]
    out[:, :-1] += rows[:, 1:]
    if scale is not None:
        out *= _F32(scale / 16)
    return out


def _box_blur(image: NDArray[np.float32], radius: int) -> NDArray[np.float32]:
    """Mean over a (2r + 1)^2 window (edges clamped), separable, by cumulative sums."""
    for axis in (0, 1):
        first, last = np.take(image, [0], axis), np.take(image, [-1], axis)
        padded = np.concatenate(
            [np.repeat(first, radius + 1, axis), image, np.repeat(last, radius, axis)], axis
        )
        total = np.cumsum(padded, axis=axis, dtype=np.float32)
        n = image.shape[axis]
        upper = np.take(total, np.arange(2 * radius + 1, 2 * radius + 1 + n), axis)
        lower = np.take(total, np.arange(0, n), axis)
        image = (upper - lower) * _F32(1 / (2 * radius + 1))
    return image


def _erode(mask: Mask) -> Mask:
    """4-neighbour erosion by one pixel."""
    out = mask.copy()
    out[1:] &= mask[:-1]
    out[:-1] &= mask[1:]
    out[:, 1:] &= mask[:, :-1]
    out[:, :-1] &= mask[:, 1:]
    return out


# ------------------------------------------------------------------------------------------------------------
# Reports


_SEVERITY_WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "cardiomegaly": {"mild": ("mild",), "moderate": ("moderate",), "severe": ("severe", "marked")},
    "pleural effusion": {"mild": ("small",), "moderate": ("moderate",), "severe": ("large",)},
    "pneumothorax": {"mild": ("small",), "moderate": ("moderate",), "severe": ("large",)},
    "nodule": {"mild": ("small",), "moderate": ("",), "severe": ("large",)},
    "mass": {"mild": ("",), "moderate": ("large",), "severe": ("very large",)},
    "consolidation": {
        "mild": ("mild", "patchy"),
        "moderate": ("moderate", "focal"),
        "severe": ("dense", "extensive"),
    },
    "pneumonia": {"mild": ("mild",), "moderate": ("moderate",), "severe": ("extensive", "severe")},
    "atelectasis": {
        "mild": ("minimal", "mild"),
        "moderate": ("moderate", "plate-like"),
        "severe": ("severe",),
    },
    "edema": {"mild": ("mild",), "moderate": ("moderate",), "severe": ("severe",)},
}
_ZONE_WORDS = {"apical": "apex", "upper": "upper zone", "middle": "mid zone", "lower": "lower zone"}
_NORMAL_IMPRESSIONS = (
    "No acute cardiopulmonary process.",
    "No acute cardiopulmonary abnormality.",
    "Normal chest radiograph.",
    "No acute intrathoracic process.",
)
_LUNG_LABELS = ("consolidation", "pneumonia", "edema", "mass", "nodule", "atelectasis")


def write_report(
    findings: Sequence[Finding], ctr: float, pcr: float | None, size: int, rng: np.random.Generator
) -> tuple[str, str]:
    """(findings section, impression) written from templates with random wording.

    Every finding is named with its side, zone and severity word (small / moderate / large for fluid and air,
    mild / moderate / severe otherwise); nodules and masses get a size in cm from their box at a field of view
    of 400 mm over ``size`` pixels. Absent pleural disease, cardiomegaly and (often) consolidation and edema
    are stated as negatives, the way radiologists write them, so a CheXpert-style labeler reads the labels back.
    """

    def pick(options: Sequence[str]) -> str:
        return options[int(rng.integers(len(options)))]

    groups = _group_findings(findings)
    labels = {finding.label for finding in findings}
    sentences: list[str] = []
    impressions: list[str] = []

    # Lungs.
    for label in _LUNG_LABELS:
        for group in groups.get(label, []):
            word = pick(_SEVERITY_WORDS[label][group[0].severity])
            sentence, impression = _lung_sentences(label, group, word, size, pick)
            sentences.append(sentence)
            impressions.append(impression)
    if not labels & set(_LUNG_LABELS):
        sentences.append(
            pick(
                (
                    "The lungs are clear.",
                    "Lungs are clear bilaterally.",
                    "The lungs are well expanded and clear.",
                )
            )
        )
    elif not labels & {"consolidation", "pneumonia"} and rng.random() < 0.7:
        sentences.append(pick(("No focal consolidation.", "There is no focal consolidation.")))
    if "edema" not in labels and rng.random() < 0.4:
        sentences.append(pick(("No pulmonary edema.", "There is no pulmonary edema.")))

    # Pleura.
    for group in groups.get("pneumothorax", []):
        word, side = pick(_SEVERITY_WORDS["pneumothorax"][group[0].severity]), group[0].side
        share = (
            f" (about {round(100 * pcr)}% of the {side} hemithorax)"
            if pcr is not None and rng.random() < 0.5
            else ""
        )
        sentences.append(
            pick(
                (
                    f"There is a {word} {side} apical pneumothorax{share}.",
                    f"{_upper_first(word)} {side} pneumothorax with a visible pleural line{share}.",
                    f"A {word} {side} pneumothorax is present{share}.",
                )
            )
        )
        impressions.insert(0, f"{_upper_first(word)} {side} pneumothorax.")
    for group in groups.get("pleural effusion", []):
        word = pick(_SEVERITY_WORDS["pleural effusion"][group[0].severity])
        if len(group) == 2:
            sentences.append(
                pick(
                    (
                        f"{_upper_first(word)} bilateral pleural effusions.",
                        f"There are {word} bilateral pleural effusions.",
                    )
                )
            )
            impressions.append(f"{_upper_first(word)} bilateral pleural effusions.")
            continue
        side = group[0].side
        sentences.append(
            pick(
                (
                    f"There is a {word} {side} pleural effusion.",
                    f"{_upper_first(word)} {side} pleural effusion with a meniscus along the lateral chest wall.",
                    f"A {word} {side} pleural effusion is present.",
                )
            )
        )
        impressions.append(f"{_upper_first(word)} {side} pleural effusion.")
    if not labels & {"pleural effusion", "pneumothorax"}:
        sentences.append(
            pick(
                (
                    "No pleural effusion or pneumothorax.",
                    "There is no pleural effusion or pneumothorax.",
                    "No effusion or pneumothorax.",
                )
            )
        )
    elif "pneumothorax" not in labels:
        sentences.append(pick(("No pneumothorax.", "There is no pneumothorax.")))
    elif "pleural effusion" not in labels:
        sentences.append(pick(("No pleural effusion.", "There is no pleural effusion.")))

    # Heart.
    ratio = f" (cardiothoracic ratio {ctr:.2f})" if rng.random() < 0.5 else ""
    if "cardiomegaly" in labels:
        severity = groups["cardiomegaly"][0][0].severity
        word = pick(_SEVERITY_WORDS["cardiomegaly"][severity])
        adverb = {"mild": "mildly", "moderate": "moderately", "severe": "severely", "marked": "markedly"}[
            word
        ]
        sentences.append(
            pick(
                (
                    f"There is {word} cardiomegaly{ratio}.",
                    f"The heart is {adverb} enlarged{ratio}.",
                    f"{_upper_first(word)} enlargement of the cardiac silhouette{ratio}.",
                )
            )
        )
        impressions.append(f"{_upper_first(word)} cardiomegaly.")
    else:
        sentences.append(
            pick(
                (
                    f"Heart size is normal{ratio}.",
                    f"The heart is normal in size{ratio}.",
                    f"Normal heart size{ratio}.",
                )
            )
        )

    # Bones.
    if rng.random() < 0.5:
        sentences.append(
            pick(("No acute osseous abnormality.", "The visualized osseous structures are unremarkable."))
        )

    findings_text = " ".join(sentences)
    if not impressions:
        return findings_text, pick(_NORMAL_IMPRESSIONS)
    if len(impressions) > 1 and rng.random() < 0.35:
        return findings_text, " ".join(f"{k}. {text}" for k, text in enumerate(impressions, 1))
    return findings_text, " ".join(impressions)


def _upper_first(text: str) -> str:
    """``text`` with its first letter in upper case and the rest untouched ("CT" stays "CT")."""
    return text[:1].upper() + text[1:]


def _group_findings(findings: Sequence[Finding]) -> dict[str, list[list[Finding]]]:
    """Per label, groups of findings written as one phrase: a right and a left one of the same severity and
    zone go together ("bilateral"); any other finding stands alone."""
    groups: dict[str, list[list[Finding]]] = {}
    for finding in findings:
        label_groups = groups.setdefault(finding.label, [])
        for group in label_groups:
            first = group[0]
            pair = {first.side, finding.side} == {"right", "left"}
            if len(group) == 1 and pair and (first.severity, first.zone) == (finding.severity, finding.zone):
                group.append(finding)
                break
        else:
            label_groups.append([finding])
    return groups


def _place_phrase(group: list[Finding], pick: Callable[[Sequence[str]], str]) -> str:
    """Where a group lies, in words: "right upper zone", "left apex", "left lung base", "both lung bases"."""
    zone = group[0].zone or "middle"
    if len(group) == 2:
        return (
            pick(("both lung bases", "bilateral lower zones"))
            if zone == "lower"
            else f"bilateral {_ZONE_WORDS[zone]}s"
        )
    side = group[0].side
    if zone == "lower":
        return pick((f"{side} lung base", f"{side} lower zone"))
    if zone == "middle":
        return pick((f"{side} mid lung", f"{side} mid zone"))
    return f"{side} {_ZONE_WORDS.get(zone, zone)}"


def _lung_sentences(
    label: str, group: list[Finding], word: str, size: int, pick: Callable[[Sequence[str]], str]
) -> tuple[str, str]:
    """(findings sentence, impression) for one group of lung findings."""
    place = _place_phrase(group, pick)
    lead = f"{word} " if word else ""
    if label == "consolidation":
        return (
            pick(
                (
                    f"There is {lead}consolidation in the {place}.",
                    _upper_first(f"{lead}consolidation is seen in the {place}."),
                )
            ),
            _upper_first(f"{lead}consolidation in the {place}."),
        )
    if label == "pneumonia":
        return (
            pick(
                (
                    _upper_first(f"{lead}airspace opacity in the {place}, consistent with pneumonia."),
                    f"Patchy opacities in the {place}, consistent with {lead}pneumonia.",
                )
            ),
            _upper_first(f"{lead}pneumonia in the {place}."),
        )
    if label == "edema":
        return (
            pick(
                (
                    f"There is {word} pulmonary edema with perihilar haziness.",
                    _upper_first(f"{word} bilateral perihilar opacities consistent with pulmonary edema."),
                )
            ),
            _upper_first(f"{word} pulmonary edema."),
        )
    if label == "atelectasis":
        if len(group) == 2 and group[0].zone == "lower":
            text = _upper_first(f"{word} bibasilar atelectasis.")
            return pick((text, f"There is {word} bibasilar atelectasis.")), text
        if group[0].severity == "severe":
            side = group[0].side
            return (
                f"Severe atelectasis with collapse of the {side} lower lobe.",
                f"Severe {side} lower lobe atelectasis.",
            )
        text = _upper_first(f"{word} atelectasis in the {place}.")
        return pick((text, f"There is {word} atelectasis in the {place}.")), text
    # Nodule or mass, sized from its box.
    box = group[0].box
    centimetres = (
        ""
        if box is None
        else f"{max(box[2] - box[0], box[3] - box[1]) * FIELD_OF_VIEW_MM / size / 10:.1f} cm "
    )
    noun = f"{lead}{centimetres}{label}"
    sentence = pick((f"There is a {noun} in the {place}.", f"A {noun} projects over the {place}."))
    return sentence, _upper_first(f"{noun} in the {place}; CT is recommended for further evaluation.")
