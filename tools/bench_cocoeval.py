"""Time COCO box evaluation on a synthetic set the size of COCO val2017:

    python tools/bench_cocoeval.py [--images 5000] [--gt-per-image 7] [--dets-per-image 100] [--backends ...]
    python tools/bench_cocoeval.py --write DIR    # the same set as files, for tools/evaluate.py and tools/analyze.py

5000 images (640x480), a Poisson(7) number of ground-truth boxes each over 80 categories with
COCO's ids (1..90 with gaps), and 100 detections per image: a jittered copy of every ground-truth
box plus random boxes. Reports seconds for loadRes, evaluate, accumulate and summarize per backend
(pycocotools, faster_coco_eval when installed) and checks that both give the same 12 numbers.
`--write DIR` writes the set instead: DIR/instances.json, DIR/detections.json, DIR/images/ (blank JPEGs
of the images' size) and DIR/config.yaml (data.test pointing at them).
"""

import argparse
import contextlib
import io
import json
import time
from pathlib import Path

import cv2
import numpy as np
import yaml
from pycocotools.coco import COCO

from detkit.evaluation.coco import COCO_BACKENDS, make_cocoeval

# COCO's 80 category ids: 1..90 without the 10 unused ones.
COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def synthetic_set(num_images: int, gt_per_image: float, dets_per_image: int, seed: int = 0) -> tuple[COCO, list[dict]]:
    rng = np.random.default_rng(seed)
    width, height = 640, 480
    images, annotations, detections = [], [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "width": width, "height": height, "file_name": f"{image_id:012d}.jpg"})
        n = int(rng.poisson(gt_per_image))
        # box sizes spread over COCO's small / medium / large ranges
        wh = np.exp(rng.uniform(np.log(8), np.log(400), size=(n, 2)))
        xy = rng.uniform(0, 1, size=(n, 2)) * np.maximum([width, height] - wh, 1)
        cats = rng.choice(COCO_CATEGORY_IDS, size=n)
        for (x, y), (w, h), c in zip(xy, wh, cats):
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": int(c),
                 "bbox": [float(x), float(y), float(w), float(h)], "area": float(w * h), "iscrowd": 0}
            )  # fmt: skip
            jitter = rng.normal(0, 0.1, 4) * [w, h, w, h]
            detections.append(
                {"image_id": image_id, "category_id": int(c), "bbox": [float(v) for v in [x, y, w, h] + jitter],
                 "score": float(rng.uniform(0.3, 1.0))}
            )  # fmt: skip
        for _ in range(max(0, dets_per_image - n)):
            w, h = np.exp(rng.uniform(np.log(8), np.log(400), size=2))
            x, y = rng.uniform(0, width - min(w, width - 1)), rng.uniform(0, height - min(h, height - 1))
            detections.append(
                {"image_id": image_id, "category_id": int(rng.choice(COCO_CATEGORY_IDS)),
                 "bbox": [float(x), float(y), float(w), float(h)], "score": float(rng.uniform(0.0, 0.7))}
            )  # fmt: skip
    coco_gt = COCO()
    coco_gt.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": f"c{c}"} for c in COCO_CATEGORY_IDS],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
    return coco_gt, detections


def time_backend(coco_gt: COCO, detections: list[dict], backend: str) -> tuple[dict, np.ndarray]:
    times = {}
    with contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        coco_dt = coco_gt.loadRes([dict(d, bbox=list(d["bbox"])) for d in detections])
        times["loadRes"] = time.perf_counter() - start
        evaluator = make_cocoeval(coco_gt, coco_dt, backend=backend)
        for step in ("evaluate", "accumulate", "summarize"):
            start = time.perf_counter()
            getattr(evaluator, step)()
            times[step] = time.perf_counter() - start
    times["total"] = sum(times.values())
    return times, np.asarray(evaluator.stats[:12])


def write_set(folder: Path, coco_gt: COCO, detections: list[dict]) -> None:
    """The synthetic set as a COCO-format test set with a config, and its detections file."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    sizes = {(im["height"], im["width"]) for im in coco_gt.dataset["images"]}
    blank = {size: cv2.imencode(".jpg", np.zeros((*size, 3), np.uint8))[1].tobytes() for size in sizes}
    for im in coco_gt.dataset["images"]:
        (images / im["file_name"]).write_bytes(blank[im["height"], im["width"]])
    (folder / "instances.json").write_text(json.dumps(coco_gt.dataset))
    (folder / "detections.json").write_text(json.dumps(detections))
    test = [{"format": "coco", "images": str(images.resolve()), "annotations": str((folder / "instances.json").resolve())}]
    (folder / "config.yaml").write_text(yaml.safe_dump({"data": {"test": test}}))
    print(f"wrote {folder}/config.yaml, instances.json, detections.json and {len(coco_gt.dataset['images'])} images")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--gt-per-image", type=float, default=7.0)
    parser.add_argument("--dets-per-image", type=int, default=100)
    parser.add_argument("--backends", nargs="+", choices=COCO_BACKENDS, default=list(COCO_BACKENDS))
    parser.add_argument("--write", type=Path, help="write the set to this folder instead of timing it")
    args = parser.parse_args()

    start = time.perf_counter()
    coco_gt, detections = synthetic_set(args.images, args.gt_per_image, args.dets_per_image)
    print(
        f"synthetic set: {args.images} images, {len(coco_gt.anns)} ground-truth boxes, {len(detections)} detections, "
        f"80 categories (built in {time.perf_counter() - start:.1f}s)"
    )
    if args.write is not None:
        write_set(args.write, coco_gt, detections)
        return
    stats = {}
    for backend in args.backends:
        try:
            times, stats[backend] = time_backend(coco_gt, detections, backend)
        except Exception as e:  # e.g. faster-coco-eval not installed
            print(f"{backend:>16}: skipped ({e})")
            continue
        timings = "  ".join(f"{k} {v:6.2f}s" for k, v in times.items())
        print(f"{backend:>16}: {timings}  AP {100 * stats[backend][0]:.2f}")
    if len(stats) == 2:
        a, b = stats.values()
        print(f"largest difference between the backends' 12 numbers: {np.abs(a - b).max():.2e}")


if __name__ == "__main__":
    main()
