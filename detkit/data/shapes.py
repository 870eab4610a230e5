"""The embedded synthetic dataset: coloured shapes on varied backgrounds, written in COCO format.

`{format: shapes, split: train|test, num_images: N, seed: S}` in `data.train` / `data.test` makes
`ensure_shapes` generate the split once into the cache folder; the files are then read by
`COCODataset` like any COCO-format set, so training and evaluation take the same path as on COCO.

What an image holds (the default dataset a new user trains on, so it has to be a fair task):
- size: height and width each drawn from 200..320 px, so landscape and portrait images both occur;
- background: a solid colour, a linear gradient between two colours, or smooth value noise;
- 0 to 5 objects (about 8% of images have none) from 6 classes (`CLASS_NAMES`), each 20..100 px
  along its longer box side (log-uniform), rotated at random except circles;
- colours are drawn until the object stands out from what lies under it (background and earlier
  objects), so every object is visible;
- objects may overlap, drawn in order, but a placement is rejected if it would leave an earlier
  object less than 70% visible; the box is the full shape's extent, occluded parts included.

Variants (`variant: fine`, `textured`, `small`, or several joined by `+`, e.g. `fine+textured+small`)
stress what real sets stress and the plain set does not; they exist so that a training recipe can be chosen
on more than one kind of data (README "Recipe search"). Each changes one thing:
- fine: 10 classes that differ in inner detail, not in outline: a disc or a square, each plain or with a
  hole, a bar, a plus or two dots in a second colour (the mark turns with the object); category ids 1-5
  and 11-15, not contiguous, as in COCO;
- textured: clutter on the background (lines, arcs, specks that belong to no class), fine-grained texture
  on half the images, and Gaussian pixel noise over the whole image (objects included);
- small: objects 12..48 px along the longer side instead of 20..100, up to 8 per image.
The plain set (no variant) is unchanged by their existence: same images, same cache folder.

Everything is drawn from a `numpy.random.RandomState` seeded from (seed, split, image index), so the
same parameters give the same bytes on every machine with the same OpenCV/zlib, and image i does not
depend on how many images the split has.
"""

import hashlib
import json
import logging
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from detkit.errors import UserError

logger = logging.getLogger(__name__)

SPLITS = ("train", "test")
VARIANTS = ("fine", "textured", "small")  # see the module docstring; combined with "+"
DEFAULT_NUM_IMAGES = {"train": 2000, "test": 300}
DEFAULT_SEED = 0
VERSION = "shapes-v1"  # bump when the generator changes, so old caches are not reused

_MIN_SIDE, _MAX_SIDE = 200, 320  # image height and width range (inclusive)
_EMPTY_FRACTION = 0.08
_MIN_VISIBLE = 0.7  # an earlier object must keep at least this share of its pixels visible
_PLACEMENT_TRIES = 20
_COLOUR_TRIES = 30
_MIN_MEAN_CONTRAST = 100.0  # mean RGB distance between an object and what lies under it
_LOW_CONTRAST = 60.0  # RGB distance counted as "low contrast" for a pixel under the object
_MAX_LOW_FRACTION = 0.1  # at most this share of the pixels under an object may be low contrast
# zlib level 1 with run-length strategy: the fastest setting that still compresses these images ~10x.
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]


def _regular(n: int, radius: float = 1.0, start: float = -np.pi / 2, centre: tuple = (0.0, 0.0)) -> np.ndarray:
    angles = start + np.arange(n) * 2 * np.pi / n
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1) + np.asarray(centre)


def _star(points: int = 5, inner: float = 0.42) -> np.ndarray:
    radii = np.tile([1.0, inner], points)
    angles = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _cross(a: float = 0.33) -> np.ndarray:
    return np.array(
        [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)],
        dtype=np.float64,
    )


def _bar(half_length: float = 0.7, half_width: float = 0.17) -> np.ndarray:
    return np.array([(-half_length, -half_width), (half_length, -half_width), (half_length, half_width),
                     (-half_length, half_width)], dtype=np.float64)  # fmt: skip


