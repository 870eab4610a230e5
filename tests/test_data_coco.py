import json
import warnings

import cv2
import numpy as np
import pytest
import torch

from detkit.data.coco import COCODataset
from detkit.data.loader import collate
from detkit.errors import UserError


def _write_images(image_dir, sizes):
    image_dir.mkdir(parents=True, exist_ok=True)
    for name, (h, w) in sizes.items():
        cv2.imwrite(str(image_dir / name), np.full((h, w, 3), 128, np.uint8))


def _tiny_coco(tmp_path):
    """3 images (one without annotations), categories 3/7/90, one crowd box, one box outside, one degenerate."""
    sizes = {"a.png": (40, 60), "b.png": (50, 30), "c.png": (20, 20)}
    _write_images(tmp_path / "img", sizes)
    data = {
        "images": [
            {"id": 10, "file_name": "a.png", "height": 40, "width": 60},
            {"id": 2, "file_name": "b.png", "height": 50, "width": 30},
            {"id": 5, "file_name": "c.png", "height": 20, "width": 20},
        ],
        "categories": [{"id": 90, "name": "zebra"}, {"id": 3, "name": "car"}, {"id": 7, "name": "train"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 3, "bbox": [5, 6, 10, 12], "area": 120, "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 90, "bbox": [50, 30, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 3, "image_id": 10, "category_id": 7, "bbox": [0, 0, 60, 40], "area": 2400, "iscrowd": 1},
            {"id": 4, "image_id": 2, "category_id": 7, "bbox": [1, 1, 0.5, 10], "area": 5, "iscrowd": 0},
            {"id": 5, "image_id": 2, "category_id": 90, "bbox": [-5, 40, 15, 20], "area": 300, "iscrowd": 0},
            {"id": 6, "image_id": 2, "category_id": 3, "bbox": [40, 10, 5, 5], "area": 25, "iscrowd": 0},
        ],
    }
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    return tmp_path / "img", ann


def test_labels_crowd_empty_and_clipping(tmp_path):
    img, ann = _tiny_coco(tmp_path)
    ds = COCODataset(images=str(img), annotations=str(ann))
    assert ds.category_ids == [3, 7, 90]
    assert ds.class_names == ["car", "train", "zebra"]
    assert ds.image_ids == [2, 5, 10]
    assert ds.image_sizes == [(50, 30), (20, 20), (40, 60)]
    assert ds.has_annotations
    assert len(ds.coco.getAnnIds(iscrowd=None)) == 6  # the evaluator still sees the crowd box

    image, target = ds[2]  # id 10: crowd dropped, second box clipped to the 60x40 image
    assert image.dtype == torch.uint8 and image.shape == (3, 40, 60)
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert torch.equal(target["boxes"], torch.tensor([[5.0, 6.0, 15.0, 18.0], [50.0, 30.0, 60.0, 40.0]]))
    assert target["labels"].tolist() == [0, 2]
    assert target["image_id"] == 10 and target["orig_size"] == (40, 60)
    assert target["file_name"].endswith("a.png")

    _, target = ds[0]  # id 2: 0.5 px wide dropped, box clipped on two sides kept, box right of the image dropped
    assert target["boxes"].tolist() == [[0.0, 40.0, 10.0, 50.0]]
    assert target["labels"].tolist() == [2]

    _, target = ds[1]  # id 5: no annotations
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert ds.box_stats == {"total": 6, "crowd": 1, "clipped": 2, "degenerate": 2, "kept": 3}


def test_targets_are_copies(tmp_path):
    img, ann = _tiny_coco(tmp_path)
    ds = COCODataset(images=str(img), annotations=str(ann))
    ds[2][1]["boxes"].zero_()
    assert ds[2][1]["boxes"][0, 2] == 15.0


def test_filter_empty(tmp_path):
    img, ann = _tiny_coco(tmp_path)
    ds = COCODataset(images=str(img), annotations=str(ann), filter_empty=True)
    assert ds.image_ids == [2, 10]
    assert ds.image_sizes == [(50, 30), (40, 60)]


def test_missing_and_invalid_files(tmp_path):
    img, ann = _tiny_coco(tmp_path)
    with pytest.raises(UserError, match="nope.json"):
        COCODataset(images=str(img), annotations=str(tmp_path / "nope.json"))
    with pytest.raises(UserError, match="no_images"):
        COCODataset(images=str(tmp_path / "no_images"), annotations=str(ann))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="bad.json"):
        COCODataset(images=str(img), annotations=str(bad))


def test_image_info_json_without_annotations(tmp_path):
    _write_images(tmp_path / "img", {"x.png": (30, 40)})
    info = tmp_path / "image_info_test-dev.json"
    info.write_text(
        json.dumps(
            {
                "images": [{"id": 7, "file_name": "x.png", "height": 30, "width": 40}],
                "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}],
            }
        )
    )
    ds = COCODataset(images=str(tmp_path / "img"), annotations=str(info))
    assert not ds.has_annotations
    assert ds.class_names == ["person", "bicycle"]
    image, target = ds[0]
    assert image.shape == (3, 30, 40) and target["boxes"].shape == (0, 4) and target["image_id"] == 7


def test_corrupt_image_warns_and_collate_drops_it(tmp_path):
    img, ann = _tiny_coco(tmp_path)
    (img / "b.png").write_bytes(b"not a png")
    ds = COCODataset(images=str(img), annotations=str(ann))
    with pytest.warns(UserWarning, match="b.png"):
        assert ds[0] is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        images, targets = collate([ds[0], ds[1], ds[2]])
    assert [t["image_id"] for t in targets] == [5, 10] and len(images) == 2


def test_image_is_rgb(tmp_path):
    img, ann = _tiny_coco(tmp_path)
    bgr = np.zeros((40, 60, 3), np.uint8)
    bgr[..., 2] = 255  # red in OpenCV's BGR order
    cv2.imwrite(str(img / "a.png"), bgr)
    image, _ = COCODataset(images=str(img), annotations=str(ann))[2]
    assert image[0].min() == 255 and image[1:].max() == 0


def test_repeated_ids_are_an_error_naming_id_and_file(tmp_path):
    from tests.conftest import write_tiny_coco

    images, ann = write_tiny_coco(tmp_path)
    data = json.loads(ann.read_text())
    twice = dict(data, images=data["images"] + [dict(data["images"][0], file_name="other.png")])
    ann.write_text(json.dumps(twice))
    with pytest.raises(UserError, match=rf"{ann}.*'images' repeats id 1\b"):
        COCODataset(images=str(images), annotations=str(ann))
    twice = dict(data, annotations=data["annotations"] + [dict(data["annotations"][0], bbox=[1, 1, 5, 5])])
    ann.write_text(json.dumps(twice))
    with pytest.raises(UserError, match=rf"{ann}.*'annotations' repeats id 1\b"):
        COCODataset(images=str(images), annotations=str(ann))


def test_directory_as_weights_says_it_is_a_directory(tmp_path):
    from detkit.checkpoint.io import load_checkpoint
    from detkit.config import load_config
    from detkit.modeling.build import load_detector

    with pytest.raises(UserError, match="is a directory"):
        load_checkpoint(tmp_path)
    cfg = load_config(None, ["model.num_classes=2", "model.backbone.depth=18", "model.backbone.weights=null",
                             "model.device=cpu"])
    with pytest.raises(UserError, match="is a directory"):
        load_detector(cfg, tmp_path, class_names=["a", "b"])
