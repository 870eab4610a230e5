"""The COCO analysis of false positives and misses (Hoiem et al. style, as on the COCO detection
evaluation page), computed by pycocotools' COCOeval with changed parameters and data.

Seven precision-recall curves per class (area "all", 100 detections per image), each ignoring one
more kind of error than the one before:
    C75  IoU 0.75 (the standard evaluation; its AP is AP75)
    C50  IoU 0.50 (AP50)
    Loc  IoU 0.10: localisation errors ignored (duplicates still count)
    Sim  IoU 0.10, and detections on objects of another class of the same supercategory ignored:
         those objects are given the detection's class and made crowd regions (COCOeval ignores a
         detection that matches a crowd region and no object)
    Oth  the same with the objects of every other class
    BG   background false positives ignored too: precision 1 up to Oth's highest recall
    FN   misses ignored too: precision 1 at every recall
A class's AP under each is the mean precision over the 101 recall points; the overall value is the
mean over the classes with ground truth. Sets without supercategories give each class its own, so
Sim equals Loc. Curves never decrease from C75 to FN except where greedy matching at a lower IoU
pairs boxes differently (Loc <= Sim <= Oth <= BG <= FN always hold: ignoring false positives
cannot lower precision).
"""

from collections.abc import Callable

import numpy as np
from pycocotools.coco import COCO

from detkit.evaluation.analysis import GroundTruth, indexed, iou_index, run_cocoeval

ERROR_KEYS = ("C75", "C50", "Loc", "Sim", "Oth", "BG", "FN")
LOC_IOU = 0.1


def _relabelled_ground_truth(gt: GroundTruth, category_id: int, others: set[int], image_ids: list[int]) -> COCO:
    """The ground truth of `image_ids` with the objects of the categories `others` turned into crowd
    regions of `category_id` (and nothing of the remaining categories)."""
    annotations = []
    for image_id in image_ids:
        for ann in gt.coco.imgToAnns.get(image_id, []):
            cat = int(ann["category_id"])
            if cat == category_id:
                annotations.append(ann)
            elif cat in others:
                annotations.append(dict(ann, category_id=category_id, iscrowd=1))
    coco = COCO()
    coco.dataset = {
        "images": [gt.coco.imgs[i] for i in image_ids],
        "categories": list(gt.coco.dataset["categories"]),
        "annotations": annotations,
    }
    return indexed(coco)


def _detections_of(coco_dt: COCO, annotations: list[dict], images: list[dict]) -> COCO:
    coco = COCO()
    coco.dataset = {"images": images, "categories": list(coco_dt.dataset["categories"]), "annotations": annotations}
    return indexed(coco)


def _ignoring_confusions(
    gt: GroundTruth, coco_dt: COCO, detections: list[dict], category_id: int, others: set[int], backend: str
) -> np.ndarray:
    """(R,) precision of one category at IoU 0.1 when its `detections` on objects of `others` are ignored."""
    evaluated = set(gt.coco_image_ids)
    gt_images = set(gt.coco.getImgIds(catIds=[category_id]))
    image_ids = sorted(({d["image_id"] for d in detections} | gt_images) & evaluated)  # the rest add nothing
    coco_gt = _relabelled_ground_truth(gt, category_id, others, image_ids)
    dets = _detections_of(coco_dt, detections, coco_gt.dataset["images"])
    evaluator = run_cocoeval(
        coco_gt, dets, image_ids=image_ids, category_ids=[category_id], backend=backend,
        iou_thresholds=[LOC_IOU], area_ranges={"all": [0.0, 1e10]}, max_dets=[100],
    )  # fmt: skip
    return evaluator.eval["precision"][0, :, 0, 0, -1]


def error_curves(
    gt: GroundTruth,
    coco_dt: COCO,
    standard_eval,
    *,
    backend: str = "pycocotools",
    step: Callable[[], None] = lambda: None,
) -> dict[str, np.ndarray]:
    """{key: (R, K) precision} for the seven `ERROR_KEYS`, K in `gt.class_names` order; -1 where a class
    has no ground truth. `standard_eval` is the accumulated standard COCOeval of the same detections
    (C75 and C50 are read from it); `step()` is called once per evaluation run (a progress bar)."""
    k_of_cat = {int(c): k for k, c in enumerate(standard_eval.params.catIds)}
    ks = [k_of_cat[c] for c in gt.category_ids]
    area_all = list(standard_eval.params.areaRngLbl).index("all")
    standard = standard_eval.eval["precision"][:, :, :, area_all, -1][:, :, ks]  # (T, R, K)
    curves = {"C75": standard[iou_index(standard_eval, 0.75)], "C50": standard[iou_index(standard_eval, 0.5)]}
    loc = run_cocoeval(
        gt.coco, coco_dt, image_ids=gt.coco_image_ids, category_ids=gt.category_ids, backend=backend,
        iou_thresholds=[LOC_IOU], area_ranges={"all": [0.0, 1e10]}, max_dets=[100],
    )  # fmt: skip
    step()
    loc_k = {int(c): k for k, c in enumerate(loc.params.catIds)}
    curves["Loc"] = loc.eval["precision"][0, :, :, 0, -1][:, [loc_k[c] for c in gt.category_ids]]  # (R, K)
    curves["Sim"], curves["Oth"] = curves["Loc"].copy(), curves["Loc"].copy()
    everyone = set(gt.category_ids)
    by_category = {c: [] for c in gt.category_ids}
    for d in coco_dt.dataset["annotations"]:
        by_category[int(d["category_id"])].append(d)
    for k, (cat, sup) in enumerate(zip(gt.category_ids, gt.supercategories)):
        similar = {c for c, s in zip(gt.category_ids, gt.supercategories) if s == sup and c != cat}
        if (curves["Loc"][:, k] > -1).all():  # a class without ground truth keeps -1
            # identical data give identical curves: no run for an empty or an all-class supercategory
            if similar:
                curves["Sim"][:, k] = _ignoring_confusions(gt, coco_dt, by_category[cat], cat, similar, backend)
            if similar == everyone - {cat}:
                curves["Oth"][:, k] = curves["Sim"][:, k]
            else:
                curves["Oth"][:, k] = _ignoring_confusions(gt, coco_dt, by_category[cat], cat, everyone - {cat}, backend)
        step()
    valid = curves["Oth"] > -1
    curves["BG"] = np.where(valid, (curves["Oth"] > 0).astype(np.float64), -1.0)
    curves["FN"] = np.where(valid, 1.0, -1.0)
    return curves


def error_breakdown(gt: GroundTruth, curves: dict[str, np.ndarray]) -> dict:
    """{"overall": {key: AP}, "per_class": {name: {key: AP}}} in percent (None: no ground truth),
    and the curves behind them: "curves": {"overall": {key: [R]}, "per_class": {name: {key: [R]}}}."""
    out = {"overall": {}, "per_class": {name: {} for name in gt.class_names}}
    drawn = {"overall": {}, "per_class": {name: {} for name in gt.class_names}}
    for key in ERROR_KEYS:
        c = curves[key]  # (R, K)
        has_gt = (c > -1).all(axis=0)
        for k, name in enumerate(gt.class_names):
            out["per_class"][name][key] = float(c[:, k].mean()) * 100.0 if has_gt[k] else None
            drawn["per_class"][name][key] = c[:, k].round(4).tolist() if has_gt[k] else None
        out["overall"][key] = float(c[:, has_gt].mean()) * 100.0 if has_gt.any() else None
        drawn["overall"][key] = c[:, has_gt].mean(axis=1).round(4).tolist() if has_gt.any() else None
    out["curves"] = drawn
    return out
