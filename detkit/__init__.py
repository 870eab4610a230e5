"""detkit: Faster R-CNN on ResNet in the C4 design (He et al., "Deep Residual Learning for Image Recognition")."""

from detkit.config import load_config
from detkit.modeling.build import build_model
from detkit.predictor import Predictor

__all__ = ["load_config", "build_model", "Predictor"]
__version__ = "0.1.0"
