"""Confusion matrix of a detector at one IoU and one score threshold, and each box's outcome.

Per image, the detections scoring >= the threshold are matched to the non-crowd ground-truth boxes
in three greedy passes, highest score first, each detection taking the free box of highest IoU
(>= `iou`, computed by pycocotools' `mask.iou`):
  1. same class: a true positive (the diagonal);
  2. what is left, any class: a confusion (row: the box's class, column: the detection's class);
  3. what is still left: a detection on a crowd region is ignored (COCO's rule); any other detection is
     a false positive on nothing (the background row), a duplicate when it overlaps a box of its class
     that another detection took; a box no detection took is missed (the background column).
Every non-crowd ground-truth box is counted exactly once in its row.
"""

from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils

from detkit.evaluation.analysis import GroundTruth

# Outcomes of a detection and of a ground-truth box; the report draws them as these tags.
TP, CONFUSED, FP, DUPLICATE, IGNORED = "TP", "FP-class", "FP", "FP-dup", "ignored"
FOUND, MISSED, WRONG_CLASS, CROWD = "TP", "FN", "FN-class", "crowd"


@dataclass
class ImageOutcome:
    """One image's boxes and what became of them (boxes xywh, labels are class indices)."""

    image_id: object
    gt_boxes: np.ndarray  # (G, 4)
    gt_labels: np.ndarray  # (G,)
    gt_status: list[str]  # FOUND, MISSED, WRONG_CLASS or CROWD
    det_boxes: np.ndarray  # (D, 4), only detections >= the score threshold
    det_labels: np.ndarray  # (D,)
    det_scores: np.ndarray  # (D,)
    det_status: list[str]  # TP, CONFUSED, FP, DUPLICATE or IGNORED
    det_match: np.ndarray  # (D,) the ground-truth box a TP or CONFUSED detection took, else -1

    gt_areas: np.ndarray  # (G,) the boxes' annotated area (what COCOeval's area ranges use)

    @property
    def num_false_positives(self) -> int:
        """Detections on nothing, duplicates and confusions."""
        return sum(s in (CONFUSED, FP, DUPLICATE) for s in self.det_status)

    @property
    def num_missed(self) -> int:
        return sum(s == MISSED for s in self.gt_status)

    @property
    def num_errors(self) -> int:
        return self.num_false_positives + self.num_missed


def _greedy(iou: np.ndarray, allowed: np.ndarray, det_free: np.ndarray, gt_free: np.ndarray, threshold: float) -> list:
    """Pairs (d, g): each free detection in row order takes the free allowed box of highest IoU >= threshold."""
    pairs = []
    for d in np.flatnonzero(det_free):
        candidates = np.where(allowed[d] & gt_free & (iou[d] >= threshold), iou[d], -1.0)
        g = int(candidates.argmax()) if len(candidates) else -1
        if g >= 0 and candidates[g] >= 0:
            pairs.append((int(d), g))
            det_free[d], gt_free[g] = False, False
    return pairs


def match_image(
    image_id, gt_boxes, gt_labels, gt_crowd, det_boxes, det_labels, det_scores, *, iou: float = 0.5, gt_areas=None
) -> ImageOutcome:
    """The outcome of one image's detections (already filtered by score) and boxes (xywh, class indices);
    see the module doc. `gt_areas`: the boxes' annotated areas (default w * h)."""
    gt_boxes, det_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4), np.asarray(det_boxes, np.float64).reshape(-1, 4)
    gt_labels, det_labels = np.asarray(gt_labels, np.int64), np.asarray(det_labels, np.int64)
    gt_crowd, det_scores = np.asarray(gt_crowd, bool), np.asarray(det_scores, np.float64)
    order = np.argsort(-det_scores, kind="stable")
    det_boxes, det_labels, det_scores = det_boxes[order], det_labels[order], det_scores[order]
    # (D, G): IoU, or for a crowd box the fraction of the detection inside it (pycocotools' rule)
    overlap = np.asarray(mask_utils.iou(det_boxes.tolist(), gt_boxes.tolist(), gt_crowd.astype(np.uint8).tolist()))
    overlap = overlap.reshape(len(det_boxes), len(gt_boxes))
    same = det_labels[:, None] == gt_labels[None, :]
    det_free, gt_free = np.ones(len(det_boxes), bool), ~gt_crowd
    det_status, gt_status = [FP] * len(det_boxes), [CROWD if c else MISSED for c in gt_crowd]
    det_match = np.full(len(det_boxes), -1, dtype=np.int64)
    for d, g in _greedy(overlap, same, det_free, gt_free, iou):
        det_status[d], gt_status[g], det_match[d] = TP, FOUND, g
    for d, g in _greedy(overlap, ~same, det_free, gt_free, iou):
        det_status[d], gt_status[g], det_match[d] = CONFUSED, WRONG_CLASS, g
    taken = np.array([s == FOUND for s in gt_status], bool)
    for d in np.flatnonzero(det_free):
        if (overlap[d, gt_crowd] >= iou).any():
            det_status[d] = IGNORED
        elif (overlap[d, same[d] & taken] >= iou).any():
            det_status[d] = DUPLICATE
    areas = gt_boxes[:, 2] * gt_boxes[:, 3] if gt_areas is None else np.asarray(gt_areas, np.float64)
    return ImageOutcome(
        image_id, gt_boxes, gt_labels, gt_status, det_boxes, det_labels, det_scores, det_status, det_match, areas
    )


