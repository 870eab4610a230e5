"""tools/evaluate.py: a saved detections file scored against data.test without a model."""

import contextlib
import io
import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from detkit.data.voc import VOCDataset
from detkit.evaluation.coco import evaluate_results
from detkit.evaluation.results import save_results
from detkit.evaluation.provenance import read_sidecar, write_sidecar
from detkit.evaluation.voc import evaluate_voc_results
from tests.conftest import write_coco, write_test_config, write_voc

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "evaluate.py"


def run_tool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def run_in_process(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """tools/evaluate.py's main() in this process (no interpreter start): (exit status, stderr)."""
    monkeypatch.setattr(sys, "argv", [str(TOOL), *args])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(TOOL), run_name="__main__")
    return e.value.code, capsys.readouterr().err


@pytest.fixture
def coco_setup(tmp_path):
    images, ann, dets = write_coco(tmp_path / "coco")
    cfg = write_test_config(tmp_path / "eval.yaml", [{"format": "coco", "images": str(images), "annotations": str(ann)}])
    results = tmp_path / "run" / "detections.json"
    save_results(results, dets)
    return cfg, results, ann, dets


def test_coco_metrics_match_evaluate_results(tmp_path, coco_setup):
    cfg, results, ann, dets = coco_setup
    write_sidecar(results, weights="model_final.pth")
    proc = run_tool("--config", str(cfg), "--results", str(results), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Average Precision" in proc.stdout and "Per-class AP / AP50" in proc.stdout
    metrics = json.loads((results.parent / "metrics.json").read_text())

    from detkit.data.coco import COCODataset

    dataset = COCODataset(images=str(tmp_path / "coco" / "images"), annotations=str(ann))
    with contextlib.redirect_stdout(io.StringIO()):
        expected = evaluate_results(dataset.coco, dets, dataset.class_names, dataset.category_ids)
    assert metrics == json.loads(json.dumps(expected))  # the same numbers, exactly
    assert 0 < metrics["AP"] < 100
    meta = read_sidecar(results.parent / "metrics.json")
    assert meta["config"] == str(cfg) and meta["results_meta"]["weights"] == "model_final.pth"


def test_voc_metrics_match_evaluate_voc_results(tmp_path):
    root, dets = write_voc(tmp_path / "VOCdevkit" / "VOC2007")
    cfg = write_test_config(tmp_path / "voc.yaml", [{"format": "voc", "root": str(root), "split": "test"}])
    results = tmp_path / "out" / "detections.json"
    save_results(results, dets)
    proc = run_tool("--config", str(cfg), "--results", str(results), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "11-point (VOC2007)" in proc.stdout
    metrics = json.loads((results.parent / "metrics.json").read_text())

    dataset = VOCDataset(root=str(root), split="test", keep_difficult=True)
    with contextlib.redirect_stdout(io.StringIO()):
        expected = evaluate_voc_results(dets, dataset.annotations, dataset.class_names, None,
                                        image_ids=dataset.image_ids, year=2007)  # fmt: skip
    assert metrics == json.loads(json.dumps(expected))
    assert 0 < metrics["AP50"] < 100


def test_malformed_results_exit_2_with_one_line(tmp_path, coco_setup):
    cfg, results, _, _ = coco_setup
    results.write_text('[{"image_id": 10, "category_id": 1, ')
    proc = run_tool("--config", str(cfg), "--results", str(results), cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: results file") and "not valid JSON" in lines[0]
    assert not (results.parent / "metrics.json").exists()


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "results file not found"),
        ("unknown image", "detection 0 has image_id 999, which data.test[0] does not hold"),
        ("contiguous category", "detection 0 has category_id 0, not one of data.test[0]'s category ids [1, 3, 90]"),
        ("nan box", "entry 0 has a non-finite bbox"),
        ("dataset index", "--dataset-index 3 is out of range"),
    ],
)
def test_user_errors_exit_2_with_one_line(tmp_path, monkeypatch, capsys, coco_setup, case, message):
    cfg, results, _, dets = coco_setup
    args = ["--config", str(cfg), "--results", str(results)]
    if case == "missing":
        args[-1] = str(tmp_path / "none.json")
    elif case == "unknown image":
        save_results(results, [dict(dets[0], image_id=999)] + dets)
    elif case == "contiguous category":
        save_results(results, [dict(dets[0], category_id=0)])
    elif case == "nan box":
        results.write_text(json.dumps([dict(dets[0], bbox=[float("nan"), 0, 1, 1])]))
    else:
        args += ["--dataset-index", "3"]
    code, err = run_in_process(monkeypatch, capsys, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err


def test_image_info_set_points_to_make_submission(tmp_path, monkeypatch, capsys):
    images, info, dets = write_coco(tmp_path / "testdev", with_annotations=False)
    cfg = write_test_config(tmp_path / "testdev.yaml", [{"format": "coco", "images": str(images), "annotations": str(info)}])
    results = tmp_path / "detections.json"
    save_results(results, dets)
    code, err = run_in_process(monkeypatch, capsys, "--config", str(cfg), "--results", str(results))
    assert code == 2 and "no annotations" in err and "tools/make_submission.py" in err
