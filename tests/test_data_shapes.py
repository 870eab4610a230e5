import hashlib
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from matplotlib.path import Path as MplPath

from detkit.config import load_config
from detkit.data import shapes
from detkit.data.build import build_dataset, build_datasets, cache_dir
from detkit.data.coco import COCODataset
from detkit.errors import UserError


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_complete_and_cached(tmp_path):
    img1, json1 = shapes.ensure_shapes(tmp_path / "a", "train", 40, 3)
    img2, json2 = shapes.ensure_shapes(tmp_path / "b", "train", 40, 3)
    assert _files(json1.parent) == _files(json2.parent)
    assert len(list(img1.glob("*.png"))) == 40
    # no temporary folders left beside the split
    assert [p.name for p in json1.parent.parent.iterdir()] == ["train"]
    # second call reuses the cache
    mtime = json1.stat().st_mtime_ns
    assert shapes.ensure_shapes(tmp_path / "a", "train", 40, 3) == (img1, json1)
    assert json1.stat().st_mtime_ns == mtime

    data = json.loads(json1.read_text())
    assert [c["name"] for c in data["categories"]] == shapes.CLASS_NAMES
    assert {a["category_id"] for a in data["annotations"]} == set(range(1, 7))
    annotated = {a["image_id"] for a in data["annotations"]}
    assert len(annotated) < 40  # some images are empty
    for im in data["images"]:
        assert 200 <= im["height"] <= 320 and 200 <= im["width"] <= 320
        assert cv2.imread(str(img1 / im["file_name"])).shape == (im["height"], im["width"], 3)
    sides = np.array([a["bbox"][2:] for a in data["annotations"]])
    assert sides.max(axis=1).min() >= 19 and sides.max() <= 102


def test_splits_and_seeds_differ(tmp_path):
    _, train = shapes.ensure_shapes(tmp_path, "train", 5, 0)
    _, test = shapes.ensure_shapes(tmp_path, "test", 5, 0)
    _, other = shapes.ensure_shapes(tmp_path, "train", 5, 1)
    assert len({train.read_bytes(), test.read_bytes(), other.read_bytes()}) == 3


