"""Detection results files: the COCO results format shared by COCO and VOC test sets.

A results file (`detections.json`) is a JSON list of dicts
    {"image_id": int | str, "category_id": int, "bbox": [x, y, w, h], "score": float}
with boxes in continuous pixels of the original image ((0, 0) at the top-left corner) and the
dataset's own ids: COCO's image ids and category ids (1..90 with gaps); for VOC the image's file
stem ("000005") and 1 + the class index in the standard 20-class order.

Rounding: bbox values are rounded to 2 decimals (1/100 pixel) and scores to 5 decimals. This keeps
files small and is far below any effect on AP; detections whose rounded scores tie keep the order
in which they were produced (the evaluators sort stably).
"""

import math
import os
from pathlib import Path

import numpy as np

from detkit.atomic_write import write_json
from detkit.errors import UserError
from detkit.json_file import read_json

BBOX_DECIMALS = 2
SCORE_DECIMALS = 5
RESULT_KEYS = ("image_id", "category_id", "bbox", "score")


def _to_numpy(x) -> np.ndarray:
    """Tensor (any device) or array-like -> numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _plain_image_id(image_id) -> int | str:
    """Dataset image id as a JSON-friendly int or str (tensor / numpy scalars are unwrapped)."""
    if hasattr(image_id, "item"):
        image_id = image_id.item()
    if isinstance(image_id, str):
        return image_id
    if isinstance(image_id, (int, np.integer)) and not isinstance(image_id, bool):
        return int(image_id)
    raise TypeError(f"image_id must be an int or a str, got {type(image_id).__name__} {image_id!r}")


def to_coco_results(image_id: int | str, output: dict, category_ids: list[int]) -> list[dict]:
    """One image's detections as COCO result dicts.

    Args:
        image_id: the dataset's id of the image (int for COCO-format sets, file stem str for VOC).
        output: `boxes` (N, 4) xyxy in the original image's pixels, `scores` (N,), `labels` (N,)
            contiguous class indices 0..K-1; tensors (any device) or numpy arrays.
        category_ids: the dataset's category id of each class index (len K), e.g. COCO's
            [1, 2, ..., 90] with gaps, or VOC's [1..20].

    Returns:
        N dicts `{image_id, category_id, bbox: [x, y, w, h], score}` in the order of `output`.
    """
    image_id = _plain_image_id(image_id)
    boxes = _to_numpy(output["boxes"]).astype(np.float64).reshape(-1, 4)
    scores = _to_numpy(output["scores"]).astype(np.float64).reshape(-1)
    labels = _to_numpy(output["labels"]).astype(np.int64).reshape(-1)
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(f"output sizes differ: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(category_ids)):
        raise ValueError(f"labels must lie in 0..{len(category_ids) - 1}, got {labels.min()}..{labels.max()}")
    xywh = np.stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)
    xywh = np.round(xywh, BBOX_DECIMALS)
    scores = np.round(scores, SCORE_DECIMALS)
    return [
        {
            "image_id": image_id,
            "category_id": int(category_ids[label]),
            "bbox": [float(v) for v in box],
            "score": float(score),
        }
        for box, score, label in zip(xywh, scores, labels)
    ]


def save_results(path: str | os.PathLike, results: list[dict]) -> None:
    """Write `results` as JSON to `path` atomically; NaN is refused."""
    write_json(path, results, allow_nan=False)


def is_number(v) -> bool:
    """A JSON number: int or float, not bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_entry(entry) -> str | None:
    """What is wrong with one results entry, or None when it is valid."""
    if not isinstance(entry, dict):
        return f"is a {type(entry).__name__}, not an object"
    missing = [k for k in RESULT_KEYS if k not in entry]
    if missing:
        return f"misses key(s) {', '.join(missing)}"
    image_id, category_id, bbox, score = (entry[k] for k in RESULT_KEYS)
    if isinstance(image_id, bool) or not isinstance(image_id, (int, str)):
        return f"has image_id {image_id!r} (an int or a string expected)"
    if isinstance(category_id, bool) or not isinstance(category_id, int):
        return f"has category_id {category_id!r} (an int expected)"
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(is_number(v) for v in bbox):
        return f"has bbox {bbox!r} (four numbers [x, y, w, h] expected)"
    if not all(math.isfinite(v) for v in bbox):
        return f"has a non-finite bbox {bbox!r}"
    if bbox[2] < 0 or bbox[3] < 0:
        return f"has a bbox with negative width or height {bbox!r}"
    if not is_number(score) or not math.isfinite(score):
        return f"has score {score!r} (a finite number expected)"
    return None


def load_results(path: str | os.PathLike) -> list[dict]:
    """Read and validate a COCO-format results file.

    Raises:
        UserError: the file is missing or not JSON, is not a list, or an entry lacks a key or holds
            a non-finite / malformed value (the message names the file and the first bad index).
    """
    path = Path(path)
    data = read_json(path, "results file", hint="write it with detkit's test_net.py")
    if not isinstance(data, list):
        raise UserError(
            f"results file {path} must hold a JSON list of detections, got a {type(data).__name__}"
        )
    for i, entry in enumerate(data):
        problem = _check_entry(entry)
        if problem is not None:
            raise UserError(
                f"results file {path}: entry {i} {problem}; each entry needs "
                "image_id, category_id, bbox [x, y, w, h] and score, all finite"
            )
    return data
