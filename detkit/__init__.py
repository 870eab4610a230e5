"""detkit: Faster R-CNN on ResNet in the C4 design (He et al., "Deep Residual Learning for Image Recognition")."""

from detkit.config import load_config
from detkit.version import __version__

__all__ = ["load_config", "build_model", "Predictor", "OnnxPredictor", "__version__"]


def __getattr__(name: str):
    """`build_model` and `Predictor` (torch) and `OnnxPredictor` (onnxruntime) are imported on first use, so
    `from detkit import OnnxPredictor` works without torch and `import detkit` without onnxruntime."""
    if name == "build_model":
        from detkit.modeling.build import build_model

        return build_model
    if name == "Predictor":
        from detkit.predictor import Predictor

        return Predictor
    if name == "OnnxPredictor":
        from detkit.onnx_predictor import OnnxPredictor

        return OnnxPredictor
    raise AttributeError(f"module 'detkit' has no attribute {name!r}")
