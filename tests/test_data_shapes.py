import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

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

    def generate_while_other_finishes(out_dir, split, num_images, seed):
        real(out_dir, split, num_images, seed)
        other = shapes.shapes_dir(tmp_path, split, num_images, seed)
        real(other, split, num_images, seed)  # the other process wins the rename

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
