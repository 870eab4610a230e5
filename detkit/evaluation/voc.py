"""PASCAL VOC box evaluation, implemented from the published rule.

Per class, the detections of all evaluated images are ranked by descending score (ties keep
their order). Each detection is compared with every ground-truth object of its class in its
image, difficult ones included, and takes the one of highest IoU:
  - IoU <= threshold (or no object): false positive;
  - the object is `difficult`: ignored (neither true nor false positive);
  - the object was already taken by a higher-scored detection: false positive (duplicate);
  - otherwise: true positive, and the object is taken.
The number of positives is the count of non-difficult objects. AP is computed from the
precision/recall curve: VOC2007 averages the interpolated precision at the 11 recalls
0, 0.1, ..., 1; VOC2010 and later take the area under the monotone precision envelope.

IoU uses VOC's pixel-inclusive arithmetic: boxes are converted back from detkit's continuous
coordinates to the 1-based inclusive corners (xmin = x0 + 1, ymin = y0 + 1, xmax = x1, ymax = y1)
and a box spans xmax - xmin + 1 pixels.

Thresholds: VOC matches at IoU > 0.5 (strictly). `AP` (mAP@.5:.95) applies the same rule with
IoU > t for t in 0.50, 0.55, ..., 0.95 and averages; `AP50` is the t = 0.5 case, the VOC metric.
A class without non-difficult objects in the evaluated images has no AP: it is reported as None
and left out of the means.
"""

from typing import Callable, Iterable

import numpy as np

from detkit.errors import UserError
from detkit.evaluation.results import to_coco_results

IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # 0.50 .. 0.95

AnnotationSource = list[dict] | Callable[[str], dict]


def voc_ap(recall, precision, use_11_point: bool) -> float:
    """Average precision (a fraction in 0..1) of one ranked list.

    Args:
        recall, precision: (D,) values after each of the D ranked detections (recall non-decreasing).
        use_11_point: True: the VOC2007 measure, mean over r in {0, 0.1, ..., 1} of the highest
            precision at recall >= r (0 when the curve never reaches r). False: VOC2010+, the area
            under the precision envelope (precision made non-increasing in recall), with precision
            0 beyond the last recall.
    """
    recall = np.asarray(recall, dtype=np.float64).reshape(-1)
    precision = np.asarray(precision, dtype=np.float64).reshape(-1)
    if use_11_point:
        total = 0.0
        # i / 10 (not 0.1 * i) so that a recall of exactly 3/10 counts as reaching 0.3
        for r in np.arange(11) / 10.0:
            reached = recall >= r
            total += float(precision[reached].max()) if reached.any() else 0.0
        return total / 11.0
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    envelope = np.maximum.accumulate(p[::-1])[::-1]  # best precision at this recall or beyond
    steps = np.flatnonzero(r[1:] != r[:-1])  # points where recall moves
    return float(np.sum((r[steps + 1] - r[steps]) * envelope[steps + 1]))


def _to_voc_corners(boxes_xyxy: np.ndarray) -> np.ndarray:
    """(N, 4) continuous xyxy -> (N, 4) VOC 1-based inclusive [xmin, ymin, xmax, ymax]."""
    return np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4) + np.array([1.0, 1.0, 0.0, 0.0])


def voc_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """(N, 4), (M, 4) VOC corners -> (N, M) IoU with pixel-inclusive (+1) widths and heights."""
    b1, b2 = boxes1[:, None, :], boxes2[None, :, :]
    iw = np.clip(np.minimum(b1[..., 2], b2[..., 2]) - np.maximum(b1[..., 0], b2[..., 0]) + 1.0, 0.0, None)
    ih = np.clip(np.minimum(b1[..., 3], b2[..., 3]) - np.maximum(b1[..., 1], b2[..., 1]) + 1.0, 0.0, None)
    inter = iw * ih
    area1 = (b1[..., 2] - b1[..., 0] + 1.0) * (b1[..., 3] - b1[..., 1] + 1.0)
    area2 = (b2[..., 2] - b2[..., 0] + 1.0) * (b2[..., 3] - b2[..., 1] + 1.0)
    return inter / (area1 + area2 - inter)


