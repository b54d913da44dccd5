"""image_io: PNG/JPEG/DICOM reading, every policy against hand-computed pixels, and every bad input.

All fixtures are generated here in tmp_path (Pillow for PNG/JPEG, pydicom for DICOM, a few PNGs assembled
by hand with zlib where Pillow cannot write them).
"""

from __future__ import annotations

import io
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imtcxr_jax.data import image_io
from imtcxr_jax.data.image_io import ImageReadError, LoadedImage, load_image, read_image

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402
from pydicom.uid import (  # noqa: E402
    MPEG2MPML,
    UID,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

# ------------------------------------------------------------------------------------------ fixtures


def _ramp(h: int = 32, w: int = 40, dtype: type = np.uint8, scale: int = 1, offset: int = 0) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) % 251 * scale + offset).astype(dtype)


def _save(path: Path, image: Image.Image, fmt: str, **kwargs) -> Path:
    image.save(path, fmt, **kwargs)
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def _raw_png(path: Path, width: int, height: int, depth: int, colour: int, idat: bytes) -> Path:
    """A PNG assembled by hand (Pillow cannot write 16-bit RGB, or claim a size it does not have)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )
    return path


def _dicom(
    path: Path,
    arr: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    **attributes,
) -> Path:
    """A DX DICOM file (with preamble) holding `arr`; extra keyword arguments become data elements."""
    ds = _dataset(arr, photometric, bits_stored, **attributes)
    ds.save_as(path, enforce_file_format=True)
    return path


def _dataset(arr: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None, **attributes):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.Modality = "DX"
    ds.set_pixel_data(arr, photometric, bits_stored or arr.dtype.itemsize * 8)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def _encapsulated(path: Path, ds: Dataset, transfer_syntax: UID, frames: list[bytes]) -> Path:
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def _linear_window(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1, the three branches written out, to [0, 255]."""
    x = np.asarray(x, np.float64)
    out = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255.0
    out = np.where(x <= c - 0.5 - (w - 1) / 2, 0.0, out)
    out = np.where(x > c - 0.5 + (w - 1) / 2, 255.0, out)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _minmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return np.rint((x - x.min()) * 255.0 / (x.max() - x.min())).astype(np.uint8)


def _read_error(path: Path, *fragments: str, **kwargs) -> ImageReadError:
    with pytest.raises(ImageReadError) as info:
        read_image(path, **kwargs)
    message = str(info.value)
    assert str(path) in message and info.value.path == str(path)
    for fragment in fragments:
        assert fragment.lower() in message.lower(), message
    return info.value


# ------------------------------------------------------------------------------------------ PNG / JPEG


def test_png_8bit_grey_is_exact(tmp_path):
    arr = _ramp()
    image = read_image(_save(tmp_path / "g.png", Image.fromarray(arr), "PNG"))
    assert isinstance(image, LoadedImage)
    np.testing.assert_array_equal(image.pixels, arr)
    assert image.pixels.dtype == np.uint8
    assert (image.width, image.height, image.bit_depth) == (40, 32, 8)
    assert (image.source_format, image.photometric, image.source_mode) == ("png", "MONOCHROME2", "L")
    assert image.notes == [] and image.downscaled_from is None and image.scale == (1.0, 1.0)
    np.testing.assert_array_equal(load_image(tmp_path / "g.png"), arr)


def test_png_16bit_grey_min_max(tmp_path):
    arr = _ramp(dtype=np.uint16, scale=16, offset=1000)  # 1000 .. 1000 + 250*16 = 5000: 12-bit-ish content
    path = _save(tmp_path / "g16.png", Image.fromarray(arr), "PNG")
    with Image.open(path) as check:
        assert check.mode == "I;16"
    image = read_image(path)
    expected = np.rint((arr.astype(np.float64) - 1000) * 255.0 / 4000).astype(np.uint8)
    np.testing.assert_array_equal(image.pixels, expected)
    assert image.bit_depth == 16 and image.source_mode == "I;16"
    assert image.notes == ["16-bit grey scaled to 8-bit by min–max (1000..5000 → 0..255)"]


def test_png_16bit_constant_is_zero(tmp_path):
    image = read_image(_save(tmp_path / "c.png", Image.fromarray(np.full((20, 20), 777, np.uint16)), "PNG"))
    assert not image.pixels.any() and "constant image" in image.notes[0]


