"""Shared fixtures: a tiny COCO-format dataset and a tiny training config, written into tmp folders."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

TINY_MODEL = {
    "backbone": {"depth": 18, "weights": None, "norm": "bn", "freeze_at": 0, "width": 32},
    "rpn": {
        "anchor_sizes": [16, 32],
        "batch_size_per_image": 32,
        "pre_nms_topk_train": 200,
        "post_nms_topk_train": 50,
        "pre_nms_topk_test": 100,
        "post_nms_topk_test": 20,
    },
    "roi_heads": {"head": "fc", "pooler": "roi_align", "pooler_resolution": 4, "fc_dim": 32, "batch_size_per_image": 16},
}


def write_tiny_coco(root: Path, num_images: int = 3, category_ids=(3, 7, 90)) -> tuple[Path, Path]:
    """Images with one or two coloured rectangles; non-contiguous category ids; the last image is empty."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    images, annotations = [], []
    for i in range(num_images):
        h, w = 64 + 8 * i, 80
        img = np.full((h, w, 3), 40, np.uint8)
        if i < num_images - 1:
            x, y = 8 + 4 * i, 10
            img[y : y + 30, x : x + 24] = (0, 0, 255)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": category_ids[i % len(category_ids)],
                                "bbox": [x, y, 24, 30], "area": 720, "iscrowd": 0})
        img = (img + rng.randint(0, 10, img.shape)).astype(np.uint8)
        name = f"{i:03d}.png"
        cv2.imwrite(str(images_dir / name), img)
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
    categories = [{"id": c, "name": f"cat{c}"} for c in category_ids]
    ann_path = root / "annotations.json"
    ann_path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return images_dir, ann_path


def write_config(path: Path, data_root: Path, **solver) -> Path:
    import yaml

    images, ann = write_tiny_coco(data_root)
    dataset = {"format": "coco", "images": str(images), "annotations": str(ann)}
    cfg = {
        "model": TINY_MODEL,
        "input": {"min_size_train": [64], "max_size_train": 100, "min_size_test": 64, "max_size_test": 100},
        "data": {"train": [dataset], "test": [dataset]},
        "dataloader": {"num_workers": 0},
        "solver": {"ims_per_batch": 2, "base_lr": 0.01, "max_iter": 4, "warmup_iters": 2, "checkpoint_period": 2,
                   "log_period": 1, **solver},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def tiny_config(tmp_path) -> Path:
    return write_config(tmp_path / "tiny.yaml", tmp_path / "data")