_SQUARE = np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], dtype=np.float64)

# Inner marks of the fine classes, polygons in the outline's unit frame (drawn in a second colour).
_MARKS = {
    "hole": [_regular(32, 0.45)],
    "bar": [_bar()],
    "plus": [_bar(), _bar()[:, ::-1]],
    "dots": [_regular(16, 0.2, centre=(-0.45, 0.0)), _regular(16, 0.2, centre=(0.45, 0.0))],
}


@dataclass(frozen=True, eq=False)  # eq=False: compared by identity (numpy arrays have no single truth value)
class ShapeClass:
    """One class of the generator: its outline and, for the fine classes, the inner mark that tells it apart."""

    name: str
    category_id: int
    outline: np.ndarray  # (k, 2) unit polygon centred at 0
    rotates: bool
    mark: tuple[np.ndarray, ...] = ()  # polygons drawn inside in a second colour


_PLAIN_CLASSES = (
    ShapeClass("circle", 1, _regular(48), rotates=False),
    ShapeClass("square", 2, _SQUARE, rotates=True),
    ShapeClass("triangle", 3, _regular(3), rotates=True),
    ShapeClass("star", 4, _star(), rotates=True),
    ShapeClass("hexagon", 5, _regular(6), rotates=True),
    ShapeClass("cross", 6, _cross(), rotates=True),
)
CLASS_NAMES = [c.name for c in _PLAIN_CLASSES]  # the plain set's classes, category ids 1..6 in this order
_FINE_CLASSES = tuple(
    ShapeClass(outline_name + ("" if mark is None else "-" + mark), first_id + k, outline, rotates=True,
               mark=() if mark is None else tuple(_MARKS[mark]))  # fmt: skip
    for outline_name, first_id, outline in (("disc", 1, _regular(48)), ("square", 11, _SQUARE))
    for k, mark in enumerate([None, "hole", "bar", "plus", "dots"])
)


@dataclass(frozen=True)
class Style:
    """How one variant draws its images; Style() is the plain shapes set."""

    classes: tuple[ShapeClass, ...] = _PLAIN_CLASSES
    object_sides: tuple[float, float] = (20.0, 100.0)  # longer box side of an object, px (log-uniform)
    max_objects: int = 5
    textured: bool = False


def parse_variant(variant: str | None) -> tuple[str, ...]:
    """The variant names of `variant` ("fine+small" -> ("fine", "small")) in VARIANTS order; () for None/""."""
    if variant is None or variant == "":
        return ()
    names = variant.split("+")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or len(set(names)) != len(names):
        raise UserError(
            f"shapes variant {variant!r} is not valid: use one or more of {', '.join(VARIANTS)} joined by '+'"
            " (e.g. fine+textured), or leave it out for the plain set"
        )
    return tuple(n for n in VARIANTS if n in names)


def style_for(variant: str | None) -> Style:
    names = parse_variant(variant)
    return Style(
        classes=_FINE_CLASSES if "fine" in names else _PLAIN_CLASSES,
        object_sides=(12.0, 48.0) if "small" in names else (20.0, 100.0),
        max_objects=8 if "small" in names else 5,
        textured="textured" in names,
    )


def class_names(variant: str | None = None) -> list[str]:
    return [c.name for c in style_for(variant).classes]