def _class_ap(
    det_image: np.ndarray,
    det_score: np.ndarray,
    det_box: np.ndarray,
    gt_boxes: list[np.ndarray],
    gt_difficult: list[np.ndarray],
    thresholds: Iterable[float],
    use_11_point: bool,
) -> tuple[int, list[float] | None]:
    """AP of one class at each threshold.

    Args:
        det_image (D,) image positions, det_score (D,), det_box (D, 4) VOC corners.
        gt_boxes, gt_difficult: per image position, (G_i, 4) VOC corners and (G_i,) bool.

    Returns:
        (number of non-difficult objects, list of AP fractions or None when that number is 0).
    """
    npos = int(sum(int((~d).sum()) for d in gt_difficult))
    if npos == 0:
        return 0, None
    order = np.argsort(-det_score, kind="stable")
    det_image, det_box = det_image[order], det_box[order]
    num_dets = len(order)

    # Best-overlapping object of each detection; it does not depend on the threshold.
    offsets = np.concatenate([[0], np.cumsum([len(g) for g in gt_boxes])])
    best_iou = np.zeros(num_dets)
    best_gt = np.full(num_dets, -1, dtype=np.int64)  # global object index over all images
    best_difficult = np.zeros(num_dets, dtype=bool)
    by_image = np.argsort(det_image, kind="stable")
    images, starts = np.unique(det_image[by_image], return_index=True)
    for image, group in zip(images, np.split(by_image, starts[1:])):
        gts = gt_boxes[image]
        if len(gts) == 0:
            continue
        iou = voc_iou(det_box[group], gts)  # (d_i, G_i)
        j = iou.argmax(axis=1)
        best_iou[group] = iou[np.arange(len(group)), j]
        best_gt[group] = offsets[image] + j
        best_difficult[group] = gt_difficult[image][j]

    aps = []
    for t in thresholds:
        hit = best_iou > t
        ignored = hit & best_difficult
        candidates = np.flatnonzero(hit & ~best_difficult)  # in rank order
        # The first (highest-scored) detection to take an object is the true positive;
        # later ones on the same object are duplicates.
        _, first = np.unique(best_gt[candidates], return_index=True)
        tp = np.zeros(num_dets, dtype=bool)
        tp[candidates[first]] = True
        kept = ~ignored
        tp_cum = np.cumsum(tp[kept])
        fp_cum = np.cumsum(~tp[kept])
        recall = tp_cum / npos
        precision = tp_cum / np.maximum(tp_cum + fp_cum, 1)
        aps.append(voc_ap(recall, precision, use_11_point))
    return npos, aps


def _annotation_lookup(annotations: AnnotationSource) -> Callable[[str], dict]:
    if callable(annotations):
        return annotations
    by_id = {}
    for ann in annotations:
        by_id[ann["image_id"]] = ann
    return by_id.__getitem__


def _resolve_11_point(use_11_point: bool | None, year: int | None) -> bool:
    """None: the rule of the dataset's year (2007-2009: 11-point); unknown year: area (VOC2010+)."""
    if use_11_point is not None:
        return bool(use_11_point)
    return year is not None and year < 2010  # VOC2010 introduced the area measure


def format_voc_table(class_names: list[str], npos: list[int], ap50: list, ap: list) -> str:
    """Per-class table: objects (non-difficult), AP50 and AP (.50:.95) in percent; '-' when absent."""

    def fmt(v):
        return "-" if v is None else f"{v:.1f}"

    name_w = max(len("class"), *(len(n) for n in class_names))
    lines = [f"{'class':<{name_w}} {'#gt':>6} {'AP50':>6} {'AP':>6}", "-" * (name_w + 21)]
    for name, n, a50, a in zip(class_names, npos, ap50, ap):
        lines.append(f"{name:<{name_w}} {n:>6d} {fmt(a50):>6} {fmt(a):>6}")
    return "\n".join(lines)