def image_outcomes(gt: GroundTruth, results: list[dict], *, iou: float = 0.5, score_threshold: float = 0.5) -> list[ImageOutcome]:
    """`match_image` on every image of `gt`, in its order, with the results scoring >= `score_threshold`."""
    label_of = {c: k for k, c in enumerate(gt.category_ids)}
    by_image = {image_id: [] for image_id in gt.image_ids}
    for r in results:
        if r["score"] >= score_threshold:
            by_image[r["image_id"]].append(r)
    outcomes = []
    for image_id, coco_id in zip(gt.image_ids, gt.coco_image_ids):
        anns = [a for a in gt.coco.imgToAnns.get(coco_id, []) if int(a["category_id"]) in label_of]
        dets = by_image[image_id]
        outcomes.append(
            match_image(
                image_id,
                [a["bbox"] for a in anns], [label_of[int(a["category_id"])] for a in anns],
                [bool(a.get("iscrowd", 0)) for a in anns],
                [d["bbox"] for d in dets], [label_of[int(d["category_id"])] for d in dets], [d["score"] for d in dets],
                iou=iou, gt_areas=[a["area"] for a in anns],
            )  # fmt: skip
        )
    return outcomes


def confusion_matrix(outcomes: list[ImageOutcome], num_classes: int) -> np.ndarray:
    """(K+1, K+1) counts: rows ground-truth classes then background, columns predicted classes then
    background (missed). Ignored detections and crowd regions are not counted."""
    matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    bg = num_classes
    for o in outcomes:
        for g, status in enumerate(o.gt_status):
            if status == MISSED:
                matrix[o.gt_labels[g], bg] += 1
        for d, status in enumerate(o.det_status):
            if status in (TP, CONFUSED):
                matrix[o.gt_labels[o.det_match[d]], o.det_labels[d]] += 1
            elif status in (FP, DUPLICATE):
                matrix[bg, o.det_labels[d]] += 1
    return matrix


def duplicate_counts(outcomes: list[ImageOutcome], num_classes: int) -> list[int]:
    """Per predicted class, how many of its background-row false positives are duplicates."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for o in outcomes:
        for d, status in enumerate(o.det_status):
            if status == DUPLICATE:
                counts[o.det_labels[d]] += 1
    return counts.tolist()


def recall_by_size(outcomes: list[ImageOutcome], edges) -> list[float | None]:
    """Per sqrt(area) bin [edges[i], edges[i+1]] (inclusive, as COCOeval's area ranges), the percent of
    non-crowd boxes found with their class; None for a bin without boxes."""
    areas = np.concatenate([o.gt_areas for o in outcomes]) if outcomes else np.zeros(0)
    status = [s for o in outcomes for s in o.gt_status]
    keep = np.array([s != CROWD for s in status], dtype=bool)
    found = np.array([s == FOUND for s in status], dtype=bool)[keep]
    areas = areas[keep]
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (areas >= lo**2) & (areas <= hi**2)
        out.append(float(found[in_bin].mean()) * 100.0 if in_bin.any() else None)
    return out
