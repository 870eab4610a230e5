"""Leaderboard submissions (detkit.evaluation.submission), provenance sidecars (detkit.evaluation.provenance),
the COCOeval backends (detkit.evaluation.coco) and the metrics file name of offline evaluation."""

import contextlib
import io
import json
import math
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from pycocotools.coco import COCO

from detkit.errors import UserError
from detkit.engine.saved_results import metrics_path_for
from detkit.evaluation.build import build_evaluator
from detkit.evaluation.coco import COCOEvaluator, cocoeval_stats, evaluate_results, make_cocoeval
from detkit.evaluation import provenance
from detkit.evaluation.provenance import read_sidecar, sidecar_path, write_sidecar
from detkit.evaluation.submission import (
    format_submission,
    keep_images,
    make_submission,
    submission_name,
    submission_notes,
    validate_submission,
    write_submission,
)

ROOT = Path(__file__).resolve().parents[1]
CATEGORY_IDS = [1, 3, 90]  # non-contiguous, like COCO's
IMAGE_IDS = [4, 7, 12]


def image_info() -> dict:
    """A test-dev style image-info json: images and categories, no annotations."""
    return {
        "images": [{"id": i, "file_name": f"{i:012d}.jpg", "height": 120, "width": 160} for i in IMAGE_IDS],
        "categories": [{"id": c, "name": f"c{c}", "supercategory": "x"} for c in CATEGORY_IDS],
    }


def detections(image_id: int, n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed + image_id)
    return [
        {
            "image_id": image_id,
            "category_id": int(rng.choice(CATEGORY_IDS)),
            "bbox": [float(v) for v in rng.uniform(0, 60, 4)],
            "score": float(rng.uniform(0, 1)),
        }
        for _ in range(n)
    ]


@pytest.fixture
def info_path(tmp_path) -> Path:
    path = tmp_path / "image_info_test-dev2017.json"
    path.write_text(json.dumps(image_info()))
    return path


def test_valid_results_have_no_problems_and_empty_images_are_information(info_path):
    results = detections(4, 5) + detections(7, 3)  # image 12 has none: allowed
    assert validate_submission(results, info_path) == []
    assert validate_submission(results, image_info()) == []
    notes = submission_notes(results, info_path)
    assert "8 detections on 2 of the 3 images" in notes[0]
    assert "1 images have no detection" in notes[1] and "12" in notes[1]


def test_validation_finds_each_problem(info_path):
    results = detections(4, 3)
    results[0] = dict(results[0], image_id=999)  # not in the file
    results[1] = dict(results[1], category_id=2)  # not a category of the file
    results[2] = dict(results[2], bbox=[1.0, math.nan, 3.0, 4.0])
    results += [dict(detections(7, 1)[0], bbox=[1.0, 2.0, -3.0, 4.0])]
    results += [dict(detections(7, 1)[0], score=math.inf)]
    results += detections(12, 101)
    results += [{"image_id": 4, "bbox": [0, 0, 1, 1], "score": 0.5}]
    problems = validate_submission(results, info_path)
    text = "\n".join(problems)
    assert len(problems) == 7, text
    assert "1 detections name an image that image_info_test-dev2017.json does not hold" in text and "999" in text
    assert "category_id outside" in text and "[1, 3, 90]" in text and "category_id 2" in text
    assert "non-finite bbox" in text and "negative width" in text and "score that is not a finite" in text
    assert "1 images have more than 100 detections" in text and "image 12 has 101" in text
    assert "lacks category_id" in text
    # the per-image count is the one check the caller may leave to format_submission
    assert len(validate_submission(results, info_path, max_per_image=None)) == 6
    assert validate_submission({"a": 1}, info_path) == ["the results must be a JSON list of detections, got a dict"]


