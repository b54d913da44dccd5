"""Reading chest radiographs from PNG, JPEG and DICOM into uint8 pixels, saying what was done to them.

`read_image(path)` returns a `LoadedImage`: pixels as uint8 (H, W) for grey or (H, W, 3) for colour (the layouts
`preprocess.to_model_input` takes), the original size, the source's bit depth, format and photometric
interpretation, and `notes`, one line per transform applied. Every data problem (an empty, truncated, unknown
or undecodable file, a DICOM without pixel data, an image too small or too large) raises `ImageReadError`
naming the file, so that one bad file never ends a batch. `load_image(path)` is the plain-array form.

Policies (each one shows up in `notes` when it applies):

* **Grey levels from more than 8 bits.** 16-bit PNG greys (and DICOM without a VOI LUT or window) are scaled
  linearly from their own minimum..maximum to 0..255 ("min–max"). Radiograph PNGs often hold 10-, 12- or
  14-bit values in a 16-bit container; a plain bit shift (>> 8) would turn those nearly black, while min–max
  uses whatever range the file really has. The cost is that a few extreme pixels (a burned-in marker) can
  compress the contrast; we accept that rather than clip anatomy with percentiles. 16-bit *colour* PNGs are
  reduced to 8 bits by Pillow itself (it keeps the high byte), which we note.
* **Alpha** (RGBA, grey+alpha, palettes with transparency) is dropped: the colour channels are kept as stored,
  not composited onto a background, and the note says how many pixels were not opaque.
* **Palettes** are expanded to RGB. **Colour images whose three channels are identical** (radiographs saved as
  RGB) are returned as grey (H, W); the model replicates grey to RGB anyway, and it saves two thirds of memory.
* **EXIF orientation** of PNG/JPEG is applied, so pixels, `width` and `height` are as a viewer shows them.
* **DICOM**, in this order: frame 0 of a multi-frame object; Modality LUT or Rescale Slope/Intercept; then the
  first VOI LUT Sequence item if present, else the first Window Center/Width (VOI LUT Function LINEAR,
  LINEAR_EXACT or SIGMOID, PS3.3 C.11.2.1.2), else min–max; then MONOCHROME1 is inverted (once: a DX
  Presentation LUT Shape of INVERSE says the same thing and is not applied again). A VOI LUT's output is
  scaled from its nominal range 0..2^bits−1. Colour DICOM (RGB, YBR converted to RGB by pydicom, PALETTE COLOR)
  is scaled from its nominal bit depth. Compressed transfer syntaxes decode through whichever pydicom plugin
  is installed (Pillow: JPEG Baseline and JPEG 2000; pylibjpeg + pylibjpeg-openjpeg: JPEG 2000 and HTJ2K;
  pylibjpeg-libjpeg or python-gdcm: JPEG Lossless and JPEG-LS); without one the error names the transfer
  syntax UID, its name and what to install.
* **Size limits.** Images under `MIN_SIDE` (16) pixels on a side are refused: 16 is one patch of the model's
  ResNet trunk and nothing smaller is a radiograph. Images whose longer side exceeds `MAX_SIDE` (4096) are
  downscaled, aspect ratio kept, with an area (box) filter so that the longer side is exactly 4096
  (`downscaled_from` holds the original size); a JPEG is first decoded at 1/2, 1/4 or 1/8 scale in the DCT
  domain, so a 20000×20000 JPEG never exists at full size in memory. Anything needing more than
  `MAX_DECODE_PIXELS` (2^29 ≈ 23170², after JPEG DCT scaling) decoded pixels is refused before decoding.
  Pillow's process-wide decompression-bomb guard (which raises past ~179 Mpixel) is replaced by that explicit
  per-call ceiling: we open files with Pillow's PNG/JPEG plugin classes directly, which does not consult the
  global `Image.MAX_IMAGE_PIXELS`, so nothing global is changed and it stays thread-safe. Large DICOM and
  16-bit images are downscaled before their grey-level transforms (which are then applied to averaged values).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, JpegImagePlugin, PngImagePlugin

__all__ = [
    "MAX_DECODE_PIXELS",
    "MAX_SIDE",
    "MIN_SIDE",
    "ImageReadError",
    "LoadedImage",
    "load_image",
    "read_image",
]

MIN_SIDE = 16
"""Smallest accepted width or height in pixels: one 16-pixel patch of the ResNet trunk."""

MAX_SIDE = 4096
"""Longest side returned; larger images are downscaled (area filter) to exactly this, aspect ratio kept."""

MAX_DECODE_PIXELS = 1 << 29
"""Most pixels decoded for one image (~537 M, e.g. 23170²; 1.6 GB as 8-bit RGB); larger ones are refused."""

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic"})
# Only to make "not an image" messages say what the file looks like instead.
_OTHER_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"BM", "a BMP image"),
    (b"GIF8", "a GIF image"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
    (b"\xff\x4f\xff\x51", "a JPEG 2000 codestream"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip archive"),
)
_GREY_PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")
_EXIF_ORIENTATION_TAG = 0x0112
# EXIF orientation -> the Pillow transpose that displays the stored pixels upright (EXIF 2.3, tag 0x0112).
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class ImageReadError(Exception):
    """A file that cannot be read as an image; `str()` is ``"<path>: <reason>"``.

    The only exception `read_image` raises for problems with the data, so that a batch can report the file
    and go on. Pickles (arguments are kept in ``args``), so it crosses process boundaries of data loaders.
    """

    def __init__(self, path: str | Path, reason: str):
        super().__init__(str(path), reason)
        self.path = str(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclasses.dataclass(eq=False)
class LoadedImage:
    """One decoded image and what was done to it.

    Attributes:
        path: the file read.
        pixels: uint8, (H, W) grey or (H, W, 3) RGB, possibly downscaled (see `downscaled_from`).
        width, height: the original image's size in pixels (after EXIF orientation), the frame of reference
            for coordinates reported to users.
        bit_depth: bits per sample in the source (PNG IHDR bit depth, JPEG precision, DICOM Bits Stored).
        source_format: "png", "jpeg" or "dicom".
        photometric: DICOM vocabulary for the source's colour model: "MONOCHROME1", "MONOCHROME2", "RGB",
            "PALETTE COLOR", "YBR_FULL", ... (PNG/JPEG greys are "MONOCHROME2").
        source_mode: the Pillow mode of a PNG/JPEG (e.g. "I;16", "RGBA", "P"), the decoded dtype of a DICOM.
        notes: one human-readable line per transform applied, in order.
        downscaled_from: (width, height) before downscaling, or None if `pixels` has the original size.
        metadata: a few DICOM attributes worth keeping (transfer syntax, modality, view position, pixel
            spacing), as strings; empty for PNG/JPEG.
    """

    path: Path
    pixels: np.ndarray
    width: int
    height: int
    bit_depth: int
    source_format: str
    photometric: str
    source_mode: str
    notes: list[str] = dataclasses.field(default_factory=list)
    downscaled_from: tuple[int, int] | None = None
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def scale(self) -> tuple[float, float]:
        """(sx, sy) such that original coordinates = pixel coordinates * (sx, sy)."""
        return self.width / self.pixels.shape[1], self.height / self.pixels.shape[0]


@dataclasses.dataclass(frozen=True)
class _Limits:
    min_side: int
    max_side: int
    max_decode_pixels: int


def read_image(
    path: str | Path,
    *,
    max_side: int = MAX_SIDE,
    min_side: int = MIN_SIDE,
    max_decode_pixels: int = MAX_DECODE_PIXELS,
    dicom_decoding_plugin: str = "",
) -> LoadedImage:
    """Read a PNG, JPEG or DICOM file into uint8 pixels plus metadata (see the module docstring for policy).

    The format is taken from the file's content (PNG and JPEG signatures, the DICOM "DICM" marker), not its
    name; a file without the DICOM preamble is tried as DICOM only when named *.dcm/*.dicom/*.dic or when it
    starts like a DICOM data set.

    Args:
        path: the file.
        max_side: longest side of the returned pixels; larger images are downscaled to it.
        min_side: smallest accepted width and height of the original image.
        max_decode_pixels: refuse images that would need more decoded pixels than this.
        dicom_decoding_plugin: force one pydicom decoding plugin (e.g. "pylibjpeg", "pillow", "gdcm") for
            compressed DICOM; by default every installed plugin is tried.

    Raises:
        ImageReadError: for any problem with the file or its data (and only then).
        ValueError: for invalid arguments.
    """
    if min_side < 1 or max_side < min_side:
        raise ValueError(f"need 1 <= min_side <= max_side, got min_side={min_side}, max_side={max_side}")
    if max_decode_pixels < max_side * max_side:
        raise ValueError(f"max_decode_pixels={max_decode_pixels} is below max_side² ({max_side * max_side})")
    path = Path(path)
    limits = _Limits(min_side, max_side, max_decode_pixels)
    try:
        with path.open("rb") as f:
            head = f.read(132)
    except OSError as e:  # missing, a directory, unreadable: still one file's problem, not the batch's
        raise ImageReadError(path, f"cannot open file: {e.strerror or e}") from e
    if not head:
        raise ImageReadError(path, "empty file (0 bytes)")
    for magic, name in ((_PNG_MAGIC, "PNG"), (_JPEG_MAGIC, "JPEG")):
        if len(head) < len(magic) and magic.startswith(head):
            raise ImageReadError(path, f"cannot decode {name}: truncated file ({len(head)} bytes)")
    if head.startswith(_PNG_MAGIC):
        return _read_pillow(path, "png", head, limits)
    if head.startswith(_JPEG_MAGIC):
        return _read_pillow(path, "jpeg", head, limits)
    if head[128:132] == b"DICM":
        return _read_dicom(path, limits, has_preamble=True, plugin=dicom_decoding_plugin)
    if path.suffix.lower() in _DICOM_SUFFIXES or _looks_like_raw_dicom(head):
        return _read_dicom(path, limits, has_preamble=False, plugin=dicom_decoding_plugin)
    raise ImageReadError(path, f"not a PNG, JPEG or DICOM file ({_describe_head(head)})")


def load_image(path: str | Path, *, max_side: int = MAX_SIDE) -> np.ndarray:
    """uint8 pixels of an image file: (H, W) grey or (H, W, 3) colour; `read_image(path).pixels`.

    A drop-in for `pipeline.load_image`, with two differences: 16-bit greys are scaled by min–max rather
    than by 65535, and alpha is dropped rather than returned as a fourth channel. Raises `ImageReadError`.
    """
    return read_image(path, max_side=max_side).pixels


# --------------------------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _as_read_error(path: Path, what: str) -> Iterator[None]:
    """Turn anything a decoder raises into an ImageReadError for `path`.

    Pillow and pydicom raise OSError, SyntaxError, ValueError, EOFError, struct.error, KeyError, ... on bad
    data; callers must be able to rely on one exception type per file. Our own ImageReadErrors pass through.
    """
    try:
        yield
    except ImageReadError:
        raise
    except MemoryError as e:
        raise ImageReadError(path, f"{what}: out of memory") from e
    except Exception as e:
        raise ImageReadError(path, f"{what}: {type(e).__name__}: {e}") from e


def _describe_head(head: bytes) -> str:
    for magic, name in _OTHER_MAGIC:
        if head.startswith(magic):
            return f"looks like {name}"
    if all(32 <= b < 127 or b in b"\r\n\t" for b in head[:64]):
        return "looks like text"
    return f"starts with bytes {head[:8].hex(' ')}"


def _looks_like_raw_dicom(head: bytes) -> bool:
    """A preamble-less DICOM data set usually starts with a group 0x0002 or 0x0008 tag (little endian)."""
    return len(head) >= 8 and head[:2] in (b"\x02\x00", b"\x08\x00") and head[3:4] == b"\x00"


def _check_size(path: Path, width: int, height: int, limits: _Limits) -> None:
    if width < limits.min_side or height < limits.min_side:
        raise ImageReadError(
            path,
            f"image is {width}×{height} pixels, too small: the minimum is {limits.min_side} on each side",
        )


def _check_decode_size(path: Path, width: int, height: int, limits: _Limits) -> None:
    if width * height > limits.max_decode_pixels:
        raise ImageReadError(
            path,
            f"image is {width}×{height} pixels ({width * height / 1e6:.0f} M), more than the decode limit "
            f"of {limits.max_decode_pixels / 1e6:.0f} M pixels; refusing to decode it",
        )


def _target_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Size after downscaling so that the longer side is at most `max_side` (aspect ratio kept)."""
    longer = max(width, height)
    if longer <= max_side:
        return width, height
    scale = max_side / longer
    return max(1, round(width * scale)), max(1, round(height * scale))


def _resize_note(original: tuple[int, int], target: tuple[int, int], max_side: int) -> str:
    return (
        f"downscaled from {original[0]}×{original[1]} to {target[0]}×{target[1]} "
        f"(area filter; maximum side {max_side})"
    )


def _box_resize(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Area (box-filter) downscale. `reducing_gap` first reduces by an integer factor in one fast pass,
    which Pillow implements for 8-bit, 32-bit and float modes but not for 16-bit ones."""
    gap = None if im.mode.startswith("I;16") else 2.0
    return im.resize(size, Image.Resampling.BOX, reducing_gap=gap)


def _minmax_to_unit(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Linear map of [min, max] to [0, 255] as float64; a constant image maps to 0."""
    values = np.asarray(values, np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape), 0.0, 0.0
    lo, hi = float(values[finite].min()), float(values[finite].max())
    if not finite.all():  # NaN/inf in float DICOM pixel data: treat as the darkest value, not a crash
        values = np.where(finite, values, lo)
    if hi <= lo:
        return np.zeros(values.shape), lo, hi
    return (values - lo) * 255.0 / (hi - lo), lo, hi


def _minmax_note(prefix: str, lo: float, hi: float) -> str:
    if hi <= lo:
        return f"{prefix}: constant image (all {lo:g}), returned as 0"
    return f"{prefix} scaled to 8-bit by min–max ({lo:g}..{hi:g} → 0..255)"


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _collapse_grey(pixels: np.ndarray, notes: list[str]) -> np.ndarray:
    """(H, W, 3) with three identical channels -> (H, W)."""
    if (
        pixels.ndim == 3
        and np.array_equal(pixels[..., 0], pixels[..., 1])
        and np.array_equal(pixels[..., 1], pixels[..., 2])
    ):
        notes.append("identical R, G and B channels returned as grey")
        return np.ascontiguousarray(pixels[..., 0])
    return pixels


# ----------------------------------------------------------------------------------------- PNG / JPEG

_PILLOW_CLASSES: dict[str, type[Any]] = {
    "png": PngImagePlugin.PngImageFile,
    "jpeg": JpegImagePlugin.JpegImageFile,
}
_PNG_COLOUR_TYPES = {0: "grey", 2: "RGB", 3: "palette", 4: "grey+alpha", 6: "RGBA"}


def _read_pillow(path: Path, fmt: str, head: bytes, limits: _Limits) -> LoadedImage:
    notes: list[str] = []
    # The plugin class, not Image.open: Image.open applies Pillow's global decompression-bomb check, which
    # raises past ~179 Mpixel; we apply our own explicit limits instead (module docstring).
    with _as_read_error(path, f"cannot decode {fmt.upper()}"), _PILLOW_CLASSES[fmt](str(path)) as im:
        width, height = im.size
        source_mode = im.mode
        _check_size(path, width, height, limits)
        if fmt == "png":
            bit_depth = head[24] if len(head) > 25 else 8
            if bit_depth == 16 and head[25] in (2, 4, 6):
                notes.append(
                    f"16-bit {_PNG_COLOUR_TYPES[head[25]]} PNG: Pillow keeps the high 8 bits of each sample"
                )
        else:
            bit_depth = int(getattr(im, "bits", 8))
        target = _target_size(width, height, limits.max_side)
        if fmt == "jpeg" and target != (width, height):
            # DCT-domain scaling: libjpeg decodes at 1/2, 1/4 or 1/8 size directly, never at full size.
            im.draft(im.mode, target)
            if im.size != (width, height):
                notes.append(f"JPEG decoded at {im.size[0]}×{im.size[1]} by DCT scaling")
        _check_decode_size(path, im.size[0], im.size[1], limits)
        im.load()
        orientation = _exif_orientation(im, notes)
        im, photometric = _normalise_mode(im, notes)
        if im.size != target:
            im = _box_resize(im, target)
        arr = np.asarray(im)
    if target != (width, height):
        notes.append(_resize_note((width, height), target, limits.max_side))
    if arr.dtype != np.uint8:  # 16-bit (or 32-bit / float) grey
        scaled, lo, hi = _minmax_to_unit(arr)
        notes.append(_minmax_note(f"{bit_depth}-bit grey", lo, hi))
        arr = _to_uint8(scaled)
    pixels = _collapse_grey(arr, notes)
    if orientation in _EXIF_TRANSPOSE:
        pixels = np.asarray(Image.fromarray(pixels).transpose(_EXIF_TRANSPOSE[orientation]))
        notes.append(f"EXIF orientation {orientation} applied")
        if orientation >= 5:  # the transposing orientations swap width and height
            width, height = height, width
            target = (target[1], target[0])
    return LoadedImage(
        path=path,
        pixels=pixels,
        width=width,
        height=height,
        bit_depth=bit_depth,
        source_format=fmt,
        photometric=photometric,
        source_mode=source_mode,
        notes=notes,
        downscaled_from=(width, height) if target != (width, height) else None,
    )


def _exif_orientation(im: Image.Image, notes: list[str]) -> int:
    try:
        value = im.getexif().get(_EXIF_ORIENTATION_TAG, 1)
        return int(value)
    except Exception:  # a broken EXIF block must not cost us the pixels
        notes.append("EXIF data unreadable; orientation not applied")
        return 1


def _normalise_mode(im: Image.Image, notes: list[str]) -> tuple[Image.Image, str]:
    """A loaded Pillow image -> one of L, RGB or a numeric grey mode (I;16*, I, F), and its photometric."""
    mode = im.mode
    if mode == "L":
        return im, "MONOCHROME2"
    if mode == "1":
        notes.append("1-bit image expanded to 0/255")
        return im.convert("L"), "MONOCHROME2"
    if mode.startswith("I;16") or mode in ("I", "F"):
        return im, "MONOCHROME2"
    if mode in ("LA", "La"):
        _note_alpha(im.getchannel("A"), notes)
        return im.convert("L"), "MONOCHROME2"
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        notes.append("palette expanded to RGB")
        if has_alpha:
            rgba = im.convert("RGBA")
            _note_alpha(rgba.getchannel("A"), notes)
            return rgba.convert("RGB"), "PALETTE COLOR"
        return im.convert("RGB"), "PALETTE COLOR"
    if mode in ("RGBA", "RGBa"):
        _note_alpha(im.getchannel("A"), notes)
        return im.convert("RGB"), "RGB"
    if mode == "RGB":
        return im, "RGB"
    if mode == "RGBX":
        return im.convert("RGB"), "RGB"
    # CMYK (Adobe JPEGs), YCbCr, LAB, HSV: Pillow's conversion is good enough for a radiograph.
    notes.append(f"{mode} converted to RGB")
    return im.convert("RGB"), {"YCbCr": "YBR_FULL"}.get(mode, mode)


def _note_alpha(alpha: Image.Image, notes: list[str]) -> None:
    a = np.asarray(alpha)
    translucent = int(np.count_nonzero(a != 255))
    if translucent:
        share = 100.0 * translucent / a.size
        notes.append(
            f"alpha channel dropped ({share:.1f}% of pixels not opaque; colours kept as stored, not composited)"
        )
    else:
        notes.append("alpha channel dropped (fully opaque)")


# ------------------------------------------------------------------------------------------------ DICOM

# What to install per transfer syntax family, for the "no decoder" message (see the reference's §6;
# pylibjpeg-libjpeg is GPL-3.0, the rest are permissive).
_DICOM_CODEC_ADVICE: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"),
        "pylibjpeg with pylibjpeg-libjpeg (GPL-3.0), or python-gdcm (Pillow alone handles 8-bit JPEG Baseline)",
    ),
    (
        ("1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"),
        "pylibjpeg with pylibjpeg-libjpeg (GPL-3.0), or python-gdcm",
    ),
    (
        ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"),
        "pylibjpeg with pylibjpeg-libjpeg (GPL-3.0), pyjpegls, or python-gdcm",
    ),
    (
        (
            "1.2.840.10008.1.2.4.90",
            "1.2.840.10008.1.2.4.91",
            "1.2.840.10008.1.2.4.92",
            "1.2.840.10008.1.2.4.93",
        ),
        "pylibjpeg with pylibjpeg-openjpeg (MIT), python-gdcm, or a Pillow built with OpenJPEG",
    ),
    (
        ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"),
        "pylibjpeg with pylibjpeg-openjpeg (MIT)",
    ),
    (("1.2.840.10008.1.2.5",), "numpy (built in) or pylibjpeg with pylibjpeg-rle (MIT)"),
)


def _decoder_status(transfer_syntax: Any) -> tuple[bool, list[str]]:
    """(available, pydicom's list of missing plugin dependencies) for a transfer syntax.

    Raises NotImplementedError when pydicom has no decoder at all (e.g. MPEG video). A module-level function
    so that tests can simulate a missing decoder.
    """
    from pydicom.pixels import get_decoder

    decoder = get_decoder(transfer_syntax)
    return bool(decoder.is_available), list(decoder.missing_dependencies)


def _uid_label(uid: Any) -> str:
    """'1.2.840.10008.1.2.4.80 (JPEG-LS Lossless Image Compression)'; just the UID when pydicom has no name."""
    name = getattr(uid, "name", str(uid))
    return f"{uid} ({name})" if name != str(uid) else str(uid)


def _missing_decoder_reason(transfer_syntax: Any, missing: list[str]) -> str:
    uid = str(transfer_syntax)
    advice = next((text for uids, text in _DICOM_CODEC_ADVICE if uid in uids), "a pydicom decoding plugin")
    reason = (
        f"DICOM pixel data is compressed with transfer syntax {_uid_label(transfer_syntax)} and no installed "
        f"decoder handles it; install {advice}"
    )
    if missing:
        reason += f" (pydicom: {'; '.join(missing)})"
    return reason


def _read_dicom(path: Path, limits: _Limits, *, has_preamble: bool, plugin: str) -> LoadedImage:
    try:
        import pydicom
        from pydicom.pixels import pixel_array
        from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
    except ImportError as e:
        raise ImageReadError(path, "reading DICOM needs pydicom: pip install pydicom") from e

    notes: list[str] = []
    with _as_read_error(path, "cannot parse DICOM"):
        # defer_size: large elements (the pixel data) are read from disk only when decoded.
        ds = pydicom.dcmread(path, force=not has_preamble, defer_size="1 MB")
        keys = set(ds.keys())
    pixel_tags = {0x7FE00010, 0x7FE00008, 0x7FE00009}  # Pixel Data, Float / Double Float Pixel Data
    if not has_preamble and not keys & (pixel_tags | {0x00280010, 0x00080016}):
        raise ImageReadError(path, "not a PNG, JPEG or DICOM file (no DICOM image attributes found)")
    if not keys & pixel_tags:
        sop = ds.get("SOPClassUID")
        kind = f" (SOP class {sop.name})" if isinstance(sop, UID) else ""
        raise ImageReadError(path, f"DICOM file has no pixel data{kind}")

    with _as_read_error(path, "invalid DICOM image attributes"):
        rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        samples = int(ds.get("SamplesPerPixel") or 1)
        frames = int(ds.get("NumberOfFrames") or 1)
        bits_stored = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 0)
        photometric = str(ds.get("PhotometricInterpretation") or "").strip().upper()
    if rows <= 0 or cols <= 0:
        raise ImageReadError(path, f"DICOM pixel data has invalid Rows/Columns ({rows}×{cols})")
    if frames < 1:
        raise ImageReadError(path, f"DICOM has Number of Frames {frames}")
    _check_size(path, cols, rows, limits)
    _check_decode_size(path, cols, rows, limits)
    if samples not in (1, 3):
        raise ImageReadError(
            path, f"DICOM has {samples} samples per pixel; only 1 (grey) or 3 (colour) are read"
        )

    # A preamble-less data set may lack the file meta group: infer the transfer syntax from its encoding.
    file_meta = ds.file_meta if hasattr(ds, "file_meta") else None
    transfer_syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if not transfer_syntax:
        implicit, little = ds.original_encoding
        transfer_syntax = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
        ds.file_meta = file_meta if file_meta is not None else pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = transfer_syntax
        notes.append(f"no transfer syntax in the file meta; assumed {transfer_syntax.name}")
    transfer_syntax = UID(str(transfer_syntax))
    try:
        available, missing = _decoder_status(transfer_syntax)
    except NotImplementedError as e:
        raise ImageReadError(
            path,
            f"DICOM transfer syntax {_uid_label(transfer_syntax)} is unknown or not an image encoding "
            "pydicom can decode",
        ) from e
    if not available:
        raise ImageReadError(path, _missing_decoder_reason(transfer_syntax, missing))
    if frames > 1:
        notes.append(f"multi-frame DICOM ({frames} frames): first frame used")

    with _as_read_error(path, f"cannot decode DICOM pixel data ({transfer_syntax.name})"):
        arr = np.asarray(pixel_array(ds, index=0, decoding_plugin=plugin))
    if arr.ndim == 3 and samples == 1 and arr.shape[0] == 1:  # defensive: a frame axis left in place
        arr = arr[0]
    expected = (rows, cols) if samples == 1 else (rows, cols, 3)
    if arr.shape != expected:
        raise ImageReadError(path, f"DICOM pixel data decoded to shape {arr.shape}, expected {expected}")

    target = _target_size(cols, rows, limits.max_side)
    with _as_read_error(path, "cannot process DICOM pixel values"):
        if samples == 1 and photometric != "PALETTE COLOR":
            if photometric not in _GREY_PHOTOMETRICS:
                notes.append(f"photometric interpretation {photometric or '(missing)'!r} read as MONOCHROME2")
            if target != (cols, rows):
                arr = _resize_grey_array(arr, target)
                notes.append(_resize_note((cols, rows), target, limits.max_side))
            values = _apply_modality(arr, ds, notes)
            grey = _apply_voi(values, ds, bits_stored, notes)
            if photometric == "MONOCHROME1":
                grey = 255.0 - grey
                notes.append("MONOCHROME1 inverted")
            elif str(ds.get("PresentationLUTShape") or "").strip().upper() == "INVERSE":
                notes.append("Presentation LUT Shape INVERSE on a MONOCHROME2 image not applied")
            pixels = _to_uint8(grey)
        else:
            rgb = _dicom_colour(arr, ds, photometric, samples, bits_stored, notes)
            if target != (cols, rows):
                rgb = np.asarray(_box_resize(Image.fromarray(rgb), target))
                notes.append(_resize_note((cols, rows), target, limits.max_side))
            pixels = _collapse_grey(rgb, notes)

    metadata = {"transfer_syntax": _uid_label(transfer_syntax), "frames": str(frames)}
    for keyword in ("Modality", "ViewPosition", "PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value not in (None, ""):
            metadata[keyword] = str(value)
    return LoadedImage(
        path=path,
        pixels=pixels,
        width=cols,
        height=rows,
        bit_depth=bits_stored,
        source_format="dicom",
        photometric=photometric or "MONOCHROME2",
        source_mode=str(arr.dtype),
        notes=notes,
        downscaled_from=(cols, rows) if target != (cols, rows) else None,
        metadata=metadata,
    )


def _resize_grey_array(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-filter resize of a 2-D numeric array to `size` (w, h) through Pillow, keeping integer dtypes.

    Integers go through Pillow's 16-bit mode (int16 order-preservingly shifted into uint16) so that a
    20000² 16-bit frame never exists as floats; anything else goes through 32-bit float.
    """
    if arr.dtype == np.uint8:
        return np.asarray(_box_resize(Image.fromarray(arr), size))
    if arr.dtype in (np.uint16, np.int16):
        as_u16 = arr if arr.dtype == np.uint16 else arr.view(np.uint16) ^ np.uint16(0x8000)
        small = np.asarray(_box_resize(Image.fromarray(np.ascontiguousarray(as_u16)), size)).astype(np.uint16)
        return small if arr.dtype == np.uint16 else (small ^ np.uint16(0x8000)).view(np.int16)
    small = _box_resize(Image.fromarray(arr.astype(np.float32)), size)
    out = np.asarray(small)
    return np.rint(out).astype(arr.dtype) if np.issubdtype(arr.dtype, np.integer) else out


def _float_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _first_value(value: Any) -> tuple[Any, int]:
    """(first value, how many) of a possibly multi-valued DICOM element value."""
    if value is None or isinstance(value, str | bytes):
        return value, 1
    try:
        count = len(value)
    except TypeError:
        return value, 1
    return (value[0] if count else None), count


def _apply_modality(arr: np.ndarray, ds: Any, notes: list[str]) -> np.ndarray:
    """Modality LUT Sequence (via pydicom) or Rescale Slope/Intercept (PS3.3 C.11.1), else unchanged."""
    if ds.get("ModalityLUTSequence"):
        from pydicom.pixels import apply_modality_lut

        notes.append("Modality LUT applied")
        return apply_modality_lut(arr, ds)
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        slope = _float_or_none(ds.get("RescaleSlope"))
        intercept = _float_or_none(ds.get("RescaleIntercept"))
        slope = 1.0 if slope is None else slope
        intercept = 0.0 if intercept is None else intercept
        if slope == 0.0:
            notes.append("Rescale Slope 0 ignored")
            return arr
        if (slope, intercept) != (1.0, 0.0):
            notes.append(f"rescale slope {slope:g} intercept {intercept:g} applied")
            return arr.astype(np.float64) * slope + intercept
    return arr


def _apply_voi(values: np.ndarray, ds: Any, bits_stored: int, notes: list[str]) -> np.ndarray:
    """VOI LUT Sequence, else window, else min–max: modality values -> float64 in [0, 255]."""
    sequence = ds.get("VOILUTSequence")
    if sequence:
        try:
            return _apply_voi_lut(values, ds, notes)
        except Exception as e:  # a malformed LUT: fall back to the window / min–max rather than fail
            notes.append(f"VOI LUT unusable ({type(e).__name__}: {e}); ignored")
    center, n_center = _first_value(ds.get("WindowCenter"))
    width, n_width = _first_value(ds.get("WindowWidth"))
    center, width = _float_or_none(center), _float_or_none(width)
    if center is not None and width is not None:
        function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
        windowed = _window(values, center, width, function)
        if windowed is not None:
            note = f"window {center:g}/{width:g}"
            if function != "LINEAR":
                note += f" ({function})"
            if max(n_center, n_width) > 1:
                note += f" (first of {max(n_center, n_width)})"
            notes.append(note)
            return windowed
        notes.append(f"window {center:g}/{width:g} with VOI LUT Function {function} is invalid; ignored")
    scaled, lo, hi = _minmax_to_unit(values)
    notes.append(_minmax_note(f"no VOI LUT or window: {bits_stored}-bit", lo, hi))
    return scaled


def _apply_voi_lut(values: np.ndarray, ds: Any, notes: list[str]) -> np.ndarray:
    """First VOI LUT Sequence item, output scaled from its nominal range 0..2^bits-1 to 0..255.

    pydicom decodes the LUT table (US/OW, endianness, 8-bit packing); we look values up ourselves so that
    inputs outside the LUT clamp to its ends (PS3.3 C.11.2.1.1) whatever their dtype.
    """
    from pydicom.pixels import apply_voi

    item = ds.VOILUTSequence[0]
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 65536  # 0 means 2^16 entries
    table = np.asarray(apply_voi(np.arange(first, first + entries, dtype=np.int64), ds, index=0), np.float64)
    index = np.clip(np.rint(np.asarray(values, np.float64)) - first, 0, entries - 1).astype(np.intp)
    # Some writers declare 16 bits for a 12-bit table; never let the data exceed the range we scale by.
    top = max(float(2**bits - 1), float(table.max()))
    items = len(ds.VOILUTSequence)
    notes.append(
        f"VOI LUT applied ({entries} entries, {bits}-bit output"
        + (f", first of {items} LUTs" if items > 1 else "")
        + ")"
    )
    return table[index] * 255.0 / top if top > 0 else np.zeros(index.shape)


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray | None:
    """PS3.3 C.11.2.1.2 windowing to [0, 255] (float64); None for an invalid width or unknown function."""
    x = np.asarray(values, np.float64)
    if function == "LINEAR":
        if width < 1:
            return None
        if width == 1:  # the limit of the formula: a step at c - 0.5
            return np.where(x > center - 0.5, 255.0, 0.0)
        # Equivalent to the standard's three branches: linear in between, clamped outside.
        return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0) * 255.0
    if function == "LINEAR_EXACT":
        if width <= 0:
            return None
        return np.clip((x - center) / width + 0.5, 0.0, 1.0) * 255.0
    if function == "SIGMOID":
        if width <= 0:
            return None
        return 255.0 / (1.0 + np.exp(np.clip(-4.0 * (x - center) / width, -700.0, 700.0)))
    return None


def _dicom_colour(
    arr: np.ndarray, ds: Any, photometric: str, samples: int, bits_stored: int, notes: list[str]
) -> np.ndarray:
    """Colour DICOM -> uint8 (H, W, 3): palette expanded, YBR already converted by pydicom, scaled by depth."""
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = np.asarray(apply_color_lut(arr, ds))
        lut_bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        notes.append("palette colour LUT applied")
        depth = 8 if rgb.dtype == np.uint8 else lut_bits
    else:
        if samples != 3:
            raise ValueError(f"photometric {photometric} with {samples} samples per pixel")
        if photometric.startswith("YBR"):
            notes.append(f"{photometric} converted to RGB")
        elif photometric != "RGB":
            notes.append(f"photometric interpretation {photometric or '(missing)'!r} read as RGB")
        rgb = arr
        depth = bits_stored or 8
    if depth > 8 or rgb.dtype != np.uint8:
        top = float(2**depth - 1)
        notes.append(f"{depth}-bit colour scaled to 8-bit by bit depth (0..{top:g} → 0..255)")
        rgb = _to_uint8(np.asarray(rgb, np.float64) * 255.0 / top)
    return np.ascontiguousarray(rgb, np.uint8)
