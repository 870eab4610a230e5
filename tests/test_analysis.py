"""The report's numbers (detkit.evaluation.analysis, error_breakdown, confusion) against pycocotools
on small hand-made sets."""

import contextlib
import io
from types import SimpleNamespace

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detkit.evaluation import analysis, confusion, error_breakdown
from detkit.evaluation.coco import evaluate_results

# cat and dog share a supercategory, car has its own
CATEGORIES = [
    {"id": 1, "name": "cat", "supercategory": "animal"},
    {"id": 2, "name": "dog", "supercategory": "animal"},
    {"id": 5, "name": "car", "supercategory": "vehicle"},
]


def make_gt(annotations: list[dict], num_images: int, categories=CATEGORIES) -> analysis.GroundTruth:
    coco = COCO()
    coco.dataset = {
        "images": [{"id": i, "file_name": f"{i}.png", "height": 100, "width": 120} for i in range(1, num_images + 1)],
        "annotations": [
            {"id": k + 1, "iscrowd": 0, "area": a["bbox"][2] * a["bbox"][3], **a} for k, a in enumerate(annotations)
        ],
        "categories": categories,
    }
    coco = analysis.indexed(coco)
    ids = list(range(1, num_images + 1))
    names = [c["name"] for c in categories]
    supers = [c.get("supercategory", c["name"]) for c in categories]
    return analysis.GroundTruth(coco, ids, ids, names, [c["id"] for c in categories], supers)


def random_set(seed: int, num_images: int = 12) -> tuple[analysis.GroundTruth, list[dict]]:
    """Boxes of three classes and detections with jitter, wrong classes, duplicates and background boxes."""
    rng = np.random.default_rng(seed)
    anns, dets = [], []
    for image_id in range(1, num_images + 1):
        for _ in range(rng.integers(0, 5)):
            w, h = rng.uniform(5, 60, 2)
            x, y = rng.uniform(0, 120 - w), rng.uniform(0, 100 - h)
            c = int(rng.choice([1, 2, 5]))
            anns.append({"image_id": image_id, "category_id": c, "bbox": [x, y, w, h]})
            for _ in range(rng.integers(0, 3)):
                label = c if rng.random() < 0.7 else int(rng.choice([1, 2, 5]))
                box = np.array([x, y, w, h]) + rng.normal(0, 0.15, 4) * [w, h, w, h]
                box[2:] = np.abs(box[2:])
                dets.append({"image_id": image_id, "category_id": label, "bbox": box.tolist(), "score": float(rng.random())})
        for _ in range(rng.integers(0, 3)):
            dets.append({"image_id": image_id, "category_id": int(rng.choice([1, 2, 5])),
                         "bbox": [*rng.uniform(0, 80, 2).tolist(), 20.0, 15.0], "score": float(rng.random())})  # fmt: skip
    return make_gt(anns, num_images), dets


