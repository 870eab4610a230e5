"""COCOEvaluator against pycocotools run directly on the same detections."""

import contextlib
import copy
import io

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detkit.errors import UserError
from detkit.evaluation.coco import COCOEvaluator, evaluate_results, format_per_class_table, summary_metrics
from detkit.evaluation.results import load_results, save_results

CATEGORY_IDS = [3, 7, 11]  # non-contiguous, like COCO's
CLASS_NAMES = ["cat", "dog", "zebra"]  # zebra has no ground truth


def make_gt(seed=0):
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for img_id in (10, 20, 30, 40):
        images.append({"id": img_id, "width": 640, "height": 480, "file_name": f"{img_id}.jpg"})
        for k in range(4):
            w, h = rng.uniform(8, 28, size=2).round(1) if k == 0 else rng.uniform(10, 200, size=2).round(1)
            x, y = rng.uniform(0, 400), rng.uniform(0, 250)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": img_id,
                    "category_id": int(rng.choice(CATEGORY_IDS[:2])),
                    "bbox": [float(x), float(y), float(w), float(h)],
                    "area": float(w * h),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": c, "name": n} for c, n in zip(CATEGORY_IDS, CLASS_NAMES)]
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def make_outputs(coco, img_id, rng):
    """Jittered ground truth plus random boxes, on a 1/4-pixel grid (rounding to 2 decimals keeps them exact)."""
    boxes, labels = [], []
    for a in coco.loadAnns(coco.getAnnIds(imgIds=[img_id])):
        x, y, w, h = a["bbox"]
        box = np.array([x, y, x + w, y + h]) + rng.normal(0, 0.08 * max(w, h), 4)
        boxes.append(box)
        labels.append(CATEGORY_IDS.index(a["category_id"]))
    for _ in range(3):
        x, y = rng.uniform(0, 500), rng.uniform(0, 350)
        boxes.append([x, y, x + rng.uniform(5, 120), y + rng.uniform(5, 120)])
        labels.append(int(rng.integers(0, 3)))
    boxes = np.round(np.asarray(boxes) * 4) / 4
    scores = np.round(rng.uniform(0.05, 1.0, len(boxes)), 4)
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "scores": torch.tensor(scores, dtype=torch.float64),
        "labels": torch.tensor(labels),
    }


def reference(coco_gt, outputs_by_image, img_ids):
    """pycocotools used directly: xyxy -> xywh dicts with original category ids, COCOeval bbox."""
    dets = []
    for img_id, out in outputs_by_image.items():
        for (x0, y0, x1, y1), s, l in zip(out["boxes"].tolist(), out["scores"].tolist(), out["labels"].tolist()):
            cat = CATEGORY_IDS[l]
            dets.append({"image_id": img_id, "category_id": cat, "bbox": [x0, y0, x1 - x0, y1 - y0], "score": s})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(dets)
        e = COCOeval(coco_gt, coco_dt, "bbox")
        e.params.imgIds = img_ids
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e


def run_evaluator(coco_gt, outputs_by_image):
    evaluator = COCOEvaluator(coco_gt=coco_gt, category_ids=CATEGORY_IDS, class_names=CLASS_NAMES)
    items = list(outputs_by_image.items())
    for start in range(0, len(items), 2):  # batches of two
        batch = items[start : start + 2]
        evaluator.process([{"image_id": torch.tensor(i)} for i, _ in batch], [o for _, o in batch])
    return evaluator


@pytest.mark.parametrize("img_ids", [[10, 20, 30, 40], [20, 40]])
def test_matches_pycocotools(img_ids):
    coco_gt = make_gt()
    rng = np.random.default_rng(1)
    outputs = {i: make_outputs(coco_gt, i, rng) for i in img_ids}
    metrics = run_evaluator(coco_gt, outputs).evaluate()
    ref = reference(coco_gt, outputs, img_ids)
    for key, value in zip(["AP", "AP50", "AP75", "APs", "APm", "APl"], ref.stats[:6]):
        expected = None if value < 0 else 100 * value
        assert metrics[key] == pytest.approx(expected), key
    assert 0 < metrics["AP"] < 100 and metrics["APs"] is not None  # every area range is exercised
    for k, name in enumerate(CLASS_NAMES):
        p = ref.eval["precision"][:, :, k, 0, -1]
        expected = 100 * p[p > -1].mean() if (p > -1).any() else None
        assert metrics["per_class"][name] == pytest.approx(expected), name
    assert metrics["per_class"]["zebra"] is None


def test_non_contiguous_category_ids():
    coco_gt = make_gt()
    out = {
        "boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3),
        "scores": torch.tensor([0.9, 0.8, 0.7]),
        "labels": torch.tensor([0, 1, 2]),
    }
    evaluator = run_evaluator(coco_gt, {10: out})
    assert [r["category_id"] for r in evaluator.results] == [3, 7, 11]
    assert {r["image_id"] for r in evaluator.results} == {10} and type(evaluator.results[0]["image_id"]) is int
    # a detection equal to each ground-truth box of one class -> that class has AP 100 on that image
    cat_anns = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[10], catIds=[7]))
    boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in cat_anns)]
    perfect = {
        "boxes": torch.tensor(boxes, dtype=torch.float64),
        "scores": torch.linspace(0.9, 0.5, len(boxes)),
        "labels": torch.full((len(boxes),), 1),
    }
    metrics = run_evaluator(coco_gt, {10: perfect}).evaluate()
    assert metrics["per_class"]["dog"] == pytest.approx(100.0)