def _ground_truth_by_class(lookup: Callable[[str], dict], image_ids: list, num_classes: int) -> tuple[list, list]:
    """Per class, per image position: the objects' VOC corners (G, 4) and difficult flags (G,)."""
    gt_boxes = [[np.zeros((0, 4))] * len(image_ids) for _ in range(num_classes)]
    gt_difficult = [[np.zeros(0, dtype=bool)] * len(image_ids) for _ in range(num_classes)]
    for i, image_id in enumerate(image_ids):
        ann = lookup(image_id)
        boxes = _to_voc_corners(ann["boxes"])
        labels = np.asarray(ann["labels"], dtype=np.int64).reshape(-1)
        difficult = np.asarray(ann["difficult"], dtype=bool).reshape(-1)
        for c in np.unique(labels):
            mask = labels == c
            gt_boxes[c][i] = boxes[mask]
            gt_difficult[c][i] = difficult[mask]
    return gt_boxes, gt_difficult


def _detections_by_class(results: list[dict], position: dict, num_classes: int) -> tuple[list, list, list]:
    """Per class: image positions, scores and VOC corners of the results; one-line errors for results that
    name an image outside the set or an unknown category."""
    det_image = [[] for _ in range(num_classes)]
    det_score = [[] for _ in range(num_classes)]
    det_box = [[] for _ in range(num_classes)]
    for k, r in enumerate(results):
        if r["image_id"] not in position:
            raise UserError(
                f"detection {k} refers to image {r['image_id']!r}, which is not in the evaluated VOC set; "
                "evaluate against the split the detections were made on"
            )
        c = int(r["category_id"]) - 1
        if not 0 <= c < num_classes:
            raise UserError(
                f"detection {k} has category_id {r['category_id']}; VOC results use 1..{num_classes} "
                "(1 + the class index)"
            )
        x, y, w, h = r["bbox"]
        det_image[c].append(position[r["image_id"]])
        det_score[c].append(float(r["score"]))
        det_box[c].append([x + 1.0, y + 1.0, x + w, y + h])  # xywh -> VOC corners
    return det_image, det_score, det_box


def evaluate_voc_results(
    results: list[dict],
    annotations: AnnotationSource,
    class_names: list[str],
    use_11_point: bool | None,
    image_ids: list[str] | None = None,
    year: int | None = None,
) -> dict:
    """Score COCO-format results (VOC ids: image file stems, category_id = 1 + class index) by the VOC rule.

    Args:
        results: `{image_id, category_id, bbox [x, y, w, h] continuous, score}` dicts.
        annotations: per image `{image_id, boxes (G, 4) continuous xyxy, labels (G,), difficult (G,)}`,
            as a list, or a callable `image_id -> dict` (e.g. `VOCDataset.annotations`).
        class_names: names of the class indices 0..K-1.
        use_11_point: True (VOC2007), False (VOC2010+), None: decided by `year` (2007: True).
        image_ids: the evaluated images; None: every image of the `annotations` list (required
            when `annotations` is a callable).

    Returns:
        {"AP50": VOC mAP in percent, "AP": mean over IoU .50:.95, "per_class": {name: AP50 or None}}.
        Prints a per-class table.

    Raises:
        UserError: a result names an image outside the evaluated set or an unknown category.
    """
    use_11_point = _resolve_11_point(use_11_point, year)
    lookup = _annotation_lookup(annotations)
    if image_ids is None:
        if callable(annotations):
            raise ValueError("image_ids is required when annotations is a callable")
        image_ids = [ann["image_id"] for ann in annotations]
    image_ids = list(dict.fromkeys(image_ids))
    position = {image_id: i for i, image_id in enumerate(image_ids)}
    num_classes = len(class_names)

    gt_boxes, gt_difficult = _ground_truth_by_class(lookup, image_ids, num_classes)
    det_image, det_score, det_box = _detections_by_class(results, position, num_classes)

    npos, ap50, ap = [], [], []
    for c in range(num_classes):
        n, aps = _class_ap(
            np.asarray(det_image[c], dtype=np.int64),
            np.asarray(det_score[c], dtype=np.float64),
            np.asarray(det_box[c], dtype=np.float64).reshape(-1, 4),
            gt_boxes[c],
            gt_difficult[c],
            IOU_THRESHOLDS,
            use_11_point,
        )
        npos.append(n)
        ap50.append(None if aps is None else 100.0 * aps[0])
        ap.append(None if aps is None else 100.0 * float(np.mean(aps)))

    present = [c for c in range(num_classes) if ap50[c] is not None]
    rule = "11-point (VOC2007)" if use_11_point else "area under the curve (VOC2010+)"
    print(f"VOC evaluation on {len(image_ids)} images, AP by the {rule} rule:")
    print(format_voc_table(list(class_names), npos, ap50, ap))
    if present:
        metrics = {
            "AP50": float(np.mean([ap50[c] for c in present])),
            "AP": float(np.mean([ap[c] for c in present])),
        }
    else:
        print("No class has ground truth in the evaluated images: AP is 0.")
        metrics = {"AP50": 0.0, "AP": 0.0}
    print(f"mAP@.5 = {metrics['AP50']:.2f}   mAP@.5:.95 = {metrics['AP']:.2f}   ({len(present)} classes)")
    metrics["per_class"] = dict(zip(class_names, ap50))
    return metrics


