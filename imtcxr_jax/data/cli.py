"""``imtcxr data ...``: generate phantom radiograph datasets and draw their ground truth.

Commands:

* ``phantom --n N --seed S --size PX --out DIR``: writes ``DIR/images/<seed>.png`` for seeds S .. S+N-1 and
  ``DIR/manifest.jsonl``, one JSON object per image (the fields of `Phantom.to_record`: image path relative to
  DIR, width, height, labels, findings with severity, location and box, 30-point polygons, ctr, pcr, report).
  Phantom k of a dataset is ``generate_phantom(S + k, PX)``, so disjoint seed ranges give disjoint splits.
  An existing non-empty manifest is never replaced unless ``--overwrite`` is given; the manifest is written
  to a temporary file and renamed at the end, so an interrupted run leaves no partial manifest.
* ``phantom-sheet --out PATH``: a contact sheet of phantoms with their ground truth drawn on (lung, heart and
  pneumothorax contours, lesion boxes with their labels, the CTR's two widths), one finding per tile by
  default (``--random`` for sampled studies).

Phantoms are synthetic drawings, not clinical data (see `imtcxr_jax.data.phantom`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from imtcxr_jax import geometry
from imtcxr_jax.data.phantom import MAX_SIZE, MIN_SIZE, Phantom, PhantomConfig, generate_phantom

MANIFEST = "manifest.jsonl"
IMAGE_DIR = "images"

# Colours of the ground truth on contact sheets (RGB).
_COLOURS = {
    "right_lung": (64, 200, 255),
    "left_lung": (90, 130, 255),
    "heart": (255, 80, 80),
    "pneumothorax": (255, 230, 60),
    "box": (80, 255, 120),
    "ctr": (255, 160, 40),
}
_TEXT, _SUBTEXT = (235, 235, 235), (170, 170, 170)
# One tile per finding, then two sampled studies: what `phantom-sheet` shows by default.
SHOWCASE: tuple[tuple[str, ...] | None, ...] = (
    (),
    ("cardiomegaly",),
    ("pleural effusion",),
    ("pneumothorax",),
    ("nodule",),
    ("mass",),
    ("consolidation",),
    ("pneumonia",),
    ("atelectasis",),
    ("edema",),
    ("cardiomegaly", "pleural effusion", "edema"),
    None,
)


def cli_main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.command == "phantom":
        return _phantom_command(args)
    if args.command == "phantom-sheet":
        return _sheet_command(args)
    if args.command == "build":
        if getattr(args, "build_unavailable", None):
            print(args.build_unavailable, file=sys.stderr)
            return 1
        from imtcxr_jax.data.tfds.cli import build_command

        return build_command(args)
    parser.print_help()
    return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imtcxr data",
        description="Generate phantom radiograph datasets (synthetic, not clinical data) and draw their ground truth.",
    )
    commands = parser.add_subparsers(dest="command")

    phantom = commands.add_parser("phantom", help="write N phantom radiographs and DIR/manifest.jsonl")
    phantom.add_argument("--n", type=_positive_int, required=True, help="number of images")
    phantom.add_argument(
        "--seed", type=_non_negative_int, default=0, help="seed of the first image (default 0)"
    )
    phantom.add_argument("--size", type=_image_size, default=512, help="image side in pixels (default 512)")
    phantom.add_argument("--out", type=Path, required=True, help="output directory")
    phantom.add_argument("--overwrite", action="store_true", help="replace an existing manifest")
    phantom.add_argument("--workers", type=_positive_int, default=1, help="processes (default 1)")
    phantom.add_argument(
        "--p-normal", type=float, default=PhantomConfig.p_normal, help="share of normal studies"
    )
    phantom.add_argument(
        "--finding-weights",
        type=_finding_weights,
        default=None,
        metavar="LABEL=W,...",
        help="relative frequency of each finding label (labels left out are never drawn; default: all)",
    )
    phantom.add_argument(
        "--max-shift",
        type=float,
        default=PhantomConfig.max_shift,
        help="positioning: shift by up to this many image sides per axis (default 0)",
    )
    phantom.add_argument(
        "--min-zoom",
        type=float,
        default=PhantomConfig.min_zoom,
        help="positioning: zoom out by a factor in [MIN_ZOOM, 1] (default 1: none)",
    )

    sheet = commands.add_parser(
        "phantom-sheet", help="draw phantoms with their ground truth on a contact sheet"
    )
    sheet.add_argument("--out", type=Path, required=True, help="PNG file to write")
    sheet.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the first tile (default 0)")
    sheet.add_argument("--size", type=_image_size, default=256, help="tile side in pixels (default 256)")
    sheet.add_argument("--columns", type=_positive_int, default=4, help="tiles per row (default 4)")
    sheet.add_argument(
        "--random", type=_positive_int, metavar="N", help="N sampled studies instead of one per finding"
    )
    try:
        from imtcxr_jax.data.tfds.cli import add_parser as add_build_parser
    except ModuleNotFoundError as error:  # only `build` needs TFDS: phantoms work without it
        if (error.name or "").startswith("imtcxr_jax"):
            raise
        unavailable = commands.add_parser("build", help=f"build a real dataset (needs {error.name})")
        unavailable.add_argument("arguments", nargs=argparse.REMAINDER)
        unavailable.set_defaults(
            build_unavailable=f"imtcxr data build: needs the package {error.name!r}, which is not installed "
            "(pip install -r requirements.txt)"
        )
    else:
        add_build_parser(commands)  # build NAME --manual-dir DIR --out DIR: real datasets (data/tfds)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _finding_weights(text: str) -> tuple[tuple[str, float], ...]:
    """'cardiomegaly=1,pleural effusion=0.5' -> (("cardiomegaly", 1.0), ("pleural effusion", 0.5))."""
    pairs = []
    for item in text.split(","):
        label, equals, weight = item.partition("=")
        try:
            pairs.append((label.strip(), float(weight)))
        except ValueError:
            equals = ""
        if not equals:
            raise argparse.ArgumentTypeError(f"expected LABEL=WEIGHT, got {item!r}")
    return tuple(pairs)


def _image_size(text: str) -> int:
    value = int(text)
    if not MIN_SIZE <= value <= MAX_SIZE:
        raise argparse.ArgumentTypeError(
            f"expected a size in pixels from {MIN_SIZE} to {MAX_SIZE}, got {text!r}"
        )
    return value


# ------------------------------------------------------------------------------------------------------------
# imtcxr data phantom


def _phantom_command(args: argparse.Namespace) -> int:
    out: Path = args.out
    manifest = out / MANIFEST
    if manifest.exists() and manifest.stat().st_size > 0 and not args.overwrite:
        print(
            f"imtcxr data phantom: {manifest} already exists and is not empty; pass --overwrite to replace it "
            "or choose another --out",
            file=sys.stderr,
        )
        return 1
    try:
        config = PhantomConfig(
            p_normal=args.p_normal,
            max_shift=args.max_shift,
            min_zoom=args.min_zoom,
            finding_weights=args.finding_weights or PhantomConfig.finding_weights,
        )
    except ValueError as error:
        print(f"imtcxr data phantom: {error}", file=sys.stderr)
        return 2
    (out / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    jobs = [(seed, args.size, config, str(out)) for seed in range(args.seed, args.seed + args.n)]
    partial = out / (MANIFEST + ".partial")
    with open(partial, "w", encoding="utf-8") as file, tqdm(total=args.n, desc="phantoms", unit="img") as bar:
        for record in _records(jobs, args.workers):
            file.write(json.dumps(record) + "\n")
            bar.update()
    os.replace(partial, manifest)
    print(f"wrote {args.n} phantoms of {args.size} px and {manifest}")
    return 0


def _records(jobs: list[tuple[int, int, PhantomConfig, str]], workers: int):
    """Records in seed order, generated here or by a pool of processes."""
    if workers == 1:
        yield from map(_write_phantom, jobs)
        return
    with ProcessPoolExecutor(workers) as pool:
        yield from pool.map(_write_phantom, jobs, chunksize=8)


def _write_phantom(job: tuple[int, int, PhantomConfig, str]) -> dict:
    """Generate one phantom, write its PNG, return its manifest record."""
    seed, size, config, out = job
    phantom = generate_phantom(seed, size, config)
    relpath = f"{IMAGE_DIR}/{seed:08d}.png"
    Image.fromarray(phantom.image).save(Path(out) / relpath, compress_level=6)
    return phantom.to_record(relpath)


# ------------------------------------------------------------------------------------------------------------
# imtcxr data phantom-sheet


def _sheet_command(args: argparse.Namespace) -> int:
    if args.random:
        phantoms = [generate_phantom(args.seed + k, args.size) for k in range(args.random)]
    else:
        phantoms = [
            generate_phantom(
                args.seed + k, args.size, None if labels is None else PhantomConfig(findings=labels)
            )
            for k, labels in enumerate(SHOWCASE)
        ]
    sheet = contact_sheet(phantoms, args.columns)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    _palette_image(sheet).save(args.out, optimize=True)
    print(f"wrote {args.out} ({len(phantoms)} phantoms)")
    return 0


def _palette_image(image: Image.Image) -> Image.Image:
    """The sheet with a fixed palette: 86 greys and the drawing's colours. Radiograph noise makes PNGs of full
    greys large; a grey step of 3 levels is invisible under that noise and halves the file."""
    colours = [*((v, v, v) for v in range(0, 256, 3)), *_COLOURS.values(), _TEXT, _SUBTEXT]
    palette = Image.new("P", (1, 1))
    palette.putpalette([c for rgb in colours for c in rgb] + [0] * (768 - 3 * len(colours)))
    return image.quantize(palette=palette, dither=Image.Dither.NONE)


def contact_sheet(phantoms: Sequence[Phantom], columns: int = 4) -> Image.Image:
    """Tiles of `draw_ground_truth`, ``columns`` per row, each with its labels and CTR written below it."""
    tiles = [draw_ground_truth(phantom) for phantom in phantoms]
    side = max(tile.width for tile in tiles)
    font = _font(max(10, side // 22))
    caption = 2 * (font.size + 4) + 4
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (columns * side, rows * (side + caption)), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    for k, (phantom, tile) in enumerate(zip(phantoms, tiles, strict=True)):
        x, y = (k % columns) * side, (k // columns) * (side + caption)
        sheet.paste(tile, (x, y))
        labels = ", ".join(f"{f.label} ({f.severity})" for f in _unique_findings(phantom)) or "no finding"
        pcr = "" if phantom.pcr is None else f"  PCR {phantom.pcr:.2f}"
        draw.text((x + 4, y + side + 3), _fit(draw, labels, font, side - 8), fill=_TEXT, font=font)
        draw.text(
            (x + 4, y + side + 5 + font.size),
            f"CTR {phantom.ctr:.3f}{pcr}  seed {phantom.seed}",
            fill=_SUBTEXT,
            font=font,
        )
    return sheet


def draw_ground_truth(phantom: Phantom) -> Image.Image:
    """The phantom in colour with its ground truth: contours of the lungs, heart and pneumothorax, a box and a
    label per finding, and the heart's and thorax's widths the CTR is measured from (lines near the bottom)."""
    image = Image.fromarray(phantom.image).convert("RGB")
    draw = ImageDraw.Draw(image)
    size = phantom.size
    font = _font(max(9, size // 26))
    width = max(1, size // 256)
    for name, polygon in phantom.polygons.items():
        points = [tuple(point) for point in polygon.tolist()]
        draw.line([*points, points[0]], fill=_COLOURS[name], width=width)
    for finding in phantom.findings:
        if finding.box is None:
            continue
        x0, y0, x1, y1 = finding.box
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=_COLOURS["box"], width=width)
        draw.text((x0 + 2, max(0, y0 - font.size - 2)), finding.label, fill=_COLOURS["box"], font=font)
    ctr = geometry.cardiothoracic_ratio(
        phantom.masks["heart"], phantom.masks["left_lung"], phantom.masks["right_lung"]
    )
    if ctr.heart_span and ctr.thorax_span:
        y = int(0.93 * size)
        draw.line((ctr.thorax_span[0], y, ctr.thorax_span[1], y), fill=_COLOURS["ctr"], width=width)
        draw.line(
            (ctr.heart_span[0], y - 3 * width, ctr.heart_span[1], y - 3 * width),
            fill=_COLOURS["heart"],
            width=width,
        )
    return image


def _unique_findings(phantom: Phantom):
    """One finding per label (a bilateral finding is two entries in the ground truth)."""
    seen = {}
    for finding in phantom.findings:
        seen.setdefault(finding.label, finding)
    return list(seen.values())


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text`` cut with an ellipsis to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


if __name__ == "__main__":
    sys.exit(cli_main())