def _background(rng: np.random.RandomState, h: int, w: int) -> np.ndarray:
    """(h, w, 3) uint8 RGB background: solid, linear gradient, or smooth value noise."""
    kind = rng.randint(3)
    c1 = rng.uniform(0, 255, 3)
    if kind == 0:
        return np.broadcast_to(np.round(c1).astype(np.uint8), (h, w, 3)).copy()
    c2 = rng.uniform(0, 255, 3)
    if kind == 1:
        theta = rng.uniform(0, 2 * np.pi)
        t = np.add.outer(
            np.arange(h, dtype=np.float32) * np.float32(np.sin(theta)),
            np.arange(w, dtype=np.float32) * np.float32(np.cos(theta)),
        )
    else:
        # Two octaves of bicubically upsampled random grids: smooth blotches at two scales.
        gh, gw = rng.randint(3, 8, size=2)
        coarse = rng.uniform(0, 1, (gh, gw)).astype(np.float32)
        fine = rng.uniform(0, 1, (3 * gh, 3 * gw)).astype(np.float32)
        t = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
        t += 0.35 * cv2.resize(fine, (w, h), interpolation=cv2.INTER_CUBIC)
    lo, hi = float(t.min()), float(t.max())
    t = (t - lo) / max(hi - lo, 1e-6)  # 0..1
    # c1 + t * (c2 - c1) per channel, rounded and saturated to uint8 by OpenCV (lies in [c1, c2], so >= 0).
    return cv2.merge([cv2.convertScaleAbs(t, alpha=float(b - a), beta=float(a)) for a, b in zip(c1, c2)])


