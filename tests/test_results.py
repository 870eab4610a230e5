"""Results files: conversion to the COCO results format, atomic save, validated load."""

import json
import math

import numpy as np
import pytest
import torch

from detkit.errors import UserError
from detkit.evaluation.results import load_results, save_results, to_coco_results


def test_to_coco_results_converts_and_rounds():
    output = {
        "boxes": torch.tensor([[10.123, 20.0, 30.456, 60.0], [0.0, 0.0, 5.0, 5.0]]),
        "scores": torch.tensor([0.912345678, 0.5]),
        "labels": torch.tensor([1, 0]),
    }
    res = to_coco_results(np.int64(42), output, category_ids=[3, 7])
    assert res[0] == {"image_id": 42, "category_id": 7, "bbox": [10.12, 20.0, 20.33, 40.0], "score": 0.91235}
    assert res[1]["category_id"] == 3 and res[1]["bbox"] == [0.0, 0.0, 5.0, 5.0]
    assert type(res[0]["image_id"]) is int and all(type(v) is float for v in res[0]["bbox"])


def test_voc_ids_and_numpy_input():
    output = {"boxes": np.array([[1.0, 2.0, 3.0, 4.0]]), "scores": np.array([0.3]), "labels": np.array([19])}
    (res,) = to_coco_results("000005", output, category_ids=list(range(1, 21)))
    assert res["image_id"] == "000005" and res["category_id"] == 20
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    assert to_coco_results(1, empty, [1]) == []
    with pytest.raises(ValueError):
        to_coco_results(1, {"boxes": torch.zeros(1, 4), "scores": torch.ones(1), "labels": torch.tensor([2])}, [1, 2])


def test_save_load_round_trip(tmp_path):
    results = [
        {"image_id": 1, "category_id": 3, "bbox": [1.5, 2.0, 3.25, 4.0], "score": 0.9},
        {"image_id": "000005", "category_id": 20, "bbox": [0.0, 0.0, 0.0, 0.0], "score": 0.05},
    ]
    path = tmp_path / "out" / "detections.json"
    save_results(path, results)
    assert load_results(path) == results
    assert [p.name for p in path.parent.iterdir()] == ["detections.json"]  # no temporary left behind
    save_results(path, [])
    assert load_results(path) == []


def write(path, data):
    path.write_text(json.dumps(data))
    return path


GOOD = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}


def test_load_rejects_non_list(tmp_path):
    path = write(tmp_path / "dets.json", {"annotations": []})
    with pytest.raises(UserError, match="dets.json.*list"):
        load_results(path)


def test_load_rejects_missing_key(tmp_path):
    bad = {k: v for k, v in GOOD.items() if k != "score"}
    path = write(tmp_path / "dets.json", [GOOD, bad, bad])
    with pytest.raises(UserError, match=r"dets.json: entry 1 misses key\(s\) score"):
        load_results(path)


def test_load_rejects_nan_box(tmp_path):
    path = write(tmp_path / "dets.json", [GOOD, GOOD, dict(GOOD, bbox=[0, math.nan, 1, 1])])
    with pytest.raises(UserError, match="dets.json: entry 2 has a non-finite bbox"):
        load_results(path)
    path = write(tmp_path / "dets.json", [dict(GOOD, score=math.inf)])
    with pytest.raises(UserError, match="entry 0"):
        load_results(path)


def test_load_rejects_missing_and_corrupt_files(tmp_path):
    with pytest.raises(UserError, match="missing.json"):
        load_results(tmp_path / "missing.json")
    (tmp_path / "corrupt.json").write_text("[{")
    with pytest.raises(UserError, match="corrupt.json"):
        load_results(tmp_path / "corrupt.json")


def test_save_refuses_nan(tmp_path):
    with pytest.raises(ValueError):
        save_results(tmp_path / "d.json", [dict(GOOD, score=math.nan)])
    assert list(tmp_path.iterdir()) == []


def test_tensors_that_require_grad_and_bad_image_ids():
    boxes = torch.tensor([[1.0, 2.0, 4.0, 8.0]], requires_grad=True)  # a model run outside torch.no_grad()
    output = {"boxes": boxes, "scores": torch.tensor([0.5], requires_grad=True), "labels": torch.tensor([0])}
    (res,) = to_coco_results(3, output, category_ids=[1])
    assert res == {"image_id": 3, "category_id": 1, "bbox": [1.0, 2.0, 3.0, 6.0], "score": 0.5}
    for bad, shown in ((True, "bool True"), (1.0, "float 1.0")):
        with pytest.raises(TypeError, match=f"image_id must be an int or a str, got {shown}"):
            to_coco_results(bad, output, category_ids=[1])
    output["scores"] = torch.tensor([0.5, 0.4])
    with pytest.raises(ValueError, match="output sizes differ: 1 boxes, 2 scores, 1 labels"):
        to_coco_results(3, output, category_ids=[1])


@pytest.mark.parametrize(
    "entry, problem",
    [
        ([1, 2], "is a list, not an object"),
        ({"image_id": 1}, r"misses key\(s\) category_id, bbox, score"),
        (dict(GOOD, image_id=1.0), "has image_id 1.0 "),
        (dict(GOOD, image_id=True), "has image_id True "),
        (dict(GOOD, category_id=1.0), "has category_id 1.0 "),
        (dict(GOOD, bbox=[0, 0, 1, 1, 1]), r"has bbox \[0, 0, 1, 1, 1\] \(four numbers"),
        (dict(GOOD, bbox=5), r"has bbox 5 \(four numbers"),
        (dict(GOOD, bbox=[0, 0, -1, 1]), "has a bbox with negative width or height"),
        (dict(GOOD, bbox=[0, 0, 1, -1]), "has a bbox with negative width or height"),
    ],
)
def test_load_names_each_kind_of_bad_entry(tmp_path, entry, problem):
    path = write(tmp_path / "dets.json", [GOOD, entry])
    with pytest.raises(UserError, match=f"dets.json: entry 1 {problem}"):
        load_results(path)


def test_load_messages_name_the_file_and_how_to_fix_it(tmp_path):
    with pytest.raises(UserError, match="^results file not found: "):
        load_results(tmp_path / "missing.json")
    (tmp_path / "corrupt.json").write_text("[{")
    with pytest.raises(UserError, match=r"^results file .*corrupt.json is not valid JSON .*; write it with detkit's"):
        load_results(tmp_path / "corrupt.json")
    path = write(tmp_path / "dets.json", {"a": 1})
    with pytest.raises(UserError, match="must hold a JSON list of detections, got a dict$"):
        load_results(path)
    path = write(tmp_path / "dets.json", [{}])
    with pytest.raises(UserError, match="each entry needs image_id, category_id, bbox .x, y, w, h. and score, all finite$"):
        load_results(path)