def test_format_keeps_the_100_highest_scores_and_rounds():
    dets = detections(4, 150) + detections(7, 2)
    dets[0]["extra"] = "dropped"
    dets[1]["bbox"] = [1.23456, 2.0, 3.0049, 4.5]
    dets[1]["score"] = 0.9999999
    entries, dropped = format_submission(dets)
    assert dropped == 50 and len(entries) == 102
    on_4 = [e for e in entries if e["image_id"] == 4]
    best = sorted((round(d["score"], 5) for d in dets[:150]), reverse=True)[:100]
    assert [e["score"] for e in on_4] == best  # highest first
    assert all(set(e) == {"image_id", "category_id", "bbox", "score"} for e in entries)
    (e1,) = [e for e in on_4 if e["bbox"][0] == 1.23]
    assert e1["bbox"] == [1.23, 2.0, 3.0, 4.5] and e1["score"] == 1.0
    assert validate_submission(entries, image_info()) == []


def test_make_submission_writes_one_json_in_the_zip(tmp_path, info_path):
    results_path = tmp_path / "run" / "detections.json"
    results_path.parent.mkdir()
    results = detections(4, 120) + detections(12, 3)
    results_path.write_text(json.dumps(results))
    json_path, zip_path, notes = make_submission(
        results_path, info_path, split="test-dev2017", method="detkit_r101", output_dir=tmp_path / "sub"
    )
    assert json_path.name == "detections_test-dev2017_detkit_r101_results.json"
    assert zip_path == json_path.with_suffix(".zip")
    with zipfile.ZipFile(zip_path) as z:
        assert z.namelist() == [json_path.name]
        inside = json.loads(z.read(json_path.name))
    assert inside == json.loads(json_path.read_text())
    assert len(inside) == 103 and {e["category_id"] for e in inside} <= set(CATEGORY_IDS)
    assert any("dropped 20" in n for n in notes) and any("1 images have no detection" in n for n in notes)
    meta = read_sidecar(json_path)
    assert meta["split"] == "test-dev2017" and meta["results"] == str(results_path)


def test_make_submission_refuses_bad_results_and_writes_nothing(tmp_path, info_path):
    results = detections(4, 2) + [dict(detections(4, 1)[0], image_id=5)]
    results_path = tmp_path / "detections.json"
    results_path.write_text(json.dumps(results))
    out = tmp_path / "sub"
    with pytest.raises(UserError, match=r"cannot be submitted \(1 problem\(s\), nothing written\)") as e:
        make_submission(results_path, info_path, split="test-dev2017", method="m", output_dir=out)
    assert "image_id 5" in str(e.value)
    assert not out.exists()
    # --subset: detections on other images (a test2017 run for test-dev2017) are dropped instead
    json_path, _, notes = make_submission(
        results_path, info_path, split="test-dev2017", method="m", output_dir=out, subset=True
    )
    assert len(json.loads(json_path.read_text())) == 2 and "dropped 1" in notes[0]
    assert keep_images(results, image_info())[1] == 1


