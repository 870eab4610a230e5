"""Single-image inference from an exported ONNX file (tools/export.py) with onnxruntime: no torch needed.

`OnnxPredictor("model.onnx")(image_bgr)` has `Predictor`'s call and outputs: an (H, W, 3) uint8 BGR numpy image
in, {"boxes": (N, 4) float32 xyxy in input pixels, "scores": (N,) float32, "labels": (N,) int64} out, and
`class_names[label]` names a label. This module imports only numpy, onnxruntime (when constructed) and
`detkit.errors`, so `from detkit import OnnxPredictor` works on a machine with onnxruntime, numpy and OpenCV.
"""

import json
from pathlib import Path

import numpy as np

from detkit.errors import UserError


class OnnxPredictor:
    """Runs an exported detector. `providers`: onnxruntime execution providers (default: the CPU's);
    `category_ids`: the dataset's ids per label when the file records them, else None."""

    def __init__(self, path: str | Path, *, providers: list[str] | None = None):
        try:
            import onnxruntime
        except ImportError:
            raise UserError('OnnxPredictor needs onnxruntime: pip install onnxruntime (or pip install -e ".[export]")') from None
        path = Path(path)
        if not path.is_file():
            raise UserError(f"ONNX file not found: {path} (write one with tools/export.py)")
        self.providers = providers or ["CPUExecutionProvider"]
        missing = [p for p in self.providers if p not in onnxruntime.get_available_providers()]
        if missing:
            raise UserError(
                f"onnxruntime here has no {', '.join(missing)} (available: {', '.join(onnxruntime.get_available_providers())}); "
                "install the matching onnxruntime build (e.g. onnxruntime-gpu) or run on the CPU"
            )
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=self.providers)
        except Exception as e:  # onnxruntime raises its own types for truncated or foreign files
            raise UserError(f"cannot load {path} as an ONNX model: {str(e).splitlines()[0][:200]}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if "class_names" not in meta or [i.name for i in self.session.get_inputs()] != ["image"]:
            raise UserError(f"{path} is not a detkit export (no class_names metadata or no `image` input); use tools/export.py")
        self.class_names: list[str] = json.loads(meta["class_names"])
        self.category_ids: list[int] | None = json.loads(meta["category_ids"]) if "category_ids" in meta else None
        self.settings: dict = json.loads(meta.get("test_settings", "{}"))

    @property
    def device(self) -> str:
        return f"onnxruntime {self.session.get_providers()[0]}"

    def __call__(self, image_bgr: np.ndarray) -> dict[str, np.ndarray]:
        if not isinstance(image_bgr, np.ndarray) or image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
            shape = getattr(image_bgr, "shape", None)
            raise UserError(f"OnnxPredictor expects an HxWx3 BGR uint8 image, got shape {shape}")
        if image_bgr.dtype != np.uint8:
            raise UserError(f"OnnxPredictor expects an HxWx3 BGR uint8 image, got dtype {image_bgr.dtype}")
        boxes, scores, labels = self.session.run(["boxes", "scores", "labels"], {"image": np.ascontiguousarray(image_bgr)})
        return {"boxes": boxes, "scores": scores, "labels": labels}
