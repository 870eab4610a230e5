"""The contract's Python API: Predictor on a BGR uint8 image."""

import numpy as np
import pytest
import torch

from detkit import Predictor, build_model, load_config
from detkit.errors import UserError
from tests.test_detector import TINY


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