def test_png_rgb_and_grey_rgb(tmp_path):
    rgb = np.stack([_ramp(), _ramp()[::-1], np.full((32, 40), 9, np.uint8)], axis=-1)
    image = read_image(_save(tmp_path / "c.png", Image.fromarray(rgb), "PNG"))
    np.testing.assert_array_equal(image.pixels, rgb)
    assert image.photometric == "RGB" and image.notes == []
    grey_rgb = np.repeat(_ramp()[..., None], 3, axis=-1)
    image = read_image(_save(tmp_path / "g.png", Image.fromarray(grey_rgb), "PNG"))
    np.testing.assert_array_equal(image.pixels, _ramp())
    assert image.notes == ["identical R, G and B channels returned as grey"]


def test_png_rgba_alpha_dropped(tmp_path):
    rgba = np.zeros((32, 40, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = _ramp(), 200, 3
    rgba[..., 3] = 255
    rgba[:8, :, 3] = 0  # a quarter transparent: the stored colour must survive, not be composited
    image = read_image(_save(tmp_path / "a.png", Image.fromarray(rgba, "RGBA"), "PNG"))
    np.testing.assert_array_equal(image.pixels, rgba[..., :3])
    assert image.source_mode == "RGBA"
    assert image.notes == [
        "alpha channel dropped (25.0% of pixels not opaque; colours kept as stored, not composited)"
    ]


def test_png_grey_alpha(tmp_path):
    la = Image.merge("LA", [Image.fromarray(_ramp()), Image.new("L", (40, 32), 255)])
    image = read_image(_save(tmp_path / "la.png", la, "PNG"))
    np.testing.assert_array_equal(image.pixels, _ramp())
    assert image.notes == ["alpha channel dropped (fully opaque)"]


def test_png_palette(tmp_path):
    index = (np.arange(32 * 40).reshape(32, 40) % 4).astype(np.uint8)
    palette = [10, 20, 30, 200, 0, 0, 0, 255, 0, 7, 7, 7]
    image_p = Image.fromarray(index, "P")
    image_p.putpalette(palette + [0] * (768 - len(palette)))
    image = read_image(_save(tmp_path / "p.png", image_p, "PNG"))
    expected = np.asarray(palette, np.uint8).reshape(4, 3)[index]
    np.testing.assert_array_equal(image.pixels, expected)
    assert image.photometric == "PALETTE COLOR" and image.notes == ["palette expanded to RGB"]

    image_p.info["transparency"] = 1  # palette entry 1 transparent
    image = read_image(_save(tmp_path / "pt.png", image_p, "PNG", transparency=1))
    np.testing.assert_array_equal(image.pixels, expected)
    assert image.notes[0] == "palette expanded to RGB" and "25.0% of pixels not opaque" in image.notes[1]

    grey_palette = [v for g in (0, 85, 170, 255) for v in (g, g, g)]
    image_p.putpalette(grey_palette + [0] * (768 - len(grey_palette)))
    image = read_image(_save(tmp_path / "pg.png", image_p, "PNG"))
    np.testing.assert_array_equal(image.pixels, (index * 85).astype(np.uint8))


def test_png_1bit(tmp_path):
    bits = _ramp() % 2 == 1
    image = read_image(_save(tmp_path / "b.png", Image.fromarray(bits), "PNG"))
    np.testing.assert_array_equal(image.pixels, np.where(bits, 255, 0).astype(np.uint8))
    assert image.bit_depth == 1


def test_png_16bit_rgb_keeps_high_byte(tmp_path):
    w, h = 20, 18
    sample = b"\x12\x34\xab\xcd\x00\x01"  # R=0x1234, G=0xabcd, B=0x0001
    raw = b"".join(b"\x00" + sample * w for _ in range(h))
    image = read_image(_raw_png(tmp_path / "rgb16.png", w, h, 16, 2, zlib.compress(raw)))
    np.testing.assert_array_equal(image.pixels[0, 0], [0x12, 0xAB, 0x00])
    assert image.bit_depth == 16
    assert image.notes == ["16-bit RGB PNG: Pillow keeps the high 8 bits of each sample"]


def test_jpeg_grey_and_rgb(tmp_path):
    smooth = (np.add.outer(np.arange(48), np.arange(64)) * 2).astype(np.uint8)
    image = read_image(_save(tmp_path / "g.jpg", Image.fromarray(smooth), "JPEG", quality=95))
    assert image.pixels.shape == (48, 64) and image.source_format == "jpeg"
    assert np.abs(image.pixels.astype(int) - smooth).max() <= 3
    assert (image.bit_depth, image.photometric, image.notes) == (8, "MONOCHROME2", [])
    rgb = np.stack([smooth, 255 - smooth, np.full_like(smooth, 128)], axis=-1)
    image = read_image(_save(tmp_path / "c.jpeg", Image.fromarray(rgb), "JPEG", quality=95))
    assert image.pixels.shape == (48, 64, 3) and image.photometric == "RGB"
    assert np.abs(image.pixels.astype(int) - rgb).max() <= 8  # chroma subsampling


def test_jpeg_cmyk(tmp_path):
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # red
    image = read_image(_save(tmp_path / "k.jpg", cmyk, "JPEG"))
    assert image.pixels.shape == (32, 32, 3) and image.notes == ["CMYK converted to RGB"]
    assert image.pixels[16, 16, 0] > 200 and image.pixels[16, 16, 1:].max() < 60


def test_jpeg_exif_orientation(tmp_path):
    arr = np.zeros((20, 60), np.uint8)
    arr[:, :10] = 255  # bright stripe on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display = stored rotated 90° clockwise
    image = read_image(_save(tmp_path / "o.jpg", Image.fromarray(arr), "JPEG", exif=exif, quality=95))
    assert image.pixels.shape == (60, 20) and (image.width, image.height) == (20, 60)
    assert image.pixels[:10].mean() > 200 and image.pixels[20:].mean() < 30  # the stripe is now on top
    assert image.notes == ["EXIF orientation 6 applied"]


def test_downscale_png(tmp_path):
    arr = np.zeros((100, 300), np.uint8)
    arr[:, 150:] = 200
    image = read_image(_save(tmp_path / "w.png", Image.fromarray(arr), "PNG"), max_side=60)
    assert image.pixels.shape == (20, 60) and (image.width, image.height) == (300, 100)
    assert image.downscaled_from == (300, 100) and image.scale == (5.0, 5.0)
    np.testing.assert_array_equal(image.pixels[:, :30], 0)
    np.testing.assert_array_equal(image.pixels[:, 30:], 200)
    assert image.notes == ["downscaled from 300×100 to 60×20 (area filter; maximum side 60)"]


def test_downscale_jpeg_uses_dct_scaling(tmp_path):
    arr = np.full((1000, 2000), 90, np.uint8)
    image = read_image(_save(tmp_path / "big.jpg", Image.fromarray(arr), "JPEG"), max_side=200)
    assert image.pixels.shape == (100, 200) and image.downscaled_from == (2000, 1000)
    assert np.abs(image.pixels.astype(int) - 90).max() <= 2
    assert image.notes == [
        "JPEG decoded at 250×125 by DCT scaling",
        "downscaled from 2000×1000 to 200×100 (area filter; maximum side 200)",
    ]


def test_huge_png_is_downscaled_not_a_decompression_bomb_error(tmp_path):
    side = 20000  # 400 Mpixel: Pillow's Image.open would raise DecompressionBombError
    bands = [b"\x00" + bytes([value]) * side for value in (0, 60, 120, 180)]
    packer = zlib.compressobj(1)
    idat = b"".join(packer.compress(band * (side // 4)) for band in bands) + packer.flush()
    path = _raw_png(tmp_path / "huge.png", side, side, 8, 0, idat)
    limit_before = Image.MAX_IMAGE_PIXELS
    image = read_image(path)
    assert limit_before == Image.MAX_IMAGE_PIXELS  # nothing global touched
    assert image.pixels.shape == (4096, 4096) and image.downscaled_from == (side, side)
    assert (image.width, image.height) == (side, side)
    for band, value in enumerate((0, 60, 120, 180)):
        np.testing.assert_array_equal(image.pixels[band * 1024 + 10 : band * 1024 + 1014], value)
    assert image.notes == ["downscaled from 20000×20000 to 4096×4096 (area filter; maximum side 4096)"]


def test_png_over_decode_limit_is_refused(tmp_path):
    path = _raw_png(tmp_path / "bomb.png", 100_000, 100_000, 8, 0, zlib.compress(b"\x00" * 100))
    _read_error(path, "100000×100000", "decode limit")


# ------------------------------------------------------------------------------------------ bad input


def test_empty_file(tmp_path):
    for name in ("e.png", "e.jpg", "e.dcm", "e"):
        (tmp_path / name).write_bytes(b"")
        _read_error(tmp_path / name, "empty file")


def test_truncated_png_and_jpeg(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    for fmt, suffix in (("PNG", "png"), ("JPEG", "jpg")):
        whole = io.BytesIO()
        Image.fromarray(noise).save(whole, fmt)
        data = whole.getvalue()
        for cut in (len(data) // 2, 30, 3):
            path = tmp_path / f"cut{cut}.{suffix}"
            path.write_bytes(data[:cut])
            _read_error(path, f"cannot decode {fmt}")


def test_png_with_bad_crc(tmp_path):
    path = _save(tmp_path / "crc.png", Image.fromarray(_ramp()), "PNG")
    data = bytearray(path.read_bytes())
    data[29] ^= 0xFF  # IHDR's CRC
    path.write_bytes(bytes(data))
    _read_error(path, "cannot decode PNG")


def test_not_an_image(tmp_path):
    (tmp_path / "notes.png").write_text("patient notes, not pixels\n" * 10)
    _read_error(tmp_path / "notes.png", "not a PNG, JPEG or DICOM", "looks like text")
    (tmp_path / "x.bin").write_bytes(bytes(range(7, 200)))
    _read_error(tmp_path / "x.bin", "not a PNG, JPEG or DICOM", "starts with bytes")
    _save(tmp_path / "tiff.png", Image.fromarray(_ramp()), "TIFF")
    _read_error(tmp_path / "tiff.png", "looks like a TIFF image")
    (tmp_path / "text.dcm").write_text("not dicom either " * 20)
    _read_error(tmp_path / "text.dcm")


def test_missing_file_and_directory(tmp_path):
    _read_error(tmp_path / "nope.png", "cannot open file")
    _read_error(tmp_path, "cannot open file")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_too_small(tmp_path, fmt):
    _read_error(_save(tmp_path / "one", Image.new("L", (1, 1)), fmt), "1×1 pixels", "minimum is 16")
    _read_error(_save(tmp_path / "thin", Image.new("L", (15, 300)), fmt), "15×300")
    assert read_image(_save(tmp_path / "ok", Image.new("L", (16, 16)), fmt)).pixels.shape == (16, 16)


def test_error_pickles():
    error = pickle.loads(pickle.dumps(ImageReadError("/x/y.png", "empty file (0 bytes)")))
    assert str(error) == "/x/y.png: empty file (0 bytes)" and error.reason == "empty file (0 bytes)"


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError):
        read_image(tmp_path / "any.png", max_side=8)


# ------------------------------------------------------------------------------------------ DICOM


def test_dicom_monochrome2_min_max(tmp_path):
    arr = _ramp(dtype=np.uint16, scale=16, offset=95)  # 12-bit values 95..4095
    image = read_image(_dicom(tmp_path / "m2.dcm", arr, bits_stored=12, ViewPosition="PA"))
    np.testing.assert_array_equal(image.pixels, _minmax(arr))
    assert (image.source_format, image.photometric, image.bit_depth) == ("dicom", "MONOCHROME2", 12)
    assert image.notes == ["no VOI LUT or window: 12-bit scaled to 8-bit by min–max (95..4095 → 0..255)"]
    assert image.metadata["Modality"] == "DX" and image.metadata["ViewPosition"] == "PA"
    assert image.metadata["transfer_syntax"].startswith("1.2.840.10008.1.2.1 (Explicit VR Little Endian")


def test_dicom_monochrome1_window_inverted(tmp_path):
    arr = _ramp(dtype=np.uint16, scale=16)
    path = _dicom(tmp_path / "m1.dcm", arr, "MONOCHROME1", 12, WindowCenter=2000, WindowWidth=3000)
    image = read_image(path)
    np.testing.assert_array_equal(image.pixels, 255 - _linear_window(arr, 2000, 3000))
    assert image.notes == ["window 2000/3000", "MONOCHROME1 inverted"]
    assert image.photometric == "MONOCHROME1"


def test_dicom_rescale_then_window(tmp_path):
    arr = _ramp(dtype=np.int16, scale=4, offset=-200)  # stored -200 .. 800
    path = _dicom(
        tmp_path / "ct.dcm",
        arr,
        bits_stored=16,
        RescaleSlope=2,
        RescaleIntercept=-1024,
        WindowCenter=[40, 300],
        WindowWidth=[400, 1500],
    )
    image = read_image(path)
    np.testing.assert_array_equal(image.pixels, _linear_window(arr * 2.0 - 1024, 40, 400))
    assert image.notes == ["rescale slope 2 intercept -1024 applied", "window 40/400 (first of 2)"]


def test_dicom_window_functions(tmp_path):
    arr = _ramp(dtype=np.uint16, scale=10)
    x = arr.astype(np.float64)
    exact = read_image(
        _dicom(tmp_path / "e.dcm", arr, WindowCenter=1000, WindowWidth=800, VOILUTFunction="LINEAR_EXACT")
    )
    np.testing.assert_array_equal(exact.pixels, np.rint(np.clip((x - 1000) / 800 + 0.5, 0, 1) * 255))
    sigmoid = read_image(
        _dicom(tmp_path / "s.dcm", arr, WindowCenter=1000, WindowWidth=800, VOILUTFunction="SIGMOID")
    )
    np.testing.assert_array_equal(sigmoid.pixels, np.rint(255 / (1 + np.exp(-4 * (x - 1000) / 800))))
    assert sigmoid.notes == ["window 1000/800 (SIGMOID)"]
    bad = read_image(_dicom(tmp_path / "b.dcm", arr, WindowCenter=1000, WindowWidth=0))
    np.testing.assert_array_equal(bad.pixels, _minmax(arr))
    assert "invalid; ignored" in bad.notes[0]


def _voi_lut_item(entries: int, first: int, bits: int, data: list[int]) -> Dataset:
    item = Dataset()
    item.add_new(0x00283002, "US", [entries, first, bits])  # LUT Descriptor
    item.add_new(0x00283006, "US", data)  # LUT Data
    return item


def test_dicom_voi_lut_sequence_preferred_over_window(tmp_path):
    arr = _ramp(dtype=np.uint16, scale=2)  # 0 .. 500
    table = [min(4095, 4 * i * i) for i in range(256)]  # a non-linear 12-bit curve over inputs 100..355
    path = _dicom(
        tmp_path / "lut.dcm",
        arr,
        bits_stored=12,
        VOILUTSequence=Sequence([_voi_lut_item(256, 100, 12, table)]),
        WindowCenter=250,
        WindowWidth=100,
    )
    image = read_image(path)
    index = np.clip(arr.astype(int) - 100, 0, 255)
    expected = np.rint(np.asarray(table, np.float64)[index] * 255.0 / 4095).astype(np.uint8)
    np.testing.assert_array_equal(image.pixels, expected)
    assert image.notes == ["VOI LUT applied (256 entries, 12-bit output)"]


def test_dicom_multiframe_first_frame(tmp_path):
    frames = np.stack([_ramp(), _ramp()[::-1], _ramp()[:, ::-1]]).astype(np.uint8)
    image = read_image(_dicom(tmp_path / "mf.dcm", frames, WindowCenter=127.5, WindowWidth=256))
    np.testing.assert_array_equal(image.pixels, _linear_window(frames[0], 127.5, 256))
    assert image.notes[0] == "multi-frame DICOM (3 frames): first frame used"
    assert image.metadata["frames"] == "3"


def test_dicom_rgb_and_palette(tmp_path):
    rgb = np.stack([_ramp(), _ramp()[::-1], np.full((32, 40), 50, np.uint8)], axis=-1)
    image = read_image(_dicom(tmp_path / "rgb.dcm", rgb, "RGB"))
    np.testing.assert_array_equal(image.pixels, rgb)
    assert image.photometric == "RGB" and image.notes == []

    index = (_ramp() % 4).astype(np.uint8)
    ds = _dataset(index, "PALETTE COLOR", 8)
    lut = {"Red": [0, 65535, 0, 32896], "Green": [0, 0, 65535, 32896], "Blue": [65535, 0, 0, 32896]}
    for colour, values in lut.items():
        ds.add_new(f"{colour}PaletteColorLookupTableDescriptor", "US", [4, 0, 16])
        ds.add_new(f"{colour}PaletteColorLookupTableData", "OW", np.asarray(values, "<u2").tobytes())
    ds.save_as(tmp_path / "pal.dcm", enforce_file_format=True)
    image = read_image(tmp_path / "pal.dcm")
    table = np.stack([lut["Red"], lut["Green"], lut["Blue"]], axis=-1).astype(np.float64)
    np.testing.assert_array_equal(image.pixels, np.rint(table[index] * 255 / 65535).astype(np.uint8))
    assert image.photometric == "PALETTE COLOR" and image.notes[0] == "palette colour LUT applied"


def test_dicom_without_preamble(tmp_path):
    ds = _dataset(_ramp(), WindowCenter=128, WindowWidth=256)
    del ds.file_meta
    ds.save_as(tmp_path / "raw.dcm", implicit_vr=True, little_endian=True)
    assert (tmp_path / "raw.dcm").read_bytes()[128:132] != b"DICM"
    image = read_image(tmp_path / "raw.dcm")
    np.testing.assert_array_equal(image.pixels, _linear_window(_ramp(), 128, 256))
    assert image.notes[0] == "no transfer syntax in the file meta; assumed Implicit VR Little Endian"


def test_dicom_downscaled(tmp_path):
    arr = np.zeros((100, 300), np.int16)
    arr[:, 150:] = 1000
    image = read_image(_dicom(tmp_path / "big.dcm", arr), max_side=60)
    assert image.pixels.shape == (20, 60) and image.downscaled_from == (300, 100)
    np.testing.assert_array_equal(image.pixels[:, :30], 0)
    np.testing.assert_array_equal(image.pixels[:, 30:], 255)


def test_dicom_rle_decodes(tmp_path):
    arr = _ramp(dtype=np.uint16, scale=16)
    ds = _dataset(arr, bits_stored=12)
    ds.compress(RLELossless, arr)
    ds.save_as(tmp_path / "rle.dcm", enforce_file_format=True)
    image = read_image(tmp_path / "rle.dcm")
    np.testing.assert_array_equal(image.pixels, _minmax(arr))
    assert image.metadata["transfer_syntax"].startswith("1.2.840.10008.1.2.5 (RLE Lossless)")


def _plugins(transfer_syntax: UID) -> list[str]:
    from pydicom.pixels import get_decoder

    return sorted(get_decoder(transfer_syntax).available_plugins)


@pytest.mark.parametrize("plugin", ["pillow", "pylibjpeg"])
def test_dicom_jpeg2000_lossless_decodes(tmp_path, plugin):
    if plugin not in _plugins(JPEG2000Lossless):
        pytest.skip(f"pydicom's {plugin} plugin for JPEG 2000 is not installed")
    arr = _ramp(dtype=np.uint16, scale=16)
    codestream = io.BytesIO()
    Image.fromarray(arr).save(codestream, "JPEG2000", no_jp2=True, irreversible=False)
    path = _encapsulated(
        tmp_path / "j2k.dcm", _dataset(arr, bits_stored=16), JPEG2000Lossless, [codestream.getvalue()]
    )
    image = read_image(path, dicom_decoding_plugin=plugin)
    np.testing.assert_array_equal(image.pixels, _minmax(arr))


def test_dicom_jpeg_baseline_decodes(tmp_path):
    if not _plugins(JPEGBaseline8Bit):
        pytest.skip("no JPEG Baseline decoder for pydicom")
    smooth = (np.add.outer(np.arange(32), np.arange(48)) * 3).astype(np.uint8)
    jpeg = io.BytesIO()
    Image.fromarray(smooth).save(jpeg, "JPEG", quality=95)
    path = _encapsulated(
        tmp_path / "jpg.dcm", _dataset(smooth, bits_stored=8), JPEGBaseline8Bit, [jpeg.getvalue()]
    )
    image = read_image(path)
    assert np.abs(image.pixels.astype(int) - _minmax(smooth)).max() <= 4


def test_dicom_compressed_without_decoder(tmp_path):
    # JPEG-LS and JPEG Lossless decode only through pylibjpeg-libjpeg, pyjpegls or gdcm.
    missing = [ts for ts in (JPEGLSLossless, JPEGLosslessSV1) if not _plugins(ts)]
    if not missing:
        pytest.skip("every JPEG-LS / JPEG Lossless decoder is installed here")
    transfer_syntax = missing[0]
    path = _encapsulated(
        tmp_path / "ls.dcm", _dataset(_ramp()), transfer_syntax, [b"\xff\xd8\xff\xf7" + bytes(64)]
    )
    error = _read_error(path, str(transfer_syntax), transfer_syntax.name, "no installed decoder", "install")
    assert "pylibjpeg-libjpeg" in error.reason and "python-gdcm" in error.reason


def test_dicom_jpeg2000_without_decoder_names_what_to_install(tmp_path, monkeypatch):
    # Simulate an environment with neither pylibjpeg-openjpeg nor an OpenJPEG-enabled Pillow.
    monkeypatch.setattr(image_io, "_decoder_status", lambda ts: (False, ["pylibjpeg - requires pylibjpeg"]))
    path = _encapsulated(tmp_path / "j2k.dcm", _dataset(_ramp()), JPEG2000Lossless, [b"\xff\x4f\xff\x51"])
    error = _read_error(path, "1.2.840.10008.1.2.4.90", "JPEG 2000 Image Compression (Lossless Only)")
    assert "pylibjpeg with pylibjpeg-openjpeg (MIT)" in error.reason


def test_dicom_unsupported_transfer_syntax(tmp_path):
    path = _encapsulated(tmp_path / "mpeg.dcm", _dataset(_ramp()), MPEG2MPML, [bytes(16)])
    _read_error(path, MPEG2MPML, MPEG2MPML.name, "not an image encoding")


def test_dicom_bad_compressed_data(tmp_path):
    path = _encapsulated(tmp_path / "junk.dcm", _dataset(_ramp()), RLELossless, [bytes(10)])
    _read_error(path, "cannot decode DICOM pixel data")


def test_dicom_without_pixel_data(tmp_path):
    ds = _dataset(_ramp())
    del ds.PixelData
    ds.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    _read_error(tmp_path / "sr.dcm", "has no pixel data", "Digital X-Ray Image Storage")


def test_dicom_truncated_pixel_data(tmp_path):
    path = _dicom(tmp_path / "t.dcm", _ramp(dtype=np.uint16))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    _read_error(path)


def test_dicom_too_small_and_too_large(tmp_path):
    _read_error(_dicom(tmp_path / "one.dcm", np.zeros((1, 1), np.uint16)), "1×1 pixels", "minimum is 16")
    ds = _dataset(_ramp())
    ds.Rows = ds.Columns = 30000  # claims 900 Mpixel: refused before any decoding
    ds.save_as(tmp_path / "huge.dcm", enforce_file_format=True)
    _read_error(tmp_path / "huge.dcm", "30000×30000", "decode limit")


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the invalid values it meets
def test_corrupted_files_raise_only_image_read_error(tmp_path):
    """Random byte flips and cuts in valid PNG, JPEG and DICOM files: each read succeeds or raises
    ImageReadError, nothing else (the batch-safety promise)."""
    rng = np.random.default_rng(1)
    arr = _ramp(dtype=np.uint16, scale=16)
    sources = {
        "png": _save(tmp_path / "s.png", Image.fromarray(_ramp()), "PNG").read_bytes(),
        "jpg": _save(tmp_path / "s.jpg", Image.fromarray(_ramp()), "JPEG").read_bytes(),
        "dcm": _dicom(
            tmp_path / "s.dcm", arr, bits_stored=12, WindowCenter=2000, WindowWidth=3000
        ).read_bytes(),
    }
    outcomes = {"ok": 0, "error": 0}
    for suffix, data in sources.items():
        for trial in range(60):
            mutated = bytearray(data)
            for position in rng.integers(0, len(data), size=int(rng.integers(1, 6))):
                mutated[position] = int(rng.integers(0, 256))
            if trial % 3 == 0:
                mutated = mutated[: int(rng.integers(1, len(mutated)))]
            path = tmp_path / f"m{trial}.{suffix}"
            path.write_bytes(bytes(mutated))
            try:
                image = read_image(path)
            except ImageReadError as e:
                assert str(path) in str(e)
                outcomes["error"] += 1
            else:
                assert image.pixels.dtype == np.uint8 and image.pixels.ndim in (2, 3)
                outcomes["ok"] += 1
    assert outcomes["ok"] and outcomes["error"]