def test_boxes_cover_the_drawn_shape(tmp_path):
    # On a solid background the object pixels are exactly those that differ from the corner colour.
    for i in range(60):
        image, objects = shapes._render_image(np.random.RandomState([0, 1, i]))
        if len(objects) != 1 or len(np.unique(image.reshape(-1, 3), axis=0)) != 2:
            continue
        ys, xs = np.nonzero((image != image[0, 0]).any(axis=2))
        assert objects[0]["box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        return
    pytest.skip("no single-object solid-background image among the first 60")


def test_occlusion_is_bounded_and_empty_images_occur():
    counts, visible = [], []
    for i in range(100):
        _, objects = shapes._render_image(np.random.RandomState([0, 1, i]))
        counts.append(len(objects))
        visible += [o["visible"] for o in objects]
    assert min(visible) >= 0.7 and min(visible) < 0.95  # overlaps happen, but never hide more than 30%
    assert 2 <= counts.count(0) <= 20 and max(counts) == 5


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(shapes, "generate_shapes", boom)
    with pytest.raises(KeyboardInterrupt):
        shapes.ensure_shapes(tmp_path, "test", 3, 0)
    assert [p for p in tmp_path.rglob("*") if p.is_file() or p.name.startswith(".")] == []


def test_concurrent_winner_is_kept(tmp_path, monkeypatch):
    """A run that finds the split already renamed into place by another process keeps that copy."""
    real = shapes.generate_shapes

    def generate_while_other_finishes(out_dir, split, num_images, seed, variant):
        real(out_dir, split, num_images, seed, variant)
        other = shapes.shapes_dir(tmp_path, split, num_images, seed, variant)
        real(other, split, num_images, seed, variant)  # the other process wins the rename

    monkeypatch.setattr(shapes, "generate_shapes", generate_while_other_finishes)
    image_dir, json_path = shapes.ensure_shapes(tmp_path, "test", 3, 0)
    assert json_path.is_file() and len(list(image_dir.iterdir())) == 3
    assert [p.name for p in json_path.parent.parent.iterdir()] == ["test"]


def test_build_shapes_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("DETKIT_CACHE", str(tmp_path / "env"))
    cfg = load_config(None, ["input.min_size_train=[100]", "input.max_size_train=160"])
    assert cache_dir(cfg) == tmp_path / "env"
    ds = build_dataset({"format": "shapes", "split": "train", "num_images": 6}, cfg=cfg, is_train=True)
    assert isinstance(ds, COCODataset) and ds.class_names == shapes.CLASS_NAMES
    image, target = ds[0]
    assert min(image.shape[1:]) == 100 or max(image.shape[1:]) == 160
    assert os.listdir(tmp_path / "env")

    cfg = load_config(None, [f"data.cache_dir={tmp_path / 'cfg'}"])
    test = build_dataset({"format": "shapes", "split": "test", "num_images": 4}, cfg=cfg, is_train=False)
    image, target = test[0]
    assert tuple(image.shape[1:]) == test.image_sizes[0]  # no resize for test sets
    assert (tmp_path / "cfg").is_dir()


def test_build_spec_errors(tmp_path):
    cfg = load_config(None, [f"data.cache_dir={tmp_path}"])
    with pytest.raises(UserError, match=r"data.train\[0\].*allowed formats: coco, voc, shapes"):
        build_datasets([{"format": "yolo"}], cfg=cfg, is_train=True)
    with pytest.raises(UserError, match=r"data.test\[1\].*missing key annotations"):
        build_datasets([{"format": "shapes", "split": "test", "num_images": 2}, {"format": "coco", "images": "x"}],
                       cfg=cfg, is_train=False)
    with pytest.raises(UserError, match=r"unknown key colour"):
        build_dataset({"format": "shapes", "split": "test", "colour": 1}, cfg=cfg, is_train=False)
    with pytest.raises(UserError, match=r"split must be one of train, test"):
        build_dataset({"format": "shapes", "split": "val"}, cfg=cfg, is_train=False)
    with pytest.raises(UserError, match=r"num_images must be int"):
        build_dataset({"format": "shapes", "split": "test", "num_images": "many"}, cfg=cfg, is_train=False)
    with pytest.raises(UserError, match=r"data.train is empty"):
        build_datasets([], cfg=cfg, is_train=True)
    with pytest.raises(UserError, match=r"data.train\[0\] \(coco\): COCO annotation file not found"):
        spec = {"format": "coco", "images": str(tmp_path), "annotations": "missing.json"}
        build_datasets([spec], cfg=cfg, is_train=True)


def test_build_datasets_concat(tmp_path):
    cfg = load_config(None, [f"data.cache_dir={tmp_path}"])
    specs = [
        {"format": "shapes", "split": "test", "num_images": 3},
        {"format": "shapes", "split": "train", "num_images": 2},
    ]
    ds = build_datasets(specs, cfg=cfg, is_train=False)
    assert len(ds) == 5 and ds.class_names == shapes.CLASS_NAMES and ds.category_ids == [1, 2, 3, 4, 5, 6]
    assert ds.image_sizes == ds.datasets[0].image_sizes + ds.datasets[1].image_sizes
    assert ds.locate(3) == (1, 0) and ds.locate(2) == (0, 2)
    assert ds[3][1]["image_id"] == ds.datasets[1].image_ids[0]

    other = tmp_path / "other.json"
    other.write_text(json.dumps({"images": [], "categories": [{"id": 1, "name": "dog"}], "annotations": []}))
    specs.append({"format": "coco", "images": str(tmp_path), "annotations": str(other)})
    with pytest.raises(UserError, match=r"data.test\[2\] has classes \[dog\]"):
        build_datasets(specs, cfg=cfg, is_train=False)


# ---------------------------------------------------------------------------------------------
# Variants (fine, textured, small): new options of the same format; the plain set stays as it was.


def test_plain_set_is_unchanged_by_the_variants(tmp_path):
    # Fingerprint of the plain set taken before the variants were added (annotations are plain numbers:
    # boxes and areas from OpenCV's integer rasteriser, polygons rounded to 0.01 px).
    _, json_path = shapes.ensure_shapes(tmp_path, "train", 30, 0)
    digest = hashlib.sha256(json_path.read_bytes()).hexdigest()
    assert digest == "57882082f87059d9898971dffa885a02e48e80133ce127b014cd8c8527e0ef54"
    # the default split's cache folder keeps its name, so existing caches are reused
    assert shapes.shapes_dir(tmp_path, "train", 2000, 0).parent.name == "shapes-v1-40f7f82f6e"
    assert shapes.shapes_dir(tmp_path, "train", 2000, 0, "").parent.name == "shapes-v1-40f7f82f6e"


def test_variant_names_parse_and_name_the_cache(tmp_path):
    assert shapes.parse_variant("small+fine") == ("fine", "small")
    assert shapes.parse_variant(None) == () and shapes.parse_variant("") == ()
    a = shapes.shapes_dir(tmp_path, "test", 5, 0, "small+fine")
    assert a == shapes.shapes_dir(tmp_path, "test", 5, 0, "fine+small") and a.parent.name.startswith("shapes-v1-fine+small-")
    folders = {shapes.shapes_dir(tmp_path, "test", 5, 0, v) for v in (None, "fine", "textured", "small", "fine+small")}
    assert len(folders) == 5
    for bad in ("fancy", "fine+fine", "fine+", "Fine"):
        with pytest.raises(UserError, match=r"shapes variant .* one or more of fine, textured, small"):
            shapes.parse_variant(bad)


def _covered_share(marks: tuple, outline: np.ndarray) -> float:
    """Share of the outline's area covered by the union of the mark polygons, by matplotlib's point-in-polygon
    test on a fine grid (independent of OpenCV's rasteriser that draws them)."""
    grid = np.stack(np.meshgrid(np.linspace(-1, 1, 301), np.linspace(-1, 1, 301)), axis=-1).reshape(-1, 2)
    inside = MplPath(outline).contains_points(grid)
    marked = np.zeros(len(grid), dtype=bool)
    for mark in marks:
        marked |= MplPath(mark).contains_points(grid)
    return float((marked & inside).sum() / inside.sum())


def test_fine_classes_differ_by_their_inner_mark(tmp_path):
    fine = shapes.style_for("fine")
    assert [c.name for c in fine.classes] == [
        "disc", "disc-hole", "disc-bar", "disc-plus", "disc-dots",
        "square", "square-hole", "square-bar", "square-plus", "square-dots",
    ]  # fmt: skip
    assert [c.category_id for c in fine.classes] == [1, 2, 3, 4, 5, 11, 12, 13, 14, 15]
    checked = 0
    for shape_class in fine.classes:
        # One class at a time; on a single-object image with a solid background the colours are exactly
        # background, body and (for a marked class) mark, and the mark covers its share of the body.
        style = shapes.Style(classes=(shape_class,), object_sides=(60.0, 100.0), max_objects=1)
        for i in range(40):
            image, objects = shapes._render_image(np.random.RandomState([5, 1, i]), style)
            packed = image.astype(np.int32) @ np.array([1 << 16, 1 << 8, 1], dtype=np.int32)  # one int per colour
            colours, counts = np.unique(packed, return_counts=True)
            if len(objects) != 1 or (image[0, 0] != image[-1, -1]).any() or (image[0, 0] != image[0, -1]).any():
                continue
            if len(colours) > 3:  # gradient or noise background
                continue
            assert len(colours) == (3 if shape_class.mark else 2), shape_class.name
            if shape_class.mark:
                mark_share = _covered_share(shape_class.mark, shape_class.outline)
                mark_pixels = counts.min()  # the mark is the smallest of the three colours
                assert mark_pixels / objects[0]["area"] == pytest.approx(mark_share, rel=0.12), shape_class.name
            checked += 1
            break
    assert checked == 10

    _, json_path = shapes.ensure_shapes(tmp_path, "train", 40, 0, "fine")
    data = json.loads(json_path.read_text())
    assert [c["id"] for c in data["categories"]] == [1, 2, 3, 4, 5, 11, 12, 13, 14, 15]
    assert {a["category_id"] for a in data["annotations"]} == {1, 2, 3, 4, 5, 11, 12, 13, 14, 15}
    assert "variant fine" in data["info"]["description"]


def test_textured_images_are_noisy_and_small_objects_are_small():
    plain, textured, small = shapes.Style(), shapes.style_for("textured"), shapes.style_for("small")
    sides, counts = [], []
    for i in range(40):
        rng_args = [0, 1, i]
        image, _ = shapes._render_image(np.random.RandomState(rng_args), textured)
        # neighbouring pixels differ everywhere (noise), by far more than on any plain image
        assert np.abs(np.diff(image.astype(np.int16), axis=1)).mean() > 4.0
        image, _ = shapes._render_image(np.random.RandomState(rng_args), plain)
        assert np.abs(np.diff(image.astype(np.int16), axis=1)).mean() < 3.0
        _, objects = shapes._render_image(np.random.RandomState(rng_args), small)
        sides += [max(o["box"][2] - o["box"][0], o["box"][3] - o["box"][1]) for o in objects]
        counts.append(len(objects))
    assert 11 <= min(sides) and max(sides) <= 50 and np.median(sides) < 30
    assert max(counts) > 5  # up to 8 objects per image


def test_variant_in_config_is_checked_at_load(tmp_path):
    with pytest.raises(UserError, match=r"data.train.*shapes variant 'tiny' is not valid"):
        load_config(None, ["data.train=[{format: shapes, split: train, variant: tiny}]"])
    with pytest.raises(UserError, match=r"data.test.*key variant must be str"):
        load_config(None, ["data.test=[{format: shapes, split: test, variant: 3}]"])
    spec = "{format: shapes, split: test, variant: fine, num_images: 4}"
    cfg = load_config(None, [f"data.cache_dir={tmp_path}", f"data.test=[{spec}]"])
    ds = build_datasets(cfg.data.test, cfg=cfg, is_train=False)
    assert ds.class_names == shapes.class_names("fine") and ds.category_ids == [1, 2, 3, 4, 5, 11, 12, 13, 14, 15]
    assert len(ds) == 4
