"""Boxes are float tensors of shape (N, 4). This module owns every conversion between formats.

Formats:
    xyxy    [x0, y0, x1, y1]   continuous pixels, (0, 0) at the image's top-left corner (detkit's own)
    xywh    [x, y, w, h]       COCO files
    cxcywh  [cx, cy, w, h]     box coder internals
"""

import torch
from torch import Tensor
from torchvision.ops import box_iou as _box_iou


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """(N, 4) xyxy -> (N, 4) xywh."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([x0, y0, x1 - x0, y1 - y0], dim=-1)


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(N, 4) xywh -> (N, 4) xyxy."""
    x, y, w, h = boxes.unbind(-1)
    return torch.stack([x, y, x + w, y + h], dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """(N, 4) xyxy -> (N, 4) cxcywh."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(N, 4) cxcywh -> (N, 4) xyxy."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """(N, 4) xyxy -> (N,) area; degenerate boxes have area 0."""
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """(N, 4), (M, 4) xyxy -> (N, M) IoU (torchvision.ops kernel)."""
    return _box_iou(boxes1, boxes2)


def clip_boxes(boxes: Tensor, height: int, width: int) -> Tensor:
    """Clip (N, 4) xyxy boxes to an image of `height` x `width` pixels (returns a new tensor)."""
    x0 = boxes[:, 0].clamp(0, width)
    y0 = boxes[:, 1].clamp(0, height)
    x1 = boxes[:, 2].clamp(0, width)
    y1 = boxes[:, 3].clamp(0, height)
    return torch.stack([x0, y0, x1, y1], dim=-1)


def nonempty(boxes: Tensor, min_size: float = 0.0) -> Tensor:
    """(N,) bool: boxes whose width and height both exceed `min_size` pixels."""
    return ((boxes[:, 2] - boxes[:, 0]) > min_size) & ((boxes[:, 3] - boxes[:, 1]) > min_size)


def flip_boxes(boxes: Tensor, width: int) -> Tensor:
    """Mirror (N, 4) xyxy boxes horizontally in an image `width` pixels wide."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=-1)
