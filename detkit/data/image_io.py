"""Reading image files for the datasets: OpenCV decodes, the datasets get RGB.

    read_image_rgb   file -> (H, W, 3) uint8 RGB numpy, or None (with a warning) when unreadable
    image_to_tensor  (H, W, 3) uint8 numpy -> (3, H, W) uint8 tensor
"""

import warnings

import cv2
import numpy as np
import torch


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB numpy -> (3, H, W) uint8 tensor."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def read_image_rgb(path: str) -> np.ndarray | None:
    """(H, W, 3) uint8 RGB, or None (with a warning) when OpenCV cannot decode the file."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        warnings.warn(f"cannot read image {path} (missing or corrupt); skipping it", stacklevel=2)
        return None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
