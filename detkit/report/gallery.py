"""The report's gallery: the images with the most errors, ground truth and detections side by side.

Drawn with the demos' `detkit.visualize.draw_detections`; every box carries a tag word (TP, FN,
FN-class, FP, FP-class, FP-dup, ignored, crowd), so outcomes read without relying on colour.
"""

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from detkit.evaluation.confusion import ImageOutcome
from detkit.visualize import draw_detections

PANEL_LONG_SIDE = 480  # px: small images are enlarged so that labels stay readable
GAP = 6  # px of white between the two panels


def worst_images(outcomes: list[ImageOutcome], count: int) -> list[ImageOutcome]:
    """The `count` images with the most errors (false positives + misses), ties in dataset order; none
    without an error."""
    ranked = sorted(range(len(outcomes)), key=lambda i: (-outcomes[i].num_errors, i))
    return [outcomes[i] for i in ranked[:count] if outcomes[i].num_errors > 0]


def _xyxy(boxes_xywh: np.ndarray, scale: float) -> np.ndarray:
    b = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
    return np.stack([b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]], axis=1) * scale


def side_by_side(image_bgr: np.ndarray, outcome: ImageOutcome, class_names: list[str]) -> np.ndarray:
    """(H, 2W + GAP, 3) uint8: ground truth (left) and the detections above the threshold (right)."""
    h, w = image_bgr.shape[:2]
    scale = PANEL_LONG_SIDE / max(h, w)
    resized = cv2.resize(image_bgr, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_LINEAR)
    left = draw_detections(
        resized, _xyxy(outcome.gt_boxes, scale), None, outcome.gt_labels, class_names, tags=outcome.gt_status
    )
    right = draw_detections(
        resized, _xyxy(outcome.det_boxes, scale), outcome.det_scores, outcome.det_labels, class_names,
        tags=outcome.det_status,
    )  # fmt: skip
    gap = np.full((resized.shape[0], GAP, 3), 255, dtype=np.uint8)
    return np.concatenate([left, gap, right], axis=1)


def write_gallery(
    outcomes: list[ImageOutcome],
    load_image: Callable[[object], np.ndarray | None],
    class_names: list[str],
    folder: Path,
    step: Callable[[], None] = lambda: None,
) -> list[dict]:
    """Write `folder/<n>_<image id>.jpg` for each outcome; `load_image(image_id)` gives the BGR image
    (None: unreadable, skipped). Returns, per written image, {"file" (relative to folder's parent),
    "image_id", "errors", "false_positives", "missed"}."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for n, outcome in enumerate(outcomes):
        image = load_image(outcome.image_id)
        step()
        if image is None:
            continue
        path = folder / f"{n:02d}_{outcome.image_id}.jpg"
        cv2.imwrite(str(path), side_by_side(image, outcome, class_names), [cv2.IMWRITE_JPEG_QUALITY, 85])
        entries.append(
            {
                "file": f"{folder.name}/{path.name}",
                "image_id": outcome.image_id,
                "errors": outcome.num_errors,
                "false_positives": outcome.num_false_positives,
                "missed": outcome.num_missed,
            }
        )
    return entries
