"""Enumerated and structured config values are checked when the config is loaded: a bad one stops
tools/train_net.py with exit status 2 and one line naming the key, the allowed values and the file,
before anything is built or written."""

import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from detkit.config import PLAIN_DEFAULTS, RULES, load_config
from detkit.errors import UserError

REPO = Path(__file__).resolve().parents[1]

# (dotted key, bad value, words the allowed values must appear with)
BAD_VALUES = [
    ("solver.lr_schedule", "cosin", "step | cosine"),
    ("test.multiscale_mode", "maxot", "union | maxout"),
    ("model.rpn.iou_thresholds", [0.7, 0.3], "increasing order"),
    ("model.roi_heads.bbox_reg_weights", [10.0, 10.0, 5.0], "a list of 4 positive numbers"),
    ("model.roi_heads.pooler", "roi_aling", "roi_pool | roi_align"),
    ("model.roi_heads.head", "res4", "res5 | fc"),
    ("model.backbone.norm", "syncbn", "frozen_bn | bn | gn"),
    ("data.train", [{"format": "yolo", "root": "x"}], "allowed formats: coco, voc, shapes"),
    ("data.test", [{"format": "cocoo"}], "allowed formats: coco, voc, shapes"),
    ("model.backbone.depth", 42, "18"),
    ("model.device", "gpu", "cuda:N"),
    ("solver.steps", [800, 600], "increasing order"),
    ("test.scales", [400, -1], "positive integers"),
]




def run_train_net(monkeypatch, capsys, *args) -> tuple[int, str]:
    """tools/train_net.py's main in this process: (exit status, stderr)."""
    monkeypatch.setattr(sys, "argv", ["tools/train_net.py", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO / "tools" / "train_net.py"), run_name="__main__")
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("key, value, allowed", BAD_VALUES, ids=[k for k, _, _ in BAD_VALUES])
def test_bad_value_in_file_stops_train_net_before_any_work(tmp_path, monkeypatch, capsys, tiny_config, key, value, allowed):
    cfg = yaml.safe_load(tiny_config.read_text())
    section, _, leaf = key.rpartition(".")
    target = cfg
    for part in section.split("."):
        target = target.setdefault(part, {})
    target[leaf] = value
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    code, err = run_train_net(monkeypatch, capsys, "--config", bad, "--output-dir", out)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert f"'{key}'" in lines[0] and allowed in lines[0] and str(bad) in lines[0], lines[0]
    assert not out.exists()  # nothing was written: the run stopped at load


def test_bad_override_names_the_override(monkeypatch, capsys, tiny_config, tmp_path):
    code, err = run_train_net(monkeypatch, capsys, "--config", tiny_config, "--output-dir", tmp_path / "run",
                              "solver.lr_schedule=cosin")
    assert code == 2
    assert err.strip() == (
        "error: config key 'solver.lr_schedule' in override 'solver.lr_schedule=cosin' "
        "must be one of step | cosine, got 'cosin'"
    )


def test_train_net_subprocess_exit_status(tmp_path, tiny_config):
    """The same through a real process, as a user runs it."""
    out = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "tools/train_net.py", "--config", str(tiny_config), "--output-dir", str(out),
         "test.multiscale_mode=maxot"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "test.multiscale_mode" in r.stderr and "union | maxout" in r.stderr
    assert not out.exists()


def test_scales_need_a_test_size(tmp_path):
    with pytest.raises(UserError, match=r"test.scales.*input.min_size_test.*> 0"):
        load_config(None, ["test.scales=[400, 600]", "input.min_size_test=0"])
    assert load_config(None, ["test.flip=true", "input.min_size_test=0"]).test.flip


def test_background_band_below_the_foreground_threshold():
    with pytest.raises(UserError, match=r"bg_iou_thresh_low.*fg_iou_thresh.*at most"):
        load_config(None, ["model.roi_heads.bg_iou_thresh_low=0.6", "model.roi_heads.fg_iou_thresh=0.5"])
    assert load_config(None, ["model.roi_heads.bg_iou_thresh_low=0.5"]).model.roi_heads.bg_iou_thresh_low == 0.5


def test_every_default_obeys_its_rule():
    for key, rule in RULES.items():
        value = PLAIN_DEFAULTS
        for part in key.split("."):
            value = value[part]
        assert value is None or rule.problem(value) is None, key


def test_good_values_pass(tmp_path):
    cfg = load_config(None, ["solver.lr_schedule=cosine", "test.multiscale_mode=maxout", "model.device=cuda:1",
                             "model.rpn.iou_thresholds=[0.4, 0.6]", "model.roi_heads.bbox_reg_weights=[1, 1, 1, 1]",
                             "data.train=[{format: shapes, split: train, num_images: 4}]"])
    assert cfg.solver.lr_schedule == "cosine" and cfg.model.rpn.iou_thresholds == [0.4, 0.6]
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        load_config(path)  # every shipped config passes
