"""The numbers of the evaluation report (tools/analyze.py), computed by pycocotools' COCOeval.

Every number here comes from COCOeval runs whose parameters or data differ, never from matching
code of our own:
- `per_class`: AP, AP50, AP75, APs, APm, APl of each class from the standard evaluation (equal to
  pycocotools' per-class values), with the number of ground-truth boxes and of detections;
- `pr_curves`: COCOeval's accumulated precision (101 recall points, area "all", 100 detections) at
  IoU 0.5 and 0.75, per class and averaged over the classes, with the operating point of a score
  threshold read from COCOeval's `scores` array;
- `size_view`: AP, AP50 and the highest recall at IoU 0.5 in bins of sqrt(area) finer than COCO's
  small / medium / large (COCOeval with those bins as its area ranges).
The error breakdown is `detkit.evaluation.error_breakdown`, the confusion matrix
`detkit.evaluation.confusion`.

VOC sets are analysed the same way after `ground_truth_of` turns them into a COCO ground truth
(difficult objects become crowd regions: detections on them are ignored, as by the VOC rule).
Values are percent; None where a class (or a size bin) has no ground truth.
"""

import contextlib
import io
from dataclasses import dataclass

import numpy as np
from pycocotools.coco import COCO

from detkit.evaluation.coco import make_cocoeval

# Bin edges in sqrt(area) pixels, finer than COCO's 32 / 96: a stride-16 C4 feature map sees an object
# of 16 px as a single cell.
SIZE_EDGES = (0, 12, 16, 24, 32, 48, 64, 96, 128, 256, 1e5)
PR_IOUS = (0.5, 0.75)
BINS_PER_RUN = 4  # area ranges per COCOeval run: pycocotools keeps a record per image, class and range


@dataclass
class GroundTruth:
    """A test set in the form COCOeval takes.

    coco: pycocotools ground truth whose image ids are `coco_image_ids` (ints).
    image_ids: the dataset's own image ids (ints for COCO-format sets, file stems for VOC), in order;
        `coco_image_ids[i]` is the COCO id of `image_ids[i]`.
    class_names, category_ids: per class index, its name and the dataset's category id.
    supercategories: per class index, the supercategory (the class's own name when the set has none).
    """

    coco: COCO
    image_ids: list
    coco_image_ids: list[int]
    class_names: list[str]
    category_ids: list[int]
    supercategories: list[str]

    def coco_id_of(self) -> dict:
        """dataset image id -> COCO image id."""
        return dict(zip(self.image_ids, self.coco_image_ids))


def indexed(coco: COCO) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress lines
        coco.createIndex()
    return coco


def ground_truth_of(dataset) -> GroundTruth:
    """The COCO ground truth of a detkit test dataset: a COCO-format set's own `coco`, or a VOC set's
    objects as a COCO json (ids 1..N in the set's order; difficult objects as crowd regions)."""
    class_names, category_ids = list(dataset.class_names), [int(c) for c in dataset.category_ids]
    if dataset.kind != "voc":
        cats = dataset.coco.cats
        supers = [str(cats[c].get("supercategory") or name) for name, c in zip(class_names, category_ids)]
        ids = list(dataset.image_ids)
        return GroundTruth(dataset.coco, ids, ids, class_names, category_ids, supers)
    images, annotations = [], []
    for i, image_id in enumerate(dataset.image_ids):
        size = dataset.image_sizes[i] or (0, 0)
        images.append({"id": i + 1, "file_name": f"{image_id}.jpg", "height": size[0], "width": size[1]})
        ann = dataset.annotations(i)
        for box, label, difficult in zip(ann["boxes"], ann["labels"], ann["difficult"]):
            x0, y0, x1, y1 = (float(v) for v in box)
            annotations.append(
                {"id": len(annotations) + 1, "image_id": i + 1, "category_id": category_ids[int(label)],
                 "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": int(difficult)}
            )  # fmt: skip
    coco = COCO()
    coco.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": n} for c, n in zip(category_ids, class_names)],
    }
    return GroundTruth(indexed(coco), list(dataset.image_ids), list(range(1, len(images) + 1)),
                       class_names, category_ids, list(class_names))  # fmt: skip


def detections_coco(gt: GroundTruth, results: list[dict]) -> COCO:
    """The results as a pycocotools object over `gt`'s images, built as `COCO.loadRes` builds one
    for boxes (id, area = w * h, iscrowd 0), but from any number of results, none included."""
    coco_id = gt.coco_id_of()
    annotations = []
    for i, r in enumerate(results):
        x, y, w, h = (float(v) for v in r["bbox"])
        annotations.append(
            {"id": i + 1, "image_id": coco_id[r["image_id"]], "category_id": int(r["category_id"]),
             "bbox": [x, y, w, h], "score": float(r["score"]), "area": w * h, "iscrowd": 0}
        )  # fmt: skip
    coco = COCO()
    coco.dataset = {
        "images": list(gt.coco.dataset["images"]),
        "categories": list(gt.coco.dataset["categories"]),
        "annotations": annotations,
    }
    return indexed(coco)


