"""The contract's Python API: Predictor on a BGR uint8 image."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detkit import Predictor, build_model, load_config
from detkit.engine import inference
from detkit.errors import UserError
from tests.conftest import TINY


def test_predictor_bgr_in_numpy_out(tmp_path):
    cfg = load_config(None, TINY)
    torch.manual_seed(0)
    model = build_model(cfg)
    path = tmp_path / "model_final.pth"
    torch.save({"model": model.state_dict(), "class_names": ["a", "b", "c"]}, path)
    predictor = Predictor(load_config(None, TINY[1:]), weights=path)  # num_classes from the checkpoint
    assert predictor.class_names == ["a", "b", "c"]
    image = np.random.RandomState(0).randint(0, 256, (50, 70, 3)).astype(np.uint8)
    out = predictor(image)
    assert out["boxes"].dtype == np.float32 and out["boxes"].shape[1] == 4
    assert out["scores"].shape == out["labels"].shape == (len(out["boxes"]),)
    # the same as the model on the RGB tensor: BGR is converted, boxes are in input pixels
    rgb = torch.from_numpy(image[:, :, ::-1].copy()).permute(2, 0, 1)
    with torch.no_grad():
        ref = model.eval()([rgb])[0]
    np.testing.assert_allclose(out["boxes"], ref["boxes"].numpy(), atol=1e-4)
    np.testing.assert_array_equal(out["labels"], ref["labels"].numpy())


def test_predictor_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        Predictor(load_config(None, TINY), weights=tmp_path / "missing.pth")
    predictor = Predictor(load_config(None, TINY))
    with pytest.raises(UserError, match="HxWx3"):
        predictor(np.zeros((10, 10), np.uint8))
    other = tmp_path / "other.pth"
    torch.save({"model": build_model(load_config(None, TINY[1:] + ["model.num_classes=5"])).state_dict()}, other)
    with pytest.raises(UserError, match="does not fit"):
        Predictor(load_config(None, TINY), weights=other)


@pytest.mark.parametrize("mode", ["maxout", "union"])
def test_predictor_runs_test_nets_whole_system(tiny_config, tmp_path, mode):
    """Multi-scale + flip + refinement from the config: Predictor gives tools/test_net.py's detections,
    detection for detection (test_net's file rounds boxes to 1/100 px and scores to 1e-5)."""
    overrides = ["test.scales=[48,64,96]", "test.flip=true", f"test.multiscale_mode={mode}",
                 "model.roi_heads.box_refinement=true"]
    cfg = load_config(tiny_config, overrides)
    torch.manual_seed(0)
    weights = tmp_path / "model.pth"
    names = ["cat3", "cat7", "cat90"]  # the tiny set's categories, ids 3, 7, 90
    torch.save({"model": build_model(cfg, num_classes=3).state_dict(), "class_names": names}, weights)
    inference.test(cfg, weights=weights, output_dir=tmp_path / "test_net")  # what tools/test_net.py calls
    saved = json.loads((tmp_path / "test_net" / "detections.json").read_text())
    images = json.loads(Path(cfg.data.test[0]["annotations"]).read_text())["images"]

    predictor = Predictor(cfg, weights)
    single = Predictor(load_config(tiny_config, overrides[-1:]), weights)  # refinement at the single test scale
    differs = False
    for info in images:
        image = cv2.imread(str(Path(cfg.data.test[0]["images"]) / info["file_name"]))
        out = predictor(image)
        expected = [d for d in saved if d["image_id"] == info["id"]]
        assert len(expected) >= 3 and len(out["boxes"]) == len(expected)
        assert [[3, 7, 90][k] for k in out["labels"]] == [d["category_id"] for d in expected]
        np.testing.assert_allclose(out["scores"], [d["score"] for d in expected], atol=1e-5)
        x, y, w, h = np.array([d["bbox"] for d in expected]).T
        np.testing.assert_allclose(out["boxes"], np.stack([x, y, x + w, y + h], axis=1), atol=0.011)
        plain = single(image)
        differs |= len(plain["boxes"]) != len(out["boxes"]) or not np.allclose(plain["boxes"], out["boxes"])
    assert differs  # the system differs from single-scale testing, so the comparison above covers it