def test_file_errors_and_names(tmp_path, info_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    with pytest.raises(UserError, match="not valid JSON"):
        make_submission(bad, info_path, split="test-dev2017", method="m")
    with pytest.raises(UserError, match="results file not found"):
        make_submission(tmp_path / "none.json", info_path, split="test-dev2017", method="m")
    no_categories = tmp_path / "info.json"
    no_categories.write_text(json.dumps({"images": []}))
    with pytest.raises(UserError, match="no 'categories'"):
        make_submission(bad, no_categories, split="test-dev2017", method="m")
    with pytest.raises(UserError, match="no underscore"):
        submission_name("test_dev", "m")
    with pytest.raises(UserError, match="no slash or space"):
        submission_name("test-dev2017", "my method")


def test_cli_refuses_with_exit_2_and_lists_problems(tmp_path, info_path):
    results_path = tmp_path / "detections.json"
    results_path.write_text(json.dumps(detections(4, 1) + [dict(detections(4, 1)[0], category_id=0)]))
    cmd = [sys.executable, str(ROOT / "tools/make_submission.py"), "--results", str(results_path),
           "--image-info", str(info_path), "--split", "test-dev2017", "--method", "detkit-r101"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and "category_id 0" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("detections_test-dev2017_*"))


def test_sidecar_round_trip(tmp_path):
    path = tmp_path / "detections.json"
    meta_path = write_sidecar(path, config=Path("configs/x.yaml"), weights="model_final.pth")
    assert meta_path == sidecar_path(path) == tmp_path / "detections.meta.json"
    meta = read_sidecar(path)
    assert meta["file"] == "detections.json" and meta["config"] == "configs/x.yaml"
    assert meta["weights"] == "model_final.pth" and meta["detkit_version"] and meta["created"].endswith("+00:00")
    assert read_sidecar(tmp_path / "other.json") is None
    assert "git_commit" in meta  # None outside a git checkout
    assert read_sidecar(write_sidecar(tmp_path / "new" / "dir" / "x.json").with_name("x.json"))["file"] == "x.json"
    sidecar_path(tmp_path / "list.json").write_text("[1]")  # valid JSON, not a sidecar
    assert read_sidecar(tmp_path / "list.json") is None
    assert metrics_path_for(path) == tmp_path / "metrics.json"
    assert metrics_path_for(tmp_path / "detections_1.json") == tmp_path / "metrics_1.json"


def test_sidecar_records_the_git_commit_of_the_checkout(tmp_path):
    here = Path(provenance.__file__).resolve().parent

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=30)

    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        pytest.skip("detkit is not imported from a git checkout")
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    write_sidecar(tmp_path / "x.json")
    commit = read_sidecar(tmp_path / "x.json")["git_commit"]
    assert commit == head.stdout.strip() + ("+dirty" if dirty else "") and len(head.stdout.strip()) == 40