def run_cocoeval(
    coco_gt: COCO,
    coco_dt: COCO,
    *,
    image_ids: list[int],
    category_ids: list[int],
    backend: str = "pycocotools",
    iou_thresholds: list[float] | None = None,
    area_ranges: dict[str, list[float]] | None = None,
    max_dets: list[int] | None = None,
):
    """A bbox COCOeval, evaluated and accumulated (quietly), with some parameters changed.

    Args:
        iou_thresholds: replaces params.iouThrs (default: 0.50:0.05:0.95).
        area_ranges: {label: [min area, max area]} replaces params.areaRng / areaRngLbl.
        max_dets: replaces params.maxDets (default [1, 10, 100]).
    """
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = make_cocoeval(coco_gt, coco_dt, backend=backend)
        p = evaluator.params
        p.imgIds = sorted(image_ids)
        p.catIds = sorted(int(c) for c in category_ids)
        if iou_thresholds is not None:
            p.iouThrs = np.asarray(iou_thresholds, dtype=np.float64)
        if area_ranges is not None:
            p.areaRngLbl = list(area_ranges)
            p.areaRng = [list(v) for v in area_ranges.values()]
        if max_dets is not None:
            p.maxDets = list(max_dets)
        evaluator.evaluate()
        evaluator.accumulate()
    if backend == "pycocotools":
        # Only `eval` (precision, recall, scores) and `stats` are read afterwards; the per-image records
        # take gigabytes on a val2017-sized file.
        evaluator.evalImgs, evaluator.ious, evaluator._gts, evaluator._dts = [], {}, {}, {}
    return evaluator


def iou_index(evaluator, iou: float) -> int:
    found = np.flatnonzero(np.isclose(evaluator.params.iouThrs, iou))
    if not len(found):
        raise ValueError(f"IoU {iou} is not one of the evaluation's thresholds {list(evaluator.params.iouThrs)}")
    return int(found[0])


def _mean_percent(values: np.ndarray) -> float | None:
    """Mean of the entries > -1 (pycocotools' 'nothing to measure'), in percent; None when none."""
    valid = values[values > -1]
    return float(valid.mean()) * 100.0 if valid.size else None


def evaluated_boxes(gt: GroundTruth) -> list[dict]:
    """The non-crowd ground-truth annotations of the evaluated images and classes."""
    images, categories = set(gt.coco_image_ids), set(gt.category_ids)
    return [
        a for a in gt.coco.dataset.get("annotations", [])
        if a["image_id"] in images and not a.get("iscrowd", 0) and int(a["category_id"]) in categories
    ]  # fmt: skip


def _counts(gt: GroundTruth, results: list[dict]) -> tuple[dict, dict]:
    """Non-crowd ground-truth boxes and detections per category id, over the evaluated images."""
    num_gt = dict.fromkeys(gt.category_ids, 0)
    for ann in evaluated_boxes(gt):
        num_gt[int(ann["category_id"])] += 1
    num_det = dict.fromkeys(gt.category_ids, 0)
    for r in results:
        num_det[int(r["category_id"])] += 1
    return num_gt, num_det


def per_class_table(gt: GroundTruth, evaluator, results: list[dict]) -> dict:
    """{name: {"AP", "AP50", "AP75", "APs", "APm", "APl", "num_gt", "num_det"}} from a standard COCOeval
    (pycocotools' own per-class values: mean precision over IoU, recall, at 100 detections)."""
    precision = evaluator.eval["precision"]  # (T, R, K, A, M)
    labels = list(evaluator.params.areaRngLbl)
    k_of_cat = {int(c): k for k, c in enumerate(evaluator.params.catIds)}
    t50, t75 = iou_index(evaluator, 0.5), iou_index(evaluator, 0.75)
    num_gt, num_det = _counts(gt, results)
    table = {}
    for name, cat in zip(gt.class_names, gt.category_ids):
        p = precision[:, :, k_of_cat[cat], :, -1]  # (T, R, A) at the largest maxDets
        row = {"AP": _mean_percent(p[:, :, labels.index("all")])}
        row["AP50"] = _mean_percent(p[t50, :, labels.index("all")])
        row["AP75"] = _mean_percent(p[t75, :, labels.index("all")])
        for key, label in (("APs", "small"), ("APm", "medium"), ("APl", "large")):
            row[key] = _mean_percent(p[:, :, labels.index(label)])
        row["num_gt"], row["num_det"] = num_gt[cat], num_det[cat]
        table[name] = row
    return table