def _add_texture_and_clutter(rng: np.random.RandomState, canvas: np.ndarray) -> None:
    """In place: on half the images a fine random texture (cells of 2-5 px, +-20..45 grey levels), then
    4..12 strokes that belong to no class (lines, elliptic arcs, specks) in random colours."""
    h, w = canvas.shape[:2]
    if rng.uniform() < 0.5:
        cell = rng.randint(2, 6)
        grid = rng.uniform(-1, 1, (h // cell + 1, w // cell + 1)).astype(np.float32)
        texture = cv2.resize(grid, (grid.shape[1] * cell, grid.shape[0] * cell), interpolation=cv2.INTER_NEAREST)
        texture = texture[:h, :w, None] * np.float32(rng.uniform(20, 45))
        canvas[:] = np.clip(canvas + texture, 0, 255).astype(np.uint8)
    for _ in range(rng.randint(4, 13)):
        colour = tuple(float(v) for v in rng.uniform(0, 255, 3))
        kind = rng.randint(3)
        if kind == 0:
            p, q = rng.uniform(0, [w, h]), rng.uniform(0, [w, h])
            cv2.line(canvas, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), colour, int(rng.randint(1, 4)), cv2.LINE_AA)
        elif kind == 1:
            centre = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
            axes = (int(rng.uniform(5, 40)), int(rng.uniform(5, 40)))
            angle, start = rng.uniform(0, 360), rng.uniform(0, 360)
            sweep = rng.uniform(60, 300)
            cv2.ellipse(canvas, centre, axes, angle, start, start + sweep, colour, int(rng.randint(1, 3)), cv2.LINE_AA)
        else:
            centre = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
            cv2.circle(canvas, centre, int(rng.randint(1, 4)), colour, -1, cv2.LINE_AA)


def _add_noise(rng: np.random.RandomState, canvas: np.ndarray) -> np.ndarray:
    """The image with Gaussian pixel noise of a standard deviation drawn from 5..15 grey levels."""
    noise = rng.normal(0, rng.uniform(5, 15), canvas.shape).astype(np.float32)
    return np.clip(canvas + noise, 0, 255).astype(np.uint8)


def _pick_colour(rng: np.random.RandomState, under: np.ndarray) -> np.ndarray:
    """An RGB colour that contrasts with `under` (n, 3), the pixels the object will cover."""
    best, best_score = None, -1.0
    for _ in range(_COLOUR_TRIES):
        colour = rng.uniform(0, 255, 3).astype(np.float32)
        dist = np.sqrt(((under - colour) ** 2).sum(axis=1))
        mean, low = float(dist.mean()), float((dist < _LOW_CONTRAST).mean())
        if mean >= _MIN_MEAN_CONTRAST and low <= _MAX_LOW_FRACTION:
            return colour
        if mean * (1 - low) > best_score:
            best, best_score = colour, mean * (1 - low)
    return best


def _fill(polys: list[np.ndarray], origin: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """(h, w) bool mask of the polygons (continuous pixel coordinates) in the window at `origin` (x0, y0)."""
    mask = np.zeros(shape, dtype=np.uint8)
    # OpenCV puts pixel centres at integer coordinates: shift by -0.5, 4 fractional bits.
    fixed = [np.round((poly - [origin[0] + 0.5, origin[1] + 0.5]) * 16).astype(np.int32) for poly in polys]
    cv2.fillPoly(mask, fixed, 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def _render_image(rng: np.random.RandomState, style: Style = Style()) -> tuple[np.ndarray, list[dict]]:  # long: one drawing loop
    """One image (h, w, 3) uint8 RGB and its objects: dicts with class index `cls`, xyxy `box`, pixel
    `area` of the whole shape, `poly` (continuous coordinates) and the `visible` share of its pixels.

    The plain style makes exactly the random draws it always made, so the plain set stays the same;
    the variants' extra draws come after the plain ones they follow."""
    h, w = (int(v) for v in rng.randint(_MIN_SIDE, _MAX_SIDE + 1, size=2))
    canvas = _background(rng, h, w)
    if style.textured:
        _add_texture_and_clutter(rng, canvas)
    owner = np.full((h, w), -1, dtype=np.int16)  # index of the object visible at each pixel; -1 background
    num = 0 if rng.uniform() < _EMPTY_FRACTION else rng.randint(1, style.max_objects + 1)
    objects: list[dict] = []
    visible: list[int] = []  # visible pixel count of each placed object
    lo_side, hi_side = style.object_sides
    for _ in range(num):
        cls = rng.randint(len(style.classes))
        shape_class = style.classes[cls]
        size = float(np.exp(rng.uniform(np.log(lo_side), np.log(hi_side))))
        theta = rng.uniform(0, 2 * np.pi) if shape_class.rotates else 0.0
        rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        pts = shape_class.outline @ rot.T
        scale = size / (pts.max(axis=0) - pts.min(axis=0)).max()
        pts = pts * scale
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        for _ in range(_PLACEMENT_TRIES):
            # Centre such that the whole shape lies inside the image.
            centre = np.array([rng.uniform(-lo[0], w - hi[0]), rng.uniform(-lo[1], h - hi[1])])
            poly = pts + centre  # continuous pixel coordinates
            x0, y0 = (int(v) for v in np.floor(poly.min(axis=0)))
            x1, y1 = (int(v) for v in np.ceil(poly.max(axis=0)))
            x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
            mask = _fill([poly], (x0, y0), (y1 - y0, x1 - x0))
            area = int(mask.sum())
            if area == 0:
                continue
            region = owner[y0:y1, x0:x1]
            covered = np.bincount(region[mask] + 1, minlength=len(objects) + 1)[1:]
            if any(visible[j] - covered[j] < _MIN_VISIBLE * objects[j]["area"] for j in range(len(objects))):
                continue
            colour = _pick_colour(rng, canvas[y0:y1, x0:x1][mask].astype(np.float32))
            canvas[y0:y1, x0:x1][mask] = np.round(colour).astype(np.uint8)
            if shape_class.mark:
                mark_colour = _pick_colour(rng, colour[None])
                marks = [(m @ rot.T) * scale + centre for m in shape_class.mark]
                canvas[y0:y1, x0:x1][_fill(marks, (x0, y0), mask.shape) & mask] = np.round(mark_colour).astype(np.uint8)
            region[mask] = len(objects)
            for j in range(len(objects)):
                visible[j] -= int(covered[j])
            cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
            box = [x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1]
            objects.append({"cls": int(cls), "box": [float(v) for v in box], "area": area, "poly": poly})
            visible.append(area)
            break
    for obj, vis in zip(objects, visible):
        obj["visible"] = vis / obj["area"]
    if style.textured:
        canvas = _add_noise(rng, canvas)
    return canvas, objects


def _split_code(split: str) -> int:
    return SPLITS.index(split) + 1


def generate_shapes(out_dir: Path, split: str, num_images: int, seed: int, variant: str | None = None) -> None:
    """Write `num_images` PNGs to `out_dir/images/` and `out_dir/annotations.json` (COCO instances)."""
    style = style_for(variant)
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)

    def make(i: int) -> tuple[str, tuple[int, int], list[dict]]:
        image, objects = _render_image(np.random.RandomState([seed, _split_code(split), i]), style)
        file_name = f"{i + 1:06d}.png"
        if not cv2.imwrite(str(image_dir / file_name), image[:, :, ::-1], _PNG_PARAMS):
            raise OSError(f"could not write {image_dir / file_name}")
        return file_name, image.shape[:2], objects

    images, annotations = [], []
    # Each image has its own RNG, so threads (OpenCV and numpy release the GIL) do not change the output.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        results = list(pool.map(make, range(num_images)))
    for i, (file_name, (height, width), objects) in enumerate(results):
        image_id = i + 1
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for obj in objects:
            x0, y0, x1, y1 = obj["box"]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": style.classes[obj["cls"]].category_id,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": float(obj["area"]),
                    "iscrowd": 0,
                    "segmentation": [[round(float(v), 2) for v in obj["poly"].reshape(-1)]],
                }
            )
    names = "+".join(parse_variant(variant))
    named = f", variant {names}" if names else ""
    data = {
        "info": {"description": f"detkit synthetic shapes ({VERSION}), split {split}, seed {seed}{named}"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c.category_id, "name": c.name, "supercategory": "shape"} for c in style.classes],
    }
    (out_dir / "annotations.json").write_text(json.dumps(data, separators=(",", ":")))


