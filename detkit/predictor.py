"""Single-image inference for applications: BGR numpy in, numpy boxes/scores/labels out."""

from pathlib import Path

import numpy as np
import torch

from detkit.errors import UserError
from detkit.modeling.build import load_detector
from detkit.modeling.test_time import Augmentation


class Predictor:
    """Wraps a trained detector.

    `Predictor(cfg, weights="output/x/model_final.pth")(image_bgr)` returns
    {"boxes": (N, 4) float32 xyxy in input pixels, "scores": (N,), "labels": (N,) int64 class indices};
    `class_names[label]` names a label. Class names come from the checkpoint (training stores
    them), else from `class_names`, else they are "class_<i>".
    It runs the config's whole test-time system (`test.scales`, `test.flip`, `test.multiscale_mode`, box
    refinement, context) through the same call as tools/test_net.py, so both give the same detections.
    """

    def __init__(self, cfg, weights: str | Path | None = None, *, class_names: list[str] | None = None):
        self.model, self.class_names = load_detector(cfg, weights, class_names=class_names)
        self.augmentation = Augmentation.from_config(cfg)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.inference_mode()
    def __call__(self, image_bgr: np.ndarray) -> dict[str, np.ndarray]:
        if not isinstance(image_bgr, np.ndarray) or image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
            shape = getattr(image_bgr, "shape", None)
            raise UserError(f"Predictor expects an HxWx3 BGR uint8 image, got shape {shape}")
        # (H, W, 3) BGR -> (3, H, W) RGB
        image = torch.from_numpy(np.ascontiguousarray(image_bgr[:, :, ::-1].transpose(2, 0, 1)))
        out = self.augmentation(self.model, [image])[0]
        return {
            "boxes": out["boxes"].float().cpu().numpy(),
            "scores": out["scores"].float().cpu().numpy(),
            "labels": out["labels"].cpu().numpy(),
        }
