"""Shared test helpers and fixtures; test modules import from here, never from each other.

    the tiny config     TINY_MODEL + TINY_INPUT (`tiny_config_dict`), TINY (the same as overrides, res5 head),
                        tiny_model, write_config and the tiny_config fixture (a training run on write_tiny_coco)
    data on disk        write_tiny_coco; write_coco / write_voc / write_test_config (saved-detections
                        evaluation); obj_xml / annotation_xml / make_voc (VOCdevkit folders)
    other files         write_video / read_video, python2_pickle
    models              randomise_frozen_bn
    evaluation          faster_coco_eval_runs (which COCOeval runs used the faster_coco_eval backend)
"""

import json
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from torchvision.ops import FrozenBatchNorm2d

from detkit import build_model, load_config

# The tiny config: a ResNet-18 C4 detector at width 32 on images of about 64 x 100 pixels (CPU, seconds).
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
TINY_INPUT = {"min_size_train": [64], "max_size_train": 100, "min_size_test": 64, "max_size_test": 100}
# The paper's C4 head on it (conv5 per region on 14 x 14 RoI pooling), for the detector, export and predictor tests.
RES5_HEAD = {"head": "res5", "pooler": "roi_pool", "pooler_resolution": 14}


def tiny_config_dict(*, res5: bool = False, **model_keys) -> dict:
    """The tiny config as a nested mapping (model and input sections); `model_keys` adds model keys such as
    num_classes=3 or device="cpu"."""
    roi_heads = {**TINY_MODEL["roi_heads"], **(RES5_HEAD if res5 else {})}
    return {"model": {**TINY_MODEL, "roi_heads": roi_heads, **model_keys}, "input": dict(TINY_INPUT)}


def as_overrides(mapping: dict, prefix: str = "") -> list[str]:
    """A nested mapping as `load_config` overrides, KEY=VALUE (values written as JSON, which YAML reads)."""
    items = []
    for key, value in mapping.items():
        if isinstance(value, dict):
            items += as_overrides(value, f"{prefix}{key}.")
        else:
            items.append(f"{prefix}{key}={json.dumps(value)}")
    return items


# The tiny config with the res5 head and 3 classes as overrides; the class count comes first, so that
# TINY[1:] leaves it to the weights.
TINY = ["model.num_classes=3", *as_overrides(tiny_config_dict(res5=True))]