def synthetic_gt_and_dets(seed: int = 0) -> tuple[COCO, list[dict]]:
    """Non-contiguous categories, some crowd boxes, all area ranges, jittered and random detections."""
    rng = np.random.default_rng(seed)
    images = [{"id": i, "width": 200, "height": 150, "file_name": f"{i}.jpg"} for i in range(1, 16)]
    anns, dets = [], []
    for im in images:
        for _ in range(int(rng.integers(0, 5))):
            w, h = rng.uniform(4, 120, 2)
            x, y = rng.uniform(0, 200 - w), rng.uniform(0, 150 - h)
            c = int(rng.choice(CATEGORY_IDS))
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": c, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": int(rng.random() < 0.1)})  # fmt: skip
            box = np.array([x, y, w, h]) + rng.normal(0, 3, 4)
            dets.append({"image_id": im["id"], "category_id": c, "bbox": box.tolist(), "score": float(rng.random())})
        for _ in range(8):
            box = [rng.uniform(0, 100), rng.uniform(0, 60), *rng.uniform(4, 90, 2)]
            dets.append({"image_id": im["id"], "category_id": int(rng.choice(CATEGORY_IDS)), "bbox": box,
                         "score": float(rng.random())})  # fmt: skip
    gt = COCO()
    categories = [{"id": c, "name": f"c{c}"} for c in CATEGORY_IDS]
    gt.dataset = {"images": images, "annotations": anns, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt, dets


def test_faster_coco_eval_gives_the_same_numbers():
    pytest.importorskip("faster_coco_eval")
    gt, dets = synthetic_gt_and_dets()
    stats_ref, precision_ref = cocoeval_stats(gt, dets, backend="pycocotools")
    stats_fast, precision_fast = cocoeval_stats(gt, dets, backend="faster_coco_eval")
    assert stats_ref.shape == (12,) and 0 < stats_ref[0] < 1
    np.testing.assert_allclose(stats_fast, stats_ref, atol=1e-12)
    np.testing.assert_allclose(precision_fast, precision_ref, atol=1e-12)  # per-class AP reads this


def test_the_backend_asked_for_is_the_one_that_runs(faster_coco_eval_runs):
    runs = faster_coco_eval_runs
    gt, dets = synthetic_gt_and_dets()
    names = [f"c{c}" for c in CATEGORY_IDS]
    evaluator = COCOEvaluator(coco_gt=gt, category_ids=CATEGORY_IDS, class_names=names, backend="faster_coco_eval")
    with contextlib.redirect_stdout(io.StringIO()):
        cocoeval_stats(gt, dets, backend="faster_coco_eval")
        evaluate_results(gt, dets, names, CATEGORY_IDS, backend="faster_coco_eval")
        evaluator.evaluate_results(dets, None)
    assert len(runs) == 3
    dataset = SimpleNamespace(kind="coco", has_annotations=True, coco=gt, category_ids=CATEGORY_IDS, class_names=names)
    assert build_evaluator(dataset, backend="faster_coco_eval").backend == "faster_coco_eval"


def test_build_evaluator_by_kind():
    gt, _ = synthetic_gt_and_dets()
    names = [f"c{c}" for c in CATEGORY_IDS]
    coco = SimpleNamespace(kind="shapes", has_annotations=True, coco=gt, category_ids=CATEGORY_IDS, class_names=names)
    evaluator = build_evaluator(coco)
    assert isinstance(evaluator, COCOEvaluator) and evaluator.coco_gt is gt and evaluator.backend == "pycocotools"
    assert evaluator.category_ids == CATEGORY_IDS and evaluator.class_names == names
    voc = SimpleNamespace(kind="voc", annotations=lambda image_id: {}, class_names=["cat", "dog"], year=2007)
    evaluator = build_evaluator(voc)
    assert (evaluator.year, evaluator.use_11_point, evaluator.class_names) == (2007, True, ["cat", "dog"])
    assert build_evaluator(SimpleNamespace(**vars(voc) | {"year": 2012})).use_11_point is False
    assert build_evaluator(SimpleNamespace(**vars(coco) | {"has_annotations": False})) is None  # test-dev image info
    assert build_evaluator(SimpleNamespace(kind="concat")) is None


def test_unknown_backend_is_a_user_error():
    with pytest.raises(UserError, match="unknown COCO evaluation backend 'fast'"):
        make_cocoeval(None, None, backend="fast")


def test_validation_reports_bboxes_that_are_not_four_numbers_and_checks_every_entry(info_path):
    good = detections(4, 1)[0]
    results = [
        {"image_id": 4},  # malformed; the entries after it are still checked
        dict(good, bbox=[1.0, 2.0, 3.0, 4.0, 5.0]),
        dict(good, bbox=5.0),
        dict(good, bbox=["1", 2.0, 3.0, 4.0]),
        dict(good, image_id=4.0),  # a float equal to an image id
        dict(good, image_id=True),
        dict(good, category_id=3.0),  # a float equal to a category id
        dict(good, bbox=[1.0, 2.0, 0.0, 0.0]),  # zero width and height: allowed
    ]
    problems = validate_submission(results, info_path)
    assert len(problems) == 4, problems
    malformed, image, category, bbox = problems
    assert malformed == (
        "1 entries are not {image_id, category_id, bbox, score} objects (first: entry 0 lacks category_id, bbox, score)"
    )
    assert image.startswith("2 detections name an image that image_info_test-dev2017.json does not hold")
    assert image.endswith("(first: entry 4 image_id 4.0; entry 5 image_id True)")
    assert category.startswith("1 detections have a category_id outside") and "entry 6 category_id 3.0" in category
    assert bbox == (
        "3 detections have a bbox that is not four numbers [x, y, w, h] (first: entry 1 bbox [1.0, 2.0, 3.0, 4.0, 5.0];"
        " entry 2 bbox 5.0; entry 3 bbox ['1', 2.0, 3.0, 4.0])"
    )


def test_problem_messages_count_every_entry_and_quote_the_first_three(info_path):
    results = [dict(d, category_id=2) for d in detections(4, 5)]
    (problem,) = validate_submission(results, info_path)
    assert problem.startswith("5 detections have a category_id outside image_info_test-dev2017.json's categories")
    assert problem.endswith("(first: entry 0 category_id 2; entry 1 category_id 2; entry 2 category_id 2)")


def test_tied_scores_keep_their_order_when_the_100_best_are_kept():
    dets = detections(4, 150)
    for d, score in zip(dets, np.random.default_rng(0).integers(0, 3, 150)):
        d["score"] = float(score) / 2  # three values: many ties, an unstable sort reorders them
    entries, dropped = format_submission(dets)
    assert dropped == 50
    expected = sorted(range(150), key=lambda i: -dets[i]["score"])[:100]  # sorted() is stable
    assert [e["bbox"] for e in entries] == [[round(v, 2) for v in dets[i]["bbox"]] for i in expected]


def test_submission_files_names_and_sidecar(tmp_path, info_path):
    results_path = tmp_path / "detections.json"
    results_path.write_text(json.dumps(detections(4, 3)))
    # output_dir None: beside the results file (which exists)
    json_path, zip_path, notes = make_submission(results_path, info_path, split="test-dev2017", method="X-101.v2")
    assert notes == [
        "3 detections on 1 of the 3 images of image_info_test-dev2017.json, at most 3 per image",
        "2 images have no detection (allowed: they only cost recall), e.g. [7, 12]",
    ]
    assert json_path == tmp_path / "detections_test-dev2017_X-101.v2_results.json" and zip_path.is_file()
    assert " " not in json_path.read_text()  # compact
    with zipfile.ZipFile(zip_path) as z:
        assert [i.compress_type for i in z.infolist()] == [zipfile.ZIP_DEFLATED]
    meta = read_sidecar(json_path)
    assert (meta["results"], meta["image_info"]) == (str(results_path), str(info_path))
    assert (meta["split"], meta["method"]) == ("test-dev2017", "X-101.v2")
    # a new nested folder, away from the results file
    out = tmp_path / "a" / "b"
    json_path, _, _ = make_submission(results_path, info_path, split="test-devX", method="m", output_dir=out)
    assert json_path.parent == out and not (tmp_path / "detections_test-devX_m_results.json").exists()
    with pytest.raises(UserError, match=r"--method '.x' must be a short name"):
        submission_name("test-dev2017", ".x")
    with pytest.raises(ValueError, match="JSON compliant"):  # NaN is refused by the writer too
        write_submission([dict(detections(4, 1)[0], score=math.nan)], out, split="test-dev2017", method="nan")


def test_notes_of_an_empty_submission(tmp_path, info_path):
    results_path = tmp_path / "detections.json"
    results_path.write_text("[]")
    _, _, notes = make_submission(results_path, info_path, split="test-dev2017", method="m")
    assert notes[0] == "0 detections on 0 of the 3 images of image_info_test-dev2017.json"
    assert submission_notes([], image_info())[0] == "0 detections on 0 of the 3 images of the image-info file"


def test_a_bad_name_or_image_info_file_fails_first_with_its_own_message(tmp_path, info_path):
    missing = tmp_path / "none.json"
    with pytest.raises(UserError, match="no underscore"):
        make_submission(missing, missing, split="test_dev", method="m")  # before reading any file
    with pytest.raises(UserError, match="image-info file not found"):
        make_submission(missing, missing, split="test-dev2017", method="m")
    listed = tmp_path / "list.json"
    listed.write_text("[]")
    with pytest.raises(UserError, match=r"image-info file .*list.json has no 'images' list; expected e.g."):
        make_submission(missing, listed, split="test-dev2017", method="m")
    no_id = tmp_path / "no_id.json"
    no_id.write_text(json.dumps({"images": [{"file_name": "a.jpg"}], "categories": [{"id": 1}]}))
    with pytest.raises(UserError, match="every image and category needs an integer 'id'"):
        make_submission(missing, no_id, split="test-dev2017", method="m")