def pycocotools_eval(gt: analysis.GroundTruth, dets: list[dict], cat_ids: list[int]) -> COCOeval:
    """pycocotools' own path: loadRes, COCOeval over the given categories, summarize."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = gt.coco.loadRes([dict(d, bbox=list(d["bbox"])) for d in dets])
        e = COCOeval(gt.coco, coco_dt, iouType="bbox")
        e.params.catIds = cat_ids
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e


def standard(gt, dets):
    coco_dt = analysis.detections_coco(gt, dets)
    return coco_dt, analysis.run_cocoeval(gt.coco, coco_dt, image_ids=gt.coco_image_ids, category_ids=gt.category_ids)


def test_per_class_values_equal_pycocotools_per_category():
    gt, dets = random_set(0)
    _, ev = standard(gt, dets)
    table = analysis.per_class_table(gt, ev, dets)
    for name, cat in zip(gt.class_names, gt.category_ids):
        stats = pycocotools_eval(gt, dets, [cat]).stats  # the 12 numbers of this category alone
        for key, i in (("AP", 0), ("AP50", 1), ("AP75", 2), ("APs", 3), ("APm", 4), ("APl", 5)):
            expected = None if stats[i] < 0 else 100 * stats[i]
            assert table[name][key] == pytest.approx(expected), (name, key)
        assert table[name]["num_gt"] == len(gt.coco.getAnnIds(catIds=[cat]))
        assert table[name]["num_det"] == sum(d["category_id"] == cat for d in dets)
    with contextlib.redirect_stdout(io.StringIO()):
        metrics = evaluate_results(gt.coco, dets, gt.class_names, gt.category_ids)
    assert {n: r["AP"] for n, r in table.items()} == pytest.approx(metrics["per_class"])
    assert any(0 < r["AP"] < 100 for r in table.values())


def test_pr_curves_and_operating_point_come_from_cocoeval():
    gt, dets = random_set(1)
    _, ev = standard(gt, dets)
    pr = analysis.pr_curves(gt, ev, score_threshold=0.5)
    ref = pycocotools_eval(gt, dets, gt.category_ids)
    for k, name in enumerate(gt.class_names):
        assert pr["per_class"][name]["0.5"] == pytest.approx(ref.eval["precision"][0, :, k, 0, 2].round(4).tolist())
        assert pr["per_class"][name]["0.75"] == pytest.approx(ref.eval["precision"][5, :, k, 0, 2].round(4).tolist())
    # mean over classes of the curve is the class-averaged AP50
    assert np.mean(pr["overall"]["0.5"]) * 100 == pytest.approx(100 * ref.stats[1], abs=1e-2)
    # the operating point: the highest recall reached by detections scoring >= 0.5 at IoU .5
    name = gt.class_names[0]
    r, p = pr["operating_points"]["per_class"][name]["0.5"]
    scores = ref.eval["scores"][0, :, 0, 0, 2]
    assert scores[pr["recall"].index(r)] >= 0.5
    assert p == pytest.approx(ref.eval["precision"][0, pr["recall"].index(r), 0, 0, 2])
    # a threshold above every score has no operating point
    assert analysis.pr_curves(gt, ev, score_threshold=1.1)["operating_points"]["per_class"][name]["0.5"] is None


def test_error_breakdown_identities_and_order():
    for seed in range(4):
        gt, dets = random_set(seed)
        coco_dt, ev = standard(gt, dets)
        errors = error_breakdown.error_breakdown(gt, error_breakdown.error_curves(gt, coco_dt, ev))
        ref = pycocotools_eval(gt, dets, gt.category_ids)
        assert errors["overall"]["C75"] == pytest.approx(100 * ref.stats[2])
        assert errors["overall"]["C50"] == pytest.approx(100 * ref.stats[1])
        assert errors["overall"]["FN"] == 100.0
        for values in [errors["overall"], *errors["per_class"].values()]:
            aps = [values[k] for k in error_breakdown.ERROR_KEYS]
            assert all(a <= b + 1e-9 for a, b in zip(aps, aps[1:])), (seed, aps)
        assert errors["overall"]["Oth"] > errors["overall"]["Loc"]  # the sets hold confusions


def test_loc_is_cocoeval_at_iou_point_one():
    gt, dets = random_set(2)
    coco_dt, ev = standard(gt, dets)
    curves = error_breakdown.error_curves(gt, coco_dt, ev)
    with contextlib.redirect_stdout(io.StringIO()):
        e = COCOeval(gt.coco, gt.coco.loadRes([dict(d) for d in dets]), iouType="bbox")
        e.params.iouThrs = np.array([0.1])
        e.evaluate()
        e.accumulate()
    assert curves["Loc"] == pytest.approx(e.eval["precision"][0, :, :, 0, 2])


def confusion_case(label_on_dog: int):
    """cat, dog, car boxes found exactly at 0.9, and one more detection of `label_on_dog` on the dog at 0.95."""
    boxes = {1: [10, 10, 30, 30], 2: [60, 10, 30, 40], 5: [20, 55, 60, 30]}
    gt = make_gt([{"image_id": 1, "category_id": c, "bbox": b} for c, b in boxes.items()], 1)
    dets = [{"image_id": 1, "category_id": c, "bbox": b, "score": 0.9} for c, b in boxes.items()]
    dets.append({"image_id": 1, "category_id": label_on_dog, "bbox": boxes[2], "score": 0.95})
    coco_dt, ev = standard(gt, dets)
    return error_breakdown.error_breakdown(gt, error_breakdown.error_curves(gt, coco_dt, ev))


def test_a_pure_confusion_moves_ap_only_where_it_is_ignored():
    # a cat on the dog (same supercategory): cat's precision is 1/2 until Sim ignores it
    errors = confusion_case(label_on_dog=1)
    cat = errors["per_class"]["cat"]
    assert [cat[k] for k in error_breakdown.ERROR_KEYS] == pytest.approx([50, 50, 50, 100, 100, 100, 100])
    assert errors["per_class"]["dog"]["C75"] == pytest.approx(100) and errors["per_class"]["car"]["C75"] == pytest.approx(100)
    overall = [errors["overall"][k] for k in error_breakdown.ERROR_KEYS]
    assert overall == pytest.approx([250 / 3] * 3 + [100] * 4)
    # a car on the dog (another supercategory): only Oth ignores it
    car = confusion_case(label_on_dog=5)["per_class"]["car"]
    assert [car[k] for k in error_breakdown.ERROR_KEYS] == pytest.approx([50, 50, 50, 50, 100, 100, 100])


def test_without_supercategories_sim_equals_loc():
    gt, dets = random_set(3)
    flat = make_gt(
        [dict(a) for a in gt.coco.dataset["annotations"]], len(gt.image_ids),
        [{"id": c["id"], "name": c["name"]} for c in CATEGORIES],
    )  # fmt: skip
    assert flat.supercategories == flat.class_names
    coco_dt, ev = standard(flat, dets)
    curves = error_breakdown.error_curves(flat, coco_dt, ev)
    assert np.array_equal(curves["Sim"], curves["Loc"])
    assert (curves["Oth"] >= curves["Sim"]).all()


def test_confusion_matrix_counts_every_box_once():
    boxes = {"a": [10, 10, 20, 20], "b": [50, 10, 20, 20], "c": [10, 50, 20, 20], "crowd": [60, 50, 40, 40]}
    gt = make_gt(
        [{"image_id": 1, "category_id": 1, "bbox": boxes["a"]},  # cat, found
         {"image_id": 1, "category_id": 2, "bbox": boxes["b"]},  # dog, seen as a cat
         {"image_id": 1, "category_id": 5, "bbox": boxes["c"]},  # car, missed
         {"image_id": 1, "category_id": 5, "bbox": boxes["crowd"], "iscrowd": 1}],
        1,
    )  # fmt: skip
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": boxes["a"], "score": 0.9},  # TP
        {"image_id": 1, "category_id": 1, "bbox": [11, 10, 20, 20], "score": 0.8},  # duplicate
        {"image_id": 1, "category_id": 1, "bbox": [51, 11, 20, 20], "score": 0.7},  # confusion
        {"image_id": 1, "category_id": 2, "bbox": [100, 0, 10, 10], "score": 0.6},  # on nothing
        {"image_id": 1, "category_id": 5, "bbox": [70, 60, 10, 10], "score": 0.9},  # inside the crowd: ignored
        {"image_id": 1, "category_id": 5, "bbox": boxes["c"], "score": 0.3},  # below the threshold
    ]
    outcomes = confusion.image_outcomes(gt, dets, iou=0.5, score_threshold=0.5)
    matrix = confusion.confusion_matrix(outcomes, 3)
    expected = [
        [1, 0, 0, 0],  # cat: found
        [1, 0, 0, 0],  # dog: predicted cat
        [0, 0, 0, 1],  # car: missed
        [1, 1, 0, 0],  # background: the duplicate cat, the dog on nothing
    ]
    assert matrix.tolist() == expected
    (o,) = outcomes
    assert sorted(o.det_status) == sorted(["TP", "FP-dup", "FP-class", "FP", "ignored"])
    assert o.gt_status == ["TP", "FN-class", "FN", "crowd"]
    assert o.num_false_positives == 3 and o.num_missed == 1 and o.num_errors == 4
    assert confusion.duplicate_counts(outcomes, 3) == [1, 0, 0]
    # at threshold 0.25 the car is found
    low = confusion.confusion_matrix(confusion.image_outcomes(gt, dets, score_threshold=0.25), 3)
    assert low[2].tolist() == [0, 0, 1, 0]


def test_confusion_rows_sum_to_the_boxes_of_each_class():
    gt, dets = random_set(5, num_images=20)
    for threshold in (0.0, 0.5, 1.0):
        matrix = confusion.confusion_matrix(confusion.image_outcomes(gt, dets, score_threshold=threshold), 3)
        for k, cat in enumerate(gt.category_ids):
            assert matrix[k].sum() == len(gt.coco.getAnnIds(catIds=[cat], iscrowd=False))
        assert matrix[3, 3] == 0
    assert confusion.confusion_matrix(confusion.image_outcomes(gt, dets, score_threshold=1.1), 3)[3].sum() == 0


def test_size_view_bins_are_cocoeval_area_ranges():
    gt, dets = random_set(6, num_images=20)
    coco_dt, _ = standard(gt, dets)
    sizes = analysis.size_view(gt, coco_dt, edges=(0, 32, 96, 1e5))  # COCO's own three
    ref = pycocotools_eval(gt, dets, gt.category_ids)
    for i, key in enumerate((3, 4, 5)):
        expected = None if ref.stats[key] < 0 else 100 * ref.stats[key]
        assert sizes["AP"][i] == pytest.approx(expected)
    areas = [a["area"] for a in gt.coco.dataset["annotations"]]
    assert sizes["num_gt"] == [sum(a <= 32**2 for a in areas), sum(32**2 <= a <= 96**2 for a in areas), 0]
    outcomes = confusion.image_outcomes(gt, dets, score_threshold=0.0)
    recall = confusion.recall_by_size(outcomes, (0, 32, 96, 1e5))
    assert recall[2] is None and 0 < recall[0] <= 100


def test_size_bins_over_several_runs_equal_one_range_each():
    gt, dets = random_set(7, num_images=20)
    coco_dt, _ = standard(gt, dets)
    sizes = analysis.size_view(gt, coco_dt)  # more bins than one COCOeval run holds
    filled = [i for i, n in enumerate(sizes["num_gt"]) if n]
    assert len(filled) > analysis.BINS_PER_RUN
    for i in filled:
        lo, hi = sizes["edges"][i], sizes["edges"][i + 1]
        with contextlib.redirect_stdout(io.StringIO()):
            e = COCOeval(gt.coco, gt.coco.loadRes([dict(d) for d in dets]), iouType="bbox")
            e.params.areaRng, e.params.areaRngLbl = [[lo**2, hi**2]], ["bin"]
            e.evaluate()
            e.accumulate()
        p = e.eval["precision"][:, :, :, 0, -1]
        assert sizes["AP"][i] == pytest.approx(100 * p[p > -1].mean()), sizes["bins"][i]


def test_ground_truth_of_a_voc_set_and_of_a_coco_set():
    objects = [
        {"boxes": np.array([[10, 20, 40, 60], [0, 0, 5, 5]], np.float32), "labels": np.array([1, 0]),
         "difficult": np.array([False, True])},
        {"boxes": np.array([[1, 2, 3, 4]], np.float32), "labels": np.array([0]), "difficult": np.array([False])},
    ]  # fmt: skip
    voc = SimpleNamespace(
        kind="voc", class_names=["cat", "dog"], category_ids=[1, 2], image_ids=["000005", "000007"],
        image_sizes=[(100, 120), None], annotations=lambda i: objects[i],
    )  # fmt: skip
    gt = analysis.ground_truth_of(voc)
    assert gt.coco.dataset == {
        "images": [{"id": 1, "file_name": "000005.jpg", "height": 100, "width": 120},
                   {"id": 2, "file_name": "000007.jpg", "height": 0, "width": 0}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 2, "bbox": [10, 20, 30, 40], "area": 1200, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 1},  # difficult
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [1, 2, 2, 2], "area": 4, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }  # fmt: skip
    assert gt.coco.getAnnIds(imgIds=[1]) == [1, 2]  # indexed
    assert (gt.image_ids, gt.coco_image_ids, gt.class_names) == (["000005", "000007"], [1, 2], ["cat", "dog"])
    assert gt.supercategories == ["cat", "dog"] and gt.coco_id_of() == {"000005": 1, "000007": 2}
    assert gt.category_ids == [1, 2]
    # a COCO-format set: its own ground truth; a class without supercategory is its own
    coco = make_gt([], 2, [{"id": 1, "name": "cat", "supercategory": "animal"}, {"id": 4, "name": "ox"}]).coco
    ds = SimpleNamespace(kind="coco", class_names=["cat", "ox"], category_ids=[1, 4], image_ids=[1, 2], coco=coco)
    gt = analysis.ground_truth_of(ds)
    assert gt.coco is coco and gt.image_ids == gt.coco_image_ids == [1, 2] and gt.category_ids == [1, 4]
    assert gt.class_names == ["cat", "ox"]
    assert gt.supercategories == ["animal", "ox"]


def test_pr_curves_and_operating_points_worked_by_hand():
    # cat: 11 detections on nothing, then one on its box (rank 12): precision 1/12 at every recall, but
    # only with 100 detections per image (with 10 or 1 it is never found).
    # car: its box B found (0.8), one on nothing (0.7), box C at IoU 2/3 (0.6): at IoU .5 recall .5 with
    # precision 1 then recall 1 with 2/3; at IoU .75 recall stops at .5. dog: no ground truth.
    a, b, c = [10, 10, 20, 20], [50, 50, 30, 30], [5, 60, 20, 20]
    gt = make_gt([{"image_id": 1, "category_id": 1, "bbox": a}, {"image_id": 1, "category_id": 5, "bbox": b},
                  {"image_id": 1, "category_id": 5, "bbox": c}], 1)  # fmt: skip
    dets = [{"image_id": 1, "category_id": 1, "bbox": [80, 60, 10, 10], "score": 0.9 - 0.01 * i} for i in range(11)]
    dets += [
        {"image_id": 1, "category_id": 1, "bbox": a, "score": 0.3},
        {"image_id": 1, "category_id": 5, "bbox": b, "score": 0.8},
        {"image_id": 1, "category_id": 5, "bbox": [90, 5, 20, 15], "score": 0.7},
        {"image_id": 1, "category_id": 5, "bbox": [5, 60, 20, 30], "score": 0.6},
    ]
    _, ev = standard(gt, dets)
    pr = analysis.pr_curves(gt, ev, score_threshold=0.3)
    assert pr["recall"] == [i / 100 for i in range(101)] and pr["iou"] == [0.5, 0.75]
    assert pr["per_class"]["cat"] == {"0.5": [0.0833] * 101, "0.75": [0.0833] * 101}
    assert pr["per_class"]["car"] == {"0.5": [1.0] * 51 + [0.6667] * 50, "0.75": [1.0] * 51 + [0.0] * 50}
    assert pr["per_class"]["dog"] == {"0.5": None, "0.75": None}
    table = analysis.per_class_table(gt, ev, dets)
    assert table["cat"]["AP50"] == pytest.approx(100 / 12) and table["cat"]["num_det"] == 12
    # the mean of cat and car, rounded after averaging: (1/12 + 1) / 2, (1/12 + 2/3) / 2, 1/24
    assert pr["overall"] == {"0.5": [0.5417] * 51 + [0.375] * 50, "0.75": [0.5417] * 51 + [0.0417] * 50}
    points = pr["operating_points"]
    assert points["per_class"]["cat"] == {"0.5": pytest.approx([1.0, 1 / 12]), "0.75": pytest.approx([1.0, 1 / 12])}
    assert points["per_class"]["car"] == {"0.5": pytest.approx([1.0, 2 / 3]), "0.75": pytest.approx([0.5, 1.0])}
    assert points["per_class"]["dog"] == {"0.5": None, "0.75": None}
    assert points["overall"] == {"0.5": pytest.approx([1.0, 0.375]), "0.75": pytest.approx([0.75, 13 / 24])}
    # threshold 0.5: cat's hit scores 0.3; recall 0 is reached by its first detection (precision there is
    # COCOeval's envelope, 1/12)
    points = analysis.pr_curves(gt, ev, score_threshold=0.5)["operating_points"]
    assert points["per_class"]["cat"]["0.5"] == pytest.approx([0.0, 1 / 12])
    assert points["overall"]["0.5"] == pytest.approx([0.5, 0.375])
    # above every score: no operating point, each class counts as [0, 0] in the mean
    points = analysis.pr_curves(gt, ev, score_threshold=0.95)["operating_points"]
    assert points["per_class"]["cat"]["0.5"] is None and points["overall"]["0.5"] == [0.0, 0.0]
    # threshold 0: points where recall is not reached (precision 0, score 0) are not operating points
    points = analysis.pr_curves(gt, ev, score_threshold=0.0)["operating_points"]
    assert points["per_class"]["car"]["0.75"] == pytest.approx([0.5, 1.0])
    # no ground truth at all: nothing to average
    empty = make_gt([], 1)
    pr = analysis.pr_curves(empty, standard(empty, [])[1], score_threshold=0.5)
    assert pr["overall"] == {"0.5": None, "0.75": None}
    assert pr["operating_points"]["overall"] == {"0.5": None, "0.75": None}


def test_confusion_counts_add_up_over_detections_and_images():
    box = [10, 10, 20, 20]
    gt = make_gt([{"image_id": i, "category_id": 1, "bbox": box} for i in (1, 2)], 2)
    dets = []
    for i in (1, 2):  # per image: a cat found, a cat duplicate, two dogs on nothing
        dets += [{"image_id": i, "category_id": 1, "bbox": box, "score": 0.9},
                 {"image_id": i, "category_id": 1, "bbox": [11, 10, 20, 20], "score": 0.8},
                 {"image_id": i, "category_id": 2, "bbox": [60, 60, 10, 10], "score": 0.7},
                 {"image_id": i, "category_id": 2, "bbox": [90, 60, 10, 10], "score": 0.7}]  # fmt: skip
    outcomes = confusion.image_outcomes(gt, dets)
    matrix = confusion.confusion_matrix(outcomes, 3)
    assert matrix.dtype == np.int64
    assert matrix.tolist() == [[2, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [2, 4, 0, 0]]
    counts = confusion.duplicate_counts(outcomes, 3)
    assert counts == [2, 0, 0] and all(type(n) is int for n in counts)


def test_match_image_at_the_iou_boundary_in_score_order():
    cat_box, crowd, dog_box = [0, 0, 20, 10], [100, 0, 10, 10], [50, 50, 20, 20]
    dets = [  # (box, label, score), not in score order
        ([50, 50, 20, 10], 1, 0.5),  # IoU exactly 0.5 with the dog: found
        ([95, 0, 10, 10], 0, 0.7),  # half inside the crowd region: ignored
        (cat_box, 0, 0.9),  # the cat
        (cat_box, 1, 0.6),  # a dog on the found cat: a false positive, not a duplicate
        ([0, 0, 10, 10], 0, 0.8),  # IoU exactly 0.5 with the found cat: a duplicate
    ]
    boxes, labels, scores = zip(*dets)
    o = confusion.match_image(7, [cat_box, crowd, dog_box], [0, 0, 1], [False, True, False], boxes, labels, scores)
    assert o.det_scores.tolist() == [0.9, 0.8, 0.7, 0.6, 0.5]
    assert o.det_status == ["TP", "FP-dup", "ignored", "FP", "TP"]
    assert o.det_match.tolist() == [0, -1, -1, -1, 2]
    assert o.gt_status == ["TP", "crowd", "TP"]
    assert o.image_id == 7 and o.gt_boxes.tolist() == [cat_box, crowd, dog_box]
    assert o.gt_areas.tolist() == [200, 100, 400]  # w * h by default
    given = confusion.match_image(7, [cat_box], [0], [False], [], [], [], gt_areas=[150.0])
    assert given.gt_areas.tolist() == [150.0] and given.gt_status == ["FN"]


def test_match_image_keeps_tied_scores_in_their_order():
    scores = (np.random.default_rng(0).integers(0, 3, 40) / 2).tolist()  # many ties
    boxes = [[3.0 * i, 0.0, 2.0, 2.0] for i in range(40)]
    o = confusion.match_image(1, [], [], [], boxes, [0] * 40, scores)
    expected = sorted(range(40), key=lambda i: -scores[i])  # sorted() is stable
    assert o.det_boxes[:, 0].tolist() == [boxes[i][0] for i in expected]


def test_recall_by_size_bins_include_both_edges():
    boxes = {
        "b1": ([0, 0, 32, 32], True),  # area 1024 = 32^2: in both bins around 32
        "b2": ([40, 0, 40, 50], False),  # area 2000
        "b4": ([0, 40, 10, 10], False),  # area 100
        "b5": ([20, 40, 20, 20], True),  # area 400
    }
    gt = [b for b, _ in boxes.values()] + [[100, 0, 10, 10]]  # and a crowd region of area 100
    found = [b for b, hit in boxes.values() if hit]
    o = confusion.match_image(1, gt, [0] * 5, [False] * 4 + [True], found, [0] * len(found), [0.9] * len(found))
    recall = confusion.recall_by_size([o], (0, 32, 96, 1e5))
    assert recall == [pytest.approx(200 / 3), pytest.approx(50.0), None]  # b1, b4, b5 | b1, b2 | none
    empty_image = confusion.match_image(2, [], [], [], [], [], [])
    assert confusion.recall_by_size([empty_image], (0, 32)) == [None]
    assert confusion.recall_by_size([], (0, 32)) == [None]


def test_size_view_fills_every_bin_and_counts_edge_boxes_in_both():
    sides = [6, 14, 20, 28, 32, 40, 56, 80, 112, 200, 300]  # one box per bin, 32 on an edge
    gt = make_gt([{"image_id": i + 1, "category_id": 1, "bbox": [0, 0, s, s]} for i, s in enumerate(sides)], len(sides))
    dets = [{"image_id": i + 1, "category_id": 1, "bbox": [0, 0, s, s], "score": 0.9} for i, s in enumerate(sides)]
    sizes = analysis.size_view(gt, analysis.detections_coco(gt, dets))  # 10 bins: three COCOeval runs
    assert sizes["bins"] == ["0-12", "12-16", "16-24", "24-32", "32-48", "48-64", "64-96", "96-128", "128-256", ">256"]
    assert sizes["num_gt"] == [1, 1, 1, 2, 2, 1, 1, 1, 1, 1]
    for key in ("AP", "AP50", "recall50"):
        assert sizes[key] == [pytest.approx(100.0)] * 10, key


OWL = {"id": 3, "name": "owl", "supercategory": "animal"}


def test_error_breakdown_worked_by_hand_with_one_supercategory():
    # cat, dog, owl all animals (Oth is Sim); owl has no ground truth. Image 1: cat A, dog D; image 2:
    # cat B, never detected. Cat detections: on D (0.95), on nothing (0.93), on A (0.9): precision 1/3
    # at recall 1/2; Sim ignores the one on D: 1/2; BG ignores the other: 1 up to recall 1/2, 0 beyond.
    a, d, b = [10, 10, 20, 20], [60, 10, 30, 40], [10, 10, 20, 20]
    gt = make_gt([{"image_id": 1, "category_id": 1, "bbox": a}, {"image_id": 1, "category_id": 2, "bbox": d},
                  {"image_id": 2, "category_id": 1, "bbox": b}], 2, CATEGORIES[:2] + [OWL])  # fmt: skip
    dets = [{"image_id": 1, "category_id": 1, "bbox": d, "score": 0.95},
            {"image_id": 1, "category_id": 1, "bbox": [20, 60, 10, 10], "score": 0.93},
            {"image_id": 1, "category_id": 1, "bbox": a, "score": 0.9},
            {"image_id": 1, "category_id": 3, "bbox": a, "score": 0.7}]  # fmt: skip
    coco_dt, ev = standard(gt, dets)
    curves = error_breakdown.error_curves(gt, coco_dt, ev)
    for key in ("BG", "FN"):
        assert (curves[key][:, 2] == -1).all(), key  # owl: no ground truth
    errors = error_breakdown.error_breakdown(gt, curves)
    reached = 51 / 101  # recall points 0 .. 0.5
    cat = [100 * reached / 3] * 3 + [100 * reached / 2] * 2 + [100 * reached, 100]
    assert [errors["per_class"]["cat"][k] for k in error_breakdown.ERROR_KEYS] == pytest.approx(cat)
    assert [errors["per_class"]["dog"][k] for k in error_breakdown.ERROR_KEYS] == [0, 0, 0, 0, 0, 0, 100]
    assert errors["per_class"]["owl"] == dict.fromkeys(error_breakdown.ERROR_KEYS)
    overall = [(c + g) / 2 for c, g in zip(cat, [0, 0, 0, 0, 0, 0, 100])]  # owl left out
    assert [errors["overall"][k] for k in error_breakdown.ERROR_KEYS] == pytest.approx(overall)
    drawn = errors["curves"]
    assert drawn["per_class"]["cat"]["Loc"] == [0.3333] * 51 + [0.0] * 50
    assert drawn["per_class"]["cat"]["BG"] == [1.0] * 51 + [0.0] * 50
    assert drawn["per_class"]["owl"] == dict.fromkeys(error_breakdown.ERROR_KEYS)
    assert drawn["overall"]["Loc"] == [0.1667] * 51 + [0.0] * 50
    assert drawn["overall"]["FN"] == [1.0] * 101
    # a set without any ground truth: nothing to average
    empty = make_gt([], 1)
    coco_dt, ev = standard(empty, [])
    errors = error_breakdown.error_breakdown(empty, error_breakdown.error_curves(empty, coco_dt, ev))
    assert errors["overall"] == dict.fromkeys(error_breakdown.ERROR_KEYS)
    assert errors["curves"]["overall"] == dict.fromkeys(error_breakdown.ERROR_KEYS)


def test_error_curves_count_the_100_best_detections_of_an_image_and_tiny_boxes():
    # image 1: 100 cats on nothing, then the cat (rank 101, not counted); image 2: 11 dogs on nothing, then
    # the dog (rank 12: precision 1/12, lost if only 10 counted); image 3: a car of 0.5 x 0.5 px, found.
    cat, dog, car = [10, 10, 20, 20], [60, 10, 30, 40], [5, 5, 0.5, 0.5]
    gt = make_gt([{"image_id": 1, "category_id": 1, "bbox": cat}, {"image_id": 2, "category_id": 2, "bbox": dog},
                  {"image_id": 3, "category_id": 5, "bbox": car}], 3)  # fmt: skip
    dets = [{"image_id": 1, "category_id": 1, "bbox": [50, 60, 10, 10], "score": 0.99 - 0.001 * i} for i in range(100)]
    dets += [{"image_id": 2, "category_id": 2, "bbox": [0, 60, 10, 10], "score": 0.99 - 0.01 * i} for i in range(11)]
    dets += [{"image_id": 1, "category_id": 1, "bbox": cat, "score": 0.5},
             {"image_id": 2, "category_id": 2, "bbox": dog, "score": 0.5},
             {"image_id": 3, "category_id": 5, "bbox": car, "score": 0.5}]  # fmt: skip
    coco_dt, ev = standard(gt, dets)
    errors = error_breakdown.error_breakdown(gt, error_breakdown.error_curves(gt, coco_dt, ev))
    assert [errors["per_class"]["cat"][k] for k in error_breakdown.ERROR_KEYS] == [0, 0, 0, 0, 0, 0, 100]
    assert [errors["per_class"]["dog"][k] for k in error_breakdown.ERROR_KEYS] == pytest.approx(
        [100 / 12] * 5 + [100, 100]
    )
    assert [errors["per_class"]["car"][k] for k in error_breakdown.ERROR_KEYS] == pytest.approx([100] * 7)
    # the size view counts the same 100: recall at IoU .5 is 0 for cat, 1 for dog and car
    assert analysis.size_view(gt, coco_dt, edges=(0, 1e5))["recall50"] == [pytest.approx(200 / 3)]


def test_the_report_runs_the_backend_asked_for(faster_coco_eval_runs):
    runs = faster_coco_eval_runs
    gt, dets = random_set(0)
    coco_dt, ev = standard(gt, dets)
    error_breakdown.error_curves(gt, coco_dt, ev, backend="faster_coco_eval")
    assert len(runs) == 6  # Loc; Sim and Oth of cat and of dog; Oth of car (alone in its supercategory)
    analysis.size_view(gt, coco_dt, backend="faster_coco_eval", edges=(0, 32, 96, 1e5))
    assert len(runs) == 7


def test_image_outcomes_read_the_annotations_area_crowd_flag_and_thresholds():
    gt = make_gt([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 10], "area": 150.0}], 1)
    del gt.coco.anns[1]["iscrowd"]  # optional in COCO files: not a crowd region
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 12, 10], "score": 0.5}]  # IoU 0.6
    (o,) = confusion.image_outcomes(gt, dets, score_threshold=0.5)  # a score equal to the threshold counts
    assert o.image_id == 1 and o.gt_status == ["TP"] and o.gt_areas.tolist() == [150.0]  # the annotated area
    (o,) = confusion.image_outcomes(gt, dets, iou=0.75, score_threshold=0.5)
    assert o.gt_status == ["FN"] and o.det_status == ["FP"]


def test_evaluated_boxes_leave_out_crowds_other_images_and_classes():
    box = [10, 10, 20, 20]
    coco = make_gt([{"image_id": 1, "category_id": 1, "bbox": box}, {"image_id": 1, "category_id": 1, "bbox": box, "iscrowd": 1},
                    {"image_id": 2, "category_id": 1, "bbox": box}, {"image_id": 1, "category_id": 5, "bbox": box}], 2).coco  # fmt: skip
    del coco.anns[1]["iscrowd"]  # optional: not a crowd region
    gt = analysis.GroundTruth(coco, [1], [1], ["cat", "dog"], [1, 2], ["animal", "animal"])  # image 1, no car
    assert [a["id"] for a in analysis.evaluated_boxes(gt)] == [1]