def _operating_point(precision: np.ndarray, scores: np.ndarray, recall: np.ndarray, threshold: float):
    """[recall, precision] of the last point of a 101-point curve reached by detections scoring
    >= `threshold`, or None when no detection that high reaches any recall point."""
    reached = np.flatnonzero((scores >= threshold) & (precision > 0))
    if not len(reached):
        return None
    r = int(reached[-1])
    return [float(recall[r]), float(precision[r])]


def pr_curves(gt: GroundTruth, evaluator, score_threshold: float) -> dict:
    """Precision at COCOeval's 101 recall points (area "all", 100 detections), at IoU 0.5 and 0.75.

    Returns:
        {"recall": [101], "iou": [0.5, 0.75], "per_class": {name: {"0.5": [101] | None, ...}},
         "overall": {"0.5": [101], ...} (mean over the classes with ground truth),
         "operating_points": {"per_class": {name: {"0.5": [r, p] | None, ...}}, "overall": {...}}}
        precision as fractions; the overall operating point is the mean of the classes' points.
    """
    precision, scores = evaluator.eval["precision"], evaluator.eval["scores"]  # (T, R, K, A, M)
    recall = np.asarray(evaluator.params.recThrs)
    area_all = list(evaluator.params.areaRngLbl).index("all")
    k_of_cat = {int(c): k for k, c in enumerate(evaluator.params.catIds)}
    out = {"recall": recall.round(4).tolist(), "iou": list(PR_IOUS), "per_class": {}, "overall": {}}
    points = {"per_class": {}, "overall": {}}
    for iou in PR_IOUS:
        t, key = iou_index(evaluator, iou), str(iou)
        curves, class_points = [], []
        for name, cat in zip(gt.class_names, gt.category_ids):
            p = precision[t, :, k_of_cat[cat], area_all, -1]
            s = scores[t, :, k_of_cat[cat], area_all, -1]
            has_gt = bool((p > -1).all())
            point = _operating_point(p, s, recall, score_threshold) if has_gt else None
            out["per_class"].setdefault(name, {})[key] = p.round(4).tolist() if has_gt else None
            points["per_class"].setdefault(name, {})[key] = point
            if has_gt:
                curves.append(p)
                class_points.append(point or [0.0, 0.0])
        out["overall"][key] = np.mean(curves, axis=0).round(4).tolist() if curves else None
        points["overall"][key] = np.mean(class_points, axis=0).tolist() if class_points else None
    out["operating_points"] = points
    return out


def size_ranges(edges=SIZE_EDGES) -> dict[str, list[float]]:
    """COCOeval area ranges {label "lo-hi" (sqrt(area) px): [lo^2, hi^2]} of consecutive edges."""
    ranges = {}
    for lo, hi in zip(edges[:-1], edges[1:]):
        label = f"{lo:g}-{hi:g}" if hi < 1e5 else f">{lo:g}"
        ranges[label] = [float(lo) ** 2, float(hi) ** 2]
    return ranges


def size_view(gt: GroundTruth, coco_dt: COCO, *, backend: str = "pycocotools", edges=SIZE_EDGES) -> dict:
    """AP, AP50 and recall (highest recall at IoU 0.5, 100 detections) per sqrt(area) bin, averaged
    over the classes with ground truth in the bin, and the number of non-crowd boxes per bin.

    A bin is a COCOeval area range: boxes outside it are ignored, and so are detections outside it
    that match nothing (pycocotools' rule for APs / APm / APl).
    """
    ranges = size_ranges(edges)
    areas = np.array([a["area"] for a in evaluated_boxes(gt)], dtype=np.float64)
    num_gt = [int(((areas >= lo) & (areas <= hi)).sum()) for lo, hi in ranges.values()]
    out = {"bins": list(ranges), "edges": [float(e) for e in edges], "num_gt": num_gt}
    out.update({key: [None] * len(ranges) for key in ("AP", "AP50", "recall50")})
    filled = [label for label, n in zip(ranges, num_gt) if n]  # an empty bin has nothing to measure
    for start in range(0, len(filled), BINS_PER_RUN):
        labels = filled[start : start + BINS_PER_RUN]
        evaluator = run_cocoeval(
            gt.coco, coco_dt, image_ids=gt.coco_image_ids, category_ids=gt.category_ids, backend=backend,
            area_ranges={label: ranges[label] for label in labels}, max_dets=[100],
        )  # fmt: skip
        precision, recall = evaluator.eval["precision"], evaluator.eval["recall"]  # (T,R,K,A,M), (T,K,A,M)
        t50 = iou_index(evaluator, 0.5)
        for a, label in enumerate(labels):
            i = list(ranges).index(label)
            out["AP"][i] = _mean_percent(precision[:, :, :, a, -1])  # as pycocotools' APs: over T, R, K
            out["AP50"][i] = _mean_percent(precision[t50, :, :, a, -1])
            out["recall50"][i] = _mean_percent(recall[t50, :, a, -1])
    return out