class VOCEvaluator:
    """Accumulates detections over a VOC test set and scores them by the VOC rule.

    Args:
        dataset_annotations: per image `{image_id, boxes (G, 4) continuous xyxy, labels, difficult}`
            for every object (difficult included): a list, or a callable `image_id -> dict` such as
            `VOCDataset.annotations`.
        class_names: the names of class indices 0..K-1 (category ids are 1..K in results).
        use_11_point: True: VOC2007 11-point AP; False: area (VOC2010+); None: from `year`, or from
            the `year` attribute of the dataset owning `dataset_annotations` when it is a bound
            method (2007: True; unknown year: area).
        year: the dataset's VOC year, when known.
    """

    def __init__(
        self,
        *,
        dataset_annotations: AnnotationSource,
        class_names: list[str],
        use_11_point: bool | None = None,
        year: int | None = None,
    ):
        if year is None:
            year = getattr(getattr(dataset_annotations, "__self__", None), "year", None)
        self.dataset_annotations = dataset_annotations
        self.class_names = list(class_names)
        self.category_ids = list(range(1, len(self.class_names) + 1))
        self.year = year
        self.use_11_point = _resolve_11_point(use_11_point, year)
        self.reset()

    def reset(self) -> None:
        self._results: list[dict] = []
        self._image_ids: list[str] = []

    def process(self, targets: list[dict], outputs: list[dict]) -> None:
        """Add one batch: `targets[i]["image_id"]` and the model's `outputs[i]` (boxes in original pixels)."""
        if len(targets) != len(outputs):
            raise ValueError(f"{len(targets)} targets but {len(outputs)} outputs")
        for target, output in zip(targets, outputs):
            self._results.extend(to_coco_results(target["image_id"], output, self.category_ids))
            self._image_ids.append(target["image_id"])

    @property
    def results(self) -> list[dict]:
        """COCO-format result dicts accumulated since the last `reset()` (what `detections.json` holds)."""
        return self._results

    def evaluate(self) -> dict:
        """{"AP50", "AP", "per_class"} over exactly the processed images; see `evaluate_voc_results`."""
        if not self._image_ids:
            raise ValueError("VOCEvaluator.evaluate() called before any process()")
        return self.evaluate_results(self._results, self._image_ids)

    def evaluate_results(self, results: list[dict], image_ids: list[str]) -> dict:
        """Metrics of result dicts made elsewhere (a saved `detections.json`) over `image_ids`;
        see `evaluate_voc_results`."""
        return evaluate_voc_results(
            results, self.dataset_annotations, self.class_names, self.use_11_point, image_ids=image_ids
        )