def tiny_model(extra=()):
    """TINY's detector (plus `extra` overrides), seeded: the same weights at every call."""
    torch.manual_seed(0)
    return build_model(load_config(None, TINY + list(extra)))


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
    """A training config file: the tiny config on `write_tiny_coco(data_root)` for train and test; `solver` keys
    override the short schedule."""
    images, ann = write_tiny_coco(data_root)
    dataset = {"format": "coco", "images": str(images), "annotations": str(ann)}
    cfg = {
        **tiny_config_dict(),
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


EVAL_CATEGORY_IDS = [1, 3, 90]


def write_coco(root: Path, with_annotations: bool = True) -> tuple[Path, Path, list[dict]]:
    """Four small images with three boxes each over non-contiguous category ids; returns the detections
    a detector could have made on them (jittered boxes plus false positives)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    images, anns, dets = [], [], []
    for image_id in (10, 20, 30, 40):
        h, w = 48, 64
        cv2.imwrite(str(root / "images" / f"{image_id}.png"), np.zeros((h, w, 3), np.uint8))
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": h, "width": w})
        for _ in range(3):
            bw, bh = rng.uniform(6, 30, 2)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            c = int(rng.choice(EVAL_CATEGORY_IDS))
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": c,
                         "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0})  # fmt: skip
            box = np.round(np.array([x, y, bw, bh]) + rng.normal(0, 1.5, 4), 2)
            score = round(float(rng.random()), 5)
            dets.append({"image_id": image_id, "category_id": c, "bbox": box.tolist(), "score": score})
            dets.append({"image_id": image_id, "category_id": int(rng.choice(EVAL_CATEGORY_IDS)),
                         "bbox": [1.0, 2.0, 10.0, 12.0], "score": round(float(rng.random()), 5)})  # fmt: skip
    data = {"images": images, "categories": [{"id": c, "name": f"cat{c}"} for c in EVAL_CATEGORY_IDS]}
    if with_annotations:
        data["annotations"] = anns
    json_path = root / "instances.json"
    json_path.write_text(json.dumps(data))
    return root / "images", json_path, dets


def write_voc(root: Path) -> tuple[Path, list[dict]]:
    """A VOC2007 folder with three images (a difficult object, an empty image) and detections."""
    objects = {
        "000001": [("dog", (1, 2, 30, 20), 0), ("person", (5, 5, 50, 38), 1)],
        "000002": [("cat", (3, 4, 20, 45), 0), ("dog", (10, 10, 25, 30), 0)],
        "000003": [],
    }
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    for stem, objs in objects.items():
        cv2.imwrite(str(root / "JPEGImages" / f"{stem}.jpg"), np.zeros((50, 60, 3), np.uint8))
        xml = "".join(
            f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
            f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
            for n, b, d in objs
        )
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><size><width>60</width><height>50</height><depth>3</depth></size>{xml}</annotation>"
        )
    (root / "ImageSets/Main/test.txt").write_text("000001\n000002\n000003\n")
    dog, cat, person = 12, 8, 15  # 1 + class index
    dets = [
        {"image_id": "000001", "category_id": dog, "bbox": [0.5, 1.0, 29.0, 19.0], "score": 0.9},
        {"image_id": "000001", "category_id": person, "bbox": [4.0, 4.0, 46.0, 34.0], "score": 0.8},
        {"image_id": "000002", "category_id": cat, "bbox": [2.0, 3.0, 10.0, 20.0], "score": 0.7},
        {"image_id": "000002", "category_id": dog, "bbox": [9.0, 9.0, 16.0, 21.0], "score": 0.4},
        {"image_id": "000003", "category_id": dog, "bbox": [0.0, 0.0, 10.0, 10.0], "score": 0.6},
    ]
    return root, dets


def write_test_config(path: Path, test: list[dict]) -> Path:
    """A config file that only lists `data.test` (evaluating saved detections needs no model)."""
    path.write_text(yaml.safe_dump({"data": {"test": test}}))
    return path


def obj_xml(name, box, difficult=0, truncated=0):
    xmin, ymin, xmax, ymax = box
    return (
        f"<object><name>{name}</name><pose>Left</pose><truncated>{truncated}</truncated>"
        f"<difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
        f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
    )


def annotation_xml(stem, h, w, objects):
    return (
        f"<annotation><folder>VOC2007</folder><filename>{stem}.jpg</filename>"
        f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>{''.join(objects)}</annotation>"
    )


def make_voc(root, images):
    """images: {stem: (h, w, [objects xml])} -> a VOCdevkit year folder with a 'test' split."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for stem, (h, w, objects) in images.items():
        cv2.imwrite(str(root / "JPEGImages" / f"{stem}.jpg"), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        (root / "Annotations" / f"{stem}.xml").write_text(annotation_xml(stem, h, w, objects))
    (root / "ImageSets/Main/test.txt").write_text("".join(f"{s}\n" for s in images))
    return root


FPS = 7


def write_video(path: Path, width: int, height: int, frames: int = 12) -> Path:
    """Noise frames; .avi through OpenCV's own MJPEG writer (keeps odd sizes), others through FFmpeg (mp4v)."""
    if path.suffix == ".avi":
        writer = cv2.VideoWriter(str(path), cv2.CAP_OPENCV_MJPEG, cv2.VideoWriter_fourcc(*"MJPG"), FPS, (width, height))
    else:
        writer = cv2.VideoWriter(str(path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*"mp4v"), FPS, (width, height))
    assert writer.isOpened()
    rng = np.random.default_rng(0)
    for i in range(frames):
        frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        cv2.rectangle(frame, (10 + i, 10), (40 + i, 40), (255, 255, 255), -1)
        writer.write(frame)
    writer.release()
    return path


def read_video(path: Path) -> tuple[int, float, tuple[int, int]]:
    """(decoded frame count, fps, (width, height)) as a player sees them."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    assert cap.isOpened(), path
    count, size = 0, None
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        count += 1
        size = (frame.shape[1], frame.shape[0])
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return count, fps, size


def python2_pickle(blobs: dict[str, np.ndarray]) -> bytes:
    """A protocol-2 pickle as Python 2 + numpy 1.x wrote MSRA's R-50.pkl: names and array bytes as Python 2
    `str` (SHORT_BINSTRING / BINSTRING), `numpy.core.multiarray._reconstruct`, a dict built with SETITEMS."""

    def py2_str(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<I", len(b)) + b

    out = [b"\x80\x02}(" ]
    for name, a in blobs.items():
        a = np.ascontiguousarray(a)
        dtype = a.dtype.str[1:].encode()  # "f4"
        out.append(py2_str(name.encode()))
        out.append(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + py2_str(b"b") + b"\x87R")
        out.append(b"(K\x01" + b"(" + b"".join(b"J" + struct.pack("<i", d) for d in a.shape) + b"t")
        out.append(b"cnumpy\ndtype\n" + py2_str(dtype) + b"K\x00K\x01\x87R")
        out.append(b"(K\x03" + py2_str(b"<") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
        out.append(b"\x89" + py2_str(a.tobytes()) + b"tb")
    out.append(b"u.")
    return b"".join(out)


def randomise_frozen_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            n = m.weight.numel()
            m.weight.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)


@pytest.fixture
def faster_coco_eval_runs(monkeypatch) -> list:
    """The faster_coco_eval COCOeval objects evaluated during the test, in order (skips without the package)."""
    faster_coco_eval = pytest.importorskip("faster_coco_eval")
    runs = []

    class Recorded(faster_coco_eval.COCOeval_faster):
        def evaluate(self):
            runs.append(self)
            super().evaluate()

    monkeypatch.setattr(faster_coco_eval, "COCOeval_faster", Recorded)
    return runs