def shapes_dir(root: Path, split: str, num_images: int, seed: int, variant: str | None = None) -> Path:
    """The cache folder of one split: `root/shapes-v1-<hash of (num_images, seed)>/<split>` for the plain
    set (as before variants existed), `root/shapes-v1-<variant>-<hash of (num_images, seed, variant)>/<split>`
    for a variant."""
    names = "+".join(parse_variant(variant))
    fields = {"version": VERSION, "num_images": num_images, "seed": seed}
    if names:
        fields["variant"] = names
    digest = hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]
    return Path(root) / (f"{VERSION}-{names}-{digest}" if names else f"{VERSION}-{digest}") / split


def ensure_shapes(
    root: Path, split: str, num_images: int | None = None, seed: int | None = None, variant: str | None = None
) -> tuple[Path, Path]:
    """Generate the split under `root` unless it is already there; return (image_dir, json_path).

    `num_images` and `seed` default to DEFAULT_NUM_IMAGES[split] and DEFAULT_SEED. Generation goes
    into a temporary folder beside the final one and is renamed into place when complete, so an
    interrupted run never leaves a partial split; concurrent runs each generate and the first
    rename wins (the others discard their copy, which is identical).
    """
    if split not in SPLITS:
        raise UserError(f"shapes split must be one of {', '.join(SPLITS)}, got {split!r}")
    num_images = DEFAULT_NUM_IMAGES[split] if num_images is None else int(num_images)
    seed = DEFAULT_SEED if seed is None else int(seed)
    if num_images < 1 or not 0 <= seed < 2**32:
        raise UserError(f"shapes: num_images must be >= 1 and seed in [0, 2**32), got {num_images} and {seed}")
    parse_variant(variant)  # a bad name fails here, before anything is written
    final = shapes_dir(root, split, num_images, seed, variant)
    image_dir, json_path = final / "images", final / "annotations.json"
    if json_path.is_file():
        return image_dir, json_path
    if final.exists():
        raise UserError(f"shapes cache folder {final} is incomplete (no annotations.json); delete it and rerun")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{split}-partial-", dir=final.parent))
    except OSError as e:
        raise UserError(f"cannot create the shapes cache under {root}: {e}; set data.cache_dir or DETKIT_CACHE") from None
    logger.info("generating the shapes %s split (%d images, seed %d) into %s", split, num_images, seed, final)
    try:
        generate_shapes(tmp, split, num_images, seed, variant)
        try:
            os.rename(tmp, final)
        except OSError:
            if not json_path.is_file():  # not a concurrent run that finished first
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return image_dir, json_path
