"""The VOC evaluator against AP values worked out by hand."""

import numpy as np
import pytest
import torch

from detkit.errors import UserError
from detkit.evaluation.voc import VOCEvaluator, evaluate_voc_results, voc_ap, voc_iou

CLASSES = ["cat", "dog"]


def ann(image_id, boxes, labels, difficult=None):
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return {
        "image_id": image_id,
        "boxes": boxes,
        "labels": np.asarray(labels, dtype=np.int64),
        "difficult": np.zeros(len(boxes), bool) if difficult is None else np.asarray(difficult, bool),
    }


def det(image_id, box_xyxy, score, label=0):
    x0, y0, x1, y1 = box_xyxy
    return {"image_id": image_id, "category_id": label + 1, "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score}


def run(results, annotations, use_11_point):
    return evaluate_voc_results(results, annotations, CLASSES, use_11_point)


GT1, GT2 = [10, 10, 50, 60], [100, 40, 160, 90]


@pytest.mark.parametrize("use_11_point", [True, False])
def test_perfect_detections_score_100(use_11_point):
    anns = [ann("a", [GT1, GT2], [0, 1]), ann("b", [GT2], [0])]
    results = [det("a", GT1, 0.9, 0), det("a", GT2, 0.8, 1), det("b", GT2, 0.7, 0)]
    m = run(results, anns, use_11_point)
    assert m["AP50"] == pytest.approx(100.0)
    assert m["AP"] == pytest.approx(100.0)  # IoU 1 passes every threshold up to 0.95
    assert m["per_class"] == {"cat": pytest.approx(100.0), "dog": pytest.approx(100.0)}


@pytest.mark.parametrize("use_11_point, expected", [(True, 100 * 28 / 33), (False, 100 * 5 / 6)])
def test_duplicate_detection_is_a_false_positive(use_11_point, expected):
    # Ranked: TP (GT1), duplicate of GT1 -> FP, TP (GT2); npos = 2.
    # recall .5, .5, 1; precision 1, 1/2, 2/3.
    # 11-point: r = 0..0.5 (6 points) -> 1, r = 0.6..1 (5 points) -> 2/3: (6 + 10/3) / 11 = 28/33.
    # area: envelope 1 up to recall .5, then 2/3: .5 * 1 + .5 * 2/3 = 5/6.
    anns = [ann("a", [GT1, GT2], [0, 0])]
    results = [det("a", GT1, 0.9), det("a", GT1, 0.8), det("a", GT2, 0.7)]
    m = run(results, anns, use_11_point)
    assert m["AP50"] == pytest.approx(expected)
    assert m["per_class"]["cat"] == pytest.approx(expected)
    assert m["per_class"]["dog"] is None
    # Without the duplicate, both detections are TPs.
    assert run([results[0], results[2]], anns, use_11_point)["AP50"] == pytest.approx(100.0)


@pytest.mark.parametrize("use_11_point", [True, False])
def test_detection_on_difficult_object_changes_nothing(use_11_point):
    anns = [ann("a", [GT1, GT2], [0, 0], difficult=[False, True])]
    false_positive = det("a", [300, 300, 340, 340], 0.95)
    base = [false_positive, det("a", GT1, 0.6)]  # FP then TP: precision 1/2 at recall 1 -> AP 50
    with_difficult = base + [det("a", GT2, 0.8)]
    m0, m1 = run(base, anns, use_11_point), run(with_difficult, anns, use_11_point)
    assert m0["AP50"] == pytest.approx(50.0)
    assert m1["AP50"] == m0["AP50"] and m1["AP"] == m0["AP"]


def test_voc_ap_on_hand_computed_curve():
    # TP TP FP TP TP with 5 positives.
    recall = [0.2, 0.4, 0.4, 0.6, 0.8]
    precision = [1.0, 1.0, 2 / 3, 3 / 4, 4 / 5]
    # 11-point: r = 0..0.4 -> 1 (5 points), r = 0.5..0.8 -> 0.8 (4 points), r = 0.9, 1 -> 0: 8.2 / 11.
    assert voc_ap(recall, precision, use_11_point=True) == pytest.approx(8.2 / 11)
    # area: envelope 1, 1, .8, .8, .8: .2 + .2 + .2 * .8 + .2 * .8 = .72 (precision 0 beyond recall .8).
    assert voc_ap(recall, precision, use_11_point=False) == pytest.approx(0.72)
    assert voc_ap([], [], True) == 0.0 and voc_ap([], [], False) == 0.0


def test_11_point_counts_recall_of_exactly_three_tenths():
    # recall 0.3 must reach the 0.3 sample (0.1 * 3 in floats is 0.30000000000000004).
    assert voc_ap([0.3], [1.0], use_11_point=True) == pytest.approx(4 / 11)


def test_class_without_ground_truth_is_absent_and_left_out_of_the_mean():
    # dog: no objects at all; its detections cannot count. cat: perfect.
    anns = [ann("a", [GT1], [0]), ann("b", [GT2], [0])]
    results = [det("a", GT1, 0.9, 0), det("b", GT2, 0.9, 0), det("a", GT2, 0.99, 1)]
    m = run(results, anns, False)
    assert m["per_class"]["dog"] is None
    assert m["AP50"] == pytest.approx(100.0) and m["AP"] == pytest.approx(100.0)


@pytest.mark.parametrize("flags", [[0, 1], np.array([0, 1], dtype=np.uint8)])
def test_difficult_given_as_0_1_integers_reads_as_bool(flags):
    # `~` on integer flags would give -1 / -2 (both true) instead of True / False.
    anns = [{**ann("a", [GT1, GT2], [0, 0]), "difficult": flags}]
    results = [det("a", [300, 300, 340, 340], 0.95), det("a", GT2, 0.8), det("a", GT1, 0.6)]
    m = run(results, anns, False)
    assert m["AP50"] == pytest.approx(50.0)  # GT2 is difficult: FP, (ignored), TP over 1 positive


def test_class_with_only_difficult_objects_is_absent():
    anns = [ann("a", [GT1, GT2], [0, 1], difficult=[False, True])]
    m = run([det("a", GT1, 0.9, 0)], anns, True)
    assert m["per_class"] == {"cat": pytest.approx(100.0), "dog": None}


def test_continuous_detection_equal_to_ground_truth_has_iou_1():
    gt = np.array([[10.0, 20.0, 50.0, 80.0]])
    corners = gt + np.array([1, 1, 0, 0])
    assert voc_iou(corners, corners)[0, 0] == 1.0
    m = run([det("a", gt[0].tolist(), 0.5)], [ann("a", gt, [0])], False)
    assert m["AP50"] == 100.0 and m["AP"] == 100.0


def test_pixel_inclusive_iou():
    # continuous [0, 0, 2, 2] is the VOC box [1, 1, 2, 2] (4 pixels); [0, 0, 1, 1] is the pixel [1, 1, 1, 1].
    a = np.array([[1.0, 1.0, 2.0, 2.0]])
    b = np.array([[1.0, 1.0, 1.0, 1.0], [3.0, 1.0, 3.0, 1.0]])
    np.testing.assert_allclose(voc_iou(a, b), [[0.25, 0.0]])


def test_boxes_apart_along_either_axis_have_iou_0():
    """VOC [1, 1, 10, 10] against boxes 10 px away along x, y and both: no intersection, whatever the other axis."""
    a = np.array([[1.0, 1.0, 10.0, 10.0]])
    b = np.array([[21.0, 1.0, 30.0, 10.0], [1.0, 21.0, 10.0, 30.0], [21.0, 21.0, 30.0, 30.0]])
    np.testing.assert_array_equal(voc_iou(a, b), [[0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(voc_iou(b, a), [[0.0], [0.0], [0.0]])


def test_objects_of_different_images_are_different_objects():
    """Image "a" holds one cat, "b" two: detections on a's cat and on b's second cat are two true positives
    (recall 2/3 at precision 1: area AP 66.7), not one object taken twice."""
    anns = [ann("a", [GT1], [0]), ann("b", [GT1, GT2], [0, 0])]
    m = run([det("a", GT1, 0.9), det("b", GT2, 0.8)], anns, False)
    assert m["per_class"]["cat"] == pytest.approx(100 * 2 / 3)


def test_images_without_the_class_do_not_stop_the_matching():
    """The first image has only a dog; the cat detection on the second image is still matched (AP 100),
    and the cat detection on the first, ranked below it, is a false positive after full recall."""
    anns = [ann("a", [GT1], [1]), ann("b", [GT2], [0])]
    m = run([det("a", GT1, 0.5), det("b", GT2, 0.9)], anns, False)
    assert m["per_class"]["cat"] == pytest.approx(100.0)


def test_year_picks_the_measure_2010_is_the_first_area_year():
    anns = [ann("a", [GT1], [0])]
    rule = {year: VOCEvaluator(dataset_annotations=anns, class_names=CLASSES, year=year).use_11_point
            for year in (2007, 2009, 2010, 2012, None)}
    assert rule == {2007: True, 2009: True, 2010: False, 2012: False, None: False}
    # evaluate_voc_results decides by the year too: TP, FP, missed object -> 11-point 6/11, area 1/2
    anns = [ann("a", [GT1, GT2], [0, 0])]
    results = [det("a", GT1, 0.9), det("a", [300, 300, 310, 310], 0.8)]
    ap = {year: evaluate_voc_results(results, anns, CLASSES, None, year=year)["AP50"] for year in (2007, 2012)}
    assert ap == {2007: pytest.approx(100 * 6 / 11), 2012: pytest.approx(50.0)}


def test_threshold_is_strict_and_sweep_uses_the_same_rule():
    gt = [0, 0, 10, 10]  # VOC [1, 1, 10, 10]: 100 pixels
    half = run([det("a", [0, 0, 10, 5], 0.9)], [ann("a", [gt], [0])], False)  # IoU exactly 0.5
    assert half["AP50"] == 0.0
    # IoU exactly 0.8: matched at the 6 thresholds .50 ... .75 (IoU > t), not at .80 ... .95 -> AP 6/10.
    m = run([det("a", [0, 0, 10, 8], 0.9)], [ann("a", [gt], [0])], False)
    assert m["AP50"] == 100.0
    assert m["AP"] == pytest.approx(60.0)


def test_evaluator_matches_results_function_and_reads_year():
    anns = [ann("a", [GT1, GT2], [0, 1]), ann("b", [GT2], [0])]

    class FakeDataset:
        year = 2007

        def annotations(self, image_id):
            return {a["image_id"]: a for a in anns}[image_id]

    evaluator = VOCEvaluator(dataset_annotations=FakeDataset().annotations, class_names=CLASSES)
    assert evaluator.use_11_point is True
    targets = [{"image_id": "a"}, {"image_id": "b"}]
    outputs = [
        {
            "boxes": torch.tensor([GT1, GT1, GT2], dtype=torch.float32),
            "scores": torch.tensor([0.9, 0.8, 0.7]),
            "labels": torch.tensor([0, 0, 1]),
        },
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    evaluator.process(targets, outputs)
    m = evaluator.evaluate()
    # cat: TP then duplicate FP, GT in "b" missed: recall .5 -> 11-point 6/11; dog: perfect.
    assert m["per_class"]["cat"] == pytest.approx(100 * 6 / 11)
    assert m["per_class"]["dog"] == pytest.approx(100.0)
    assert m == run(evaluator.results, anns, True)
    assert {r["image_id"] for r in evaluator.results} == {"a"}
    evaluator.reset()
    assert evaluator.results == []
    assert VOCEvaluator(dataset_annotations=anns, class_names=CLASSES, year=2012).use_11_point is False


def test_results_outside_the_set_raise_user_error():
    anns = [ann("a", [GT1], [0])]
    with pytest.raises(UserError, match="'zzz'"):
        run([det("zzz", GT1, 0.9)], anns, True)
    with pytest.raises(UserError, match="category_id 21"):
        run([det("a", GT1, 0.9, label=20)], anns, True)
    with pytest.raises(UserError, match="category_id 3"):  # one past the last class (2 classes: ids 1, 2)
        run([det("a", GT1, 0.9, label=2)], anns, True)


def test_prints_per_class_table(capsys):
    anns = [ann("a", [GT1, GT2], [0, 0])]
    run([det("a", GT1, 0.9), det("a", GT1, 0.8), det("a", GT2, 0.7)], anns, True)
    out = capsys.readouterr().out
    assert "cat" in out and "dog" in out and "84.8" in out


def sequential_ap50(results, anns, use_11_point, cls=0):
    """The VOC rule written as a plain loop over ranked detections (independent of the vectorized code)."""
    gts = {}
    for a in anns:
        mask = a["labels"] == cls
        gts[a["image_id"]] = (a["boxes"][mask] + np.array([1, 1, 0, 0]), a["difficult"][mask])
    taken = {k: np.zeros(len(v[1]), bool) for k, v in gts.items()}
    npos = sum(int((~d).sum()) for _, d in gts.values())
    tp, fp = [], []
    for r in sorted((r for r in results if r["category_id"] == cls + 1), key=lambda r: -r["score"]):
        x, y, w, h = r["bbox"]
        boxes, difficult = gts[r["image_id"]]
        best, j = 0.0, -1
        for k, g in enumerate(boxes):
            iw = min(x + w, g[2]) - max(x + 1, g[0]) + 1
            ih = min(y + h, g[3]) - max(y + 1, g[1]) + 1
            if iw > 0 and ih > 0:
                inter = iw * ih
                iou = inter / (w * h + (g[2] - g[0] + 1) * (g[3] - g[1] + 1) - inter)
                if iou > best:
                    best, j = iou, k
        if best > 0.5 and difficult[j]:
            continue
        hit = best > 0.5 and not taken[r["image_id"]][j]
        if hit:
            taken[r["image_id"]][j] = True
        tp.append(hit)
        fp.append(not hit)
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    return 100 * plain_ap(list(tp / npos), list(tp / np.maximum(tp + fp, 1)), use_11_point)


def plain_ap(recall: list, precision: list, use_11_point: bool) -> float:
    """The two VOC AP rules as loops over the ranked list (the devkit's definitions, not `voc_ap`)."""
    def best_precision_from(r):
        return max([p for rc, p in zip(recall, precision) if rc >= r], default=0.0)

    if use_11_point:
        return sum(best_precision_from(t / 10) for t in range(11)) / 11
    area, previous = 0.0, 0.0
    for rc in recall:  # each rise in recall counts with the best precision at that recall or beyond
        if rc > previous:
            area += (rc - previous) * best_precision_from(rc)
            previous = rc
    return area


@pytest.mark.parametrize("use_11_point", [True, False])
def test_matches_a_sequential_implementation_on_random_data(use_11_point):
    rng = np.random.default_rng(0)
    anns, results = [], []
    for i in range(6):
        xy = rng.uniform(0, 200, (5, 2)).round()
        boxes = np.concatenate([xy, xy + rng.uniform(10, 60, (5, 2)).round()], axis=1)
        anns.append(ann(str(i), boxes, np.zeros(5, int), difficult=rng.random(5) < 0.2))
        for b in boxes:
            for _ in range(rng.integers(0, 3)):  # 0-2 noisy detections per object: duplicates and misses
                x0, y0, x1, y1 = b + rng.normal(0, 6, 4)
                results.append(det(str(i), [x0, y0, x1, y1], float(rng.random()), 0))
    got = run(results, anns, use_11_point)["per_class"]["cat"]
    assert got == pytest.approx(sequential_ap50(results, anns, use_11_point))
    assert 20 < got < 95


def test_no_ground_truth_at_all_scores_0():
    m = run([det("a", GT1, 0.9)], [ann("a", np.zeros((0, 4)), [])], False)
    assert m == {"AP50": 0.0, "AP": 0.0, "per_class": {"cat": None, "dog": None}}


def test_evaluator_explicit_measure_wins_over_the_year():
    evaluator = VOCEvaluator(dataset_annotations=[ann("a", [GT1], [0])], class_names=CLASSES,
                             use_11_point=True, year=2012)
    assert evaluator.use_11_point is True and evaluator.year == 2012


def test_misuse_raises_clear_errors():
    with pytest.raises(ValueError, match="image_ids is required when annotations is a callable"):
        evaluate_voc_results([], lambda image_id: ann(image_id, [GT1], [0]), CLASSES, True)
    evaluator = VOCEvaluator(dataset_annotations=[ann("a", [GT1], [0])], class_names=CLASSES)
    with pytest.raises(ValueError, match=r"evaluate\(\) called before any process\(\)"):
        evaluator.evaluate()
    with pytest.raises(ValueError, match="2 targets but 1 outputs"):
        evaluator.process([{"image_id": "a"}, {"image_id": "b"}], [{}])