def test_zero_detections_give_zeros(capsys):
    coco_gt = make_gt()
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    metrics = run_evaluator(coco_gt, {10: empty, 20: empty}).evaluate()
    for key in ("AP", "AP50", "AP75"):
        assert metrics[key] == 0.0
    assert metrics["per_class"]["cat"] == 0.0 and metrics["per_class"]["zebra"] is None
    assert "Average Precision" in capsys.readouterr().out


def test_results_round_trip_give_same_metrics(tmp_path):
    coco_gt = make_gt()
    rng = np.random.default_rng(2)
    evaluator = run_evaluator(coco_gt, {i: make_outputs(coco_gt, i, rng) for i in (10, 20, 30, 40)})
    before = copy.deepcopy(evaluator.results)
    metrics = evaluator.evaluate()
    assert evaluator.results == before  # pycocotools' loadRes did not add keys to our dicts
    save_results(tmp_path / "detections.json", evaluator.results)
    loaded = load_results(tmp_path / "detections.json")
    assert loaded == evaluator.results
    assert evaluate_results(coco_gt, loaded, CLASS_NAMES, CATEGORY_IDS) == metrics


def test_user_errors():
    coco_gt = make_gt()
    with pytest.raises(UserError, match="999"):
        stray = [{"image_id": 999, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 1.0}]
        evaluate_results(coco_gt, stray, CLASS_NAMES, CATEGORY_IDS)
    info_only = COCO()
    info_only.dataset = {"images": coco_gt.dataset["images"], "categories": coco_gt.dataset["categories"]}
    with pytest.raises(UserError, match="annotations"):
        evaluate_results(info_only, [], CLASS_NAMES, CATEGORY_IDS)


def test_per_class_table_text():
    per_class = {"cat": 12.345, "dog": None, "zebra": 100.0, "ox": 5.0}
    extra = {"cat": 50.0, "zebra": 100.0, "ox": None}
    # name width 5 ("class", "zebra"), value width 11 ("100.0/100.0"), 3 cells a line
    assert format_per_class_table(per_class, extra=extra, title="AP/AP50").split("\n") == [
        "class     AP/AP50 | class     AP/AP50 | class     AP/AP50",
        "-" * 57,
        "cat     12.3/50.0 | dog           -/- | zebra 100.0/100.0",
        "ox          5.0/-",
    ]
    assert format_per_class_table({"cat": 12.345, "dog": None}, columns=1).split("\n") == [
        "class   AP",
        "-" * 10,
        "cat   12.3",
        "dog      -",
    ]
    assert format_per_class_table({}) == ""


def test_process_takes_plain_and_numpy_image_ids():
    coco_gt = make_gt()
    out = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}
    evaluator = COCOEvaluator(coco_gt=coco_gt, category_ids=CATEGORY_IDS, class_names=CLASS_NAMES)
    evaluator.process([{"image_id": 20}, {"image_id": np.int64(10)}, {"image_id": torch.tensor(20)}], [out] * 3)
    assert evaluator.image_ids == [20, 10] and all(type(i) is int for i in evaluator.image_ids)
    assert [r["image_id"] for r in evaluator.results] == [20, 10, 20]
    with pytest.raises(ValueError, match="2 targets but 1 outputs"):
        evaluator.process([{"image_id": 20}] * 2, [out])
    with pytest.raises(ValueError, match=r"COCOEvaluator.evaluate\(\) called before any process\(\)"):
        COCOEvaluator(coco_gt=coco_gt, category_ids=CATEGORY_IDS, class_names=CLASS_NAMES).evaluate()


def test_an_area_range_without_ground_truth_is_none():
    coco_gt = make_gt()
    small = [a for a in coco_gt.dataset["annotations"] if a["area"] < 32**2]  # medium and large left out
    coco_gt.dataset["annotations"] = small
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9} for a in small]
    with contextlib.redirect_stdout(io.StringIO()):
        metrics = evaluate_results(coco_gt, dets, CLASS_NAMES, CATEGORY_IDS)
    assert metrics["APm"] is None and metrics["APl"] is None
    assert metrics["AP"] == pytest.approx(100.0) and metrics["APs"] == pytest.approx(100.0)


def test_per_class_ap50_at_100_detections_and_unknown_image_ids():
    coco_gt = make_gt()
    x, y, w, h = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[10], catIds=[3]))[0]["bbox"]
    # 11 cats on nothing, then a cat found at rank 12 (lost if only 10 detections per image counted) at
    # IoU 0.52 (found at IoU .5 only)
    boxes = [[600.0, 400.0, 620.0, 420.0]] * 11 + [[x, y, x + 0.52 * w, y + h]]
    out = {"boxes": torch.tensor(boxes), "scores": torch.linspace(0.9, 0.3, 12), "labels": torch.zeros(12, dtype=torch.int64)}
    ref = reference(coco_gt, {10: out}, [10])
    metrics, ap50 = summary_metrics(ref, CLASS_NAMES, CATEGORY_IDS)
    expected = {}
    for k, name in enumerate(CLASS_NAMES):
        p = ref.eval["precision"][0, :, k, 0, 2]  # IoU .5, area all, 100 detections
        expected[name] = 100 * p[p > -1].mean() if (p > -1).any() else None
    assert ap50 == pytest.approx(expected) and 0 < ap50["cat"] < 100 and ap50["zebra"] is None
    assert metrics["per_class"]["cat"] == pytest.approx(ap50["cat"] / 10)  # found at one IoU threshold of ten
    with pytest.raises(UserError, match=r"image ids \[999\] are not in the ground truth json"):
        evaluate_results(coco_gt, [], CLASS_NAMES, CATEGORY_IDS, img_ids=[10, 999])
