"""detkit: Faster R-CNN on ResNet in the C4 design (He et al., "Deep Residual Learning for Image Recognition")."""

from detkit.config import load_config
from detkit.modeling.build import build_model
from detkit.predictor import Predictor
from detkit.version import __version__

__all__ = ["load_config", "build_model", "Predictor", "__version__"]
