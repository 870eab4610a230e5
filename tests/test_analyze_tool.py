"""tools/analyze.py: the report folder of a saved detections file (COCO-format and VOC sets)."""

import contextlib
import io
import json
import re
import runpy
import sys
from pathlib import Path

import pytest

from detkit.data.coco import COCODataset
from detkit.data.voc import VOCDataset
from detkit.evaluation.coco import evaluate_results
from detkit.evaluation.provenance import write_sidecar
from detkit.evaluation.results import save_results
from detkit.evaluation.voc import evaluate_voc_results
from tests.conftest import write_coco, write_test_config, write_voc

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "analyze.py"
FIGURES = ("per_class_ap.png", "pr_overall.png", "pr_per_class.png", "errors_overall.png", "errors_per_class.png",
           "confusion.png", "sizes.png")  # fmt: skip


def run_in_process(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """tools/analyze.py's main() in this process: (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", [str(TOOL), *args])
    code = 0
    try:
        runpy.run_path(str(TOOL), run_name="__main__")
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def referenced_files(page: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', page)


def check_report(report: Path, num_classes: int) -> dict:
    """Every file the page names exists inside the report; nothing is fetched from elsewhere."""
    page = (report / "index.html").read_text()
    names = referenced_files(page)
    assert set(FIGURES) <= set(names) and "analysis.json" in names and "metrics.json" in names
    for name in names:
        assert not re.match(r"[a-z]+:", name) and not name.startswith("/"), name
        assert (report / name).is_file(), name
    assert "<script" not in page and "@import" not in page and "url(" not in page
    for figure in FIGURES:
        assert (report / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    numbers = json.loads((report / "analysis.json").read_text())
    assert len(numbers["per_class"]) == num_classes
    assert len(numbers["confusion"]["matrix"]) == num_classes + 1
    assert set(numbers["errors"]["overall"]) == {"C75", "C50", "Loc", "Sim", "Oth", "BG", "FN"}
    return numbers


@pytest.fixture
def coco_setup(tmp_path):
    images, ann, dets = write_coco(tmp_path / "coco")
    cfg = write_test_config(tmp_path / "eval.yaml", [{"format": "coco", "images": str(images), "annotations": str(ann)}])
    results = tmp_path / "run" / "detections.json"
    save_results(results, dets)
    return cfg, results, ann, dets


def test_coco_report(tmp_path, monkeypatch, capsys, coco_setup):
    cfg, results, ann, dets = coco_setup
    write_sidecar(results, weights="model_final.pth")
    code, out, err = run_in_process(monkeypatch, capsys, "--config", str(cfg), "--results", str(results),
                                    "--score-threshold", "0.3")  # fmt: skip
    assert code == 0, err
    report = results.parent / "detections_report"
    assert f"wrote {report / 'index.html'}" in out
    numbers = check_report(report, num_classes=3)

    dataset = COCODataset(images=str(tmp_path / "coco" / "images"), annotations=str(ann))
    with contextlib.redirect_stdout(io.StringIO()):
        expected = evaluate_results(dataset.coco, dets, dataset.class_names, dataset.category_ids)
    # metrics.json is tools/evaluate.py's, and analysis.json agrees with it
    assert json.loads((report / "metrics.json").read_text()) == json.loads(json.dumps(expected))
    assert {n: r["AP"] for n, r in numbers["per_class"].items()} == pytest.approx(expected["per_class"])
    assert numbers["errors"]["overall"]["C50"] == pytest.approx(expected["AP50"])
    assert numbers["errors"]["overall"]["C75"] == pytest.approx(expected["AP75"])
    assert numbers["confusion"]["score_threshold"] == 0.3
    # the gallery holds the images with errors, worst first, and the page shows them
    assert numbers["gallery"] and [g["errors"] for g in numbers["gallery"]] == sorted(
        [g["errors"] for g in numbers["gallery"]], reverse=True
    )
    assert all(g["errors"] == g["false_positives"] + g["missed"] for g in numbers["gallery"])
    page = (report / "index.html").read_text()
    assert all(g["file"] in page for g in numbers["gallery"]) and "model_final.pth" in page


def test_voc_report(tmp_path, monkeypatch, capsys):
    root, dets = write_voc(tmp_path / "VOCdevkit" / "VOC2007")
    cfg = write_test_config(tmp_path / "voc.yaml", [{"format": "voc", "root": str(root), "split": "test"}])
    results = tmp_path / "out" / "detections.json"
    save_results(results, dets)
    report = tmp_path / "voc_report"
    code, _, err = run_in_process(monkeypatch, capsys, "--config", str(cfg), "--results", str(results),
                                  "--output", str(report))  # fmt: skip
    assert code == 0, err
    numbers = check_report(report, num_classes=20)
    dataset = VOCDataset(root=str(root), split="test", keep_difficult=True)
    with contextlib.redirect_stdout(io.StringIO()):
        expected = evaluate_voc_results(dets, dataset.annotations, dataset.class_names, None,
                                        image_ids=dataset.image_ids, year=2007)  # fmt: skip
    assert json.loads((report / "metrics.json").read_text()) == json.loads(json.dumps(expected))
    # dog: two boxes, found once exactly; person is difficult (a crowd region), so it has no row count
    assert numbers["per_class"]["dog"]["num_gt"] == 2 and numbers["per_class"]["person"]["num_gt"] == 0
    assert numbers["per_class"]["person"]["AP"] is None and numbers["per_class"]["dog"]["AP"] > 0
    dog = numbers["confusion"]["classes"].index("dog")
    assert sum(numbers["confusion"]["matrix"][dog]) == 2
    assert any(str(g["image_id"]).startswith("00000") for g in numbers["gallery"])


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "results file not found"),
        ("malformed", "not valid JSON"),
        ("unknown image", "detection 0 has image_id 999, which data.test[0] does not hold"),
        ("contiguous category", "detection 0 has category_id 0, not one of data.test[0]'s category ids [1, 3, 90]"),
        ("threshold", "--score-threshold 1.5 must lie in [0, 1]"),
        ("no annotations", "has no annotations"),
        ("output is a file", "is a file; name a folder for the report"),
    ],
)
def test_bad_inputs_exit_2_with_one_line(tmp_path, monkeypatch, capsys, coco_setup, case, message):
    cfg, results, _, dets = coco_setup
    args = ["--config", str(cfg), "--results", str(results)]
    if case == "missing":
        args[-1] = str(tmp_path / "none.json")
    elif case == "malformed":
        results.write_text('[{"image_id": 10, ')
    elif case == "unknown image":
        save_results(results, [dict(dets[0], image_id=999)] + dets)
    elif case == "contiguous category":
        save_results(results, [dict(dets[0], category_id=0)])
    elif case == "threshold":
        args += ["--score-threshold", "1.5"]
    elif case == "output is a file":
        args += ["--output", str(results)]
    else:
        images, info, _ = write_coco(tmp_path / "testdev", with_annotations=False)
        args[1] = str(write_test_config(tmp_path / "td.yaml", [{"format": "coco", "images": str(images), "annotations": str(info)}]))
    code, _, err = run_in_process(monkeypatch, capsys, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert not (results.parent / "detections_report" / "index.html").exists()


def test_no_detections_gives_a_report(tmp_path, monkeypatch, capsys, coco_setup):
    cfg, results, _, _ = coco_setup
    save_results(results, [])
    code, _, err = run_in_process(monkeypatch, capsys, "--config", str(cfg), "--results", str(results))
    assert code == 0, err
    numbers = check_report(results.parent / "detections_report", num_classes=3)
    assert numbers["errors"]["overall"]["C50"] == 0 and numbers["errors"]["overall"]["FN"] == 100
    matrix = numbers["confusion"]["matrix"]
    assert all(row[-1] == sum(row) for row in matrix[:-1]) and sum(matrix[-1]) == 0
