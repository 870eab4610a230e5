"""Box regression targets (R-CNN parameterisation) and their inverse.

Shapes:
    R  number of boxes
    deltas (R, 4) = (dx, dy, dw, dh) scaled by `weights`:
        dx = wx * (x - xa) / wa    dy = wy * (y - ya) / ha
        dw = ww * log(w / wa)      dh = wh * log(h / ha)
    where (x, y, w, h) are centre and size of the target box and (xa, ya, wa, ha) of the reference.
`decode(encode(b, ref), ref) == b` up to float error (tested).
"""

import math

import torch
from torch import Tensor

from detkit.structures.boxes import cxcywh_to_xyxy, xyxy_to_cxcywh

# Largest log-scale change applied when decoding, so a wild prediction cannot overflow exp().
_MAX_LOG_SCALE = math.log(1000.0 / 16)


class BoxCoder:
    """Encodes boxes relative to reference boxes and decodes deltas back (stateless apart from weights)."""

    def __init__(self, *, weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)):
        self.weights = tuple(float(w) for w in weights)

    def encode(self, boxes: Tensor, reference: Tensor) -> Tensor:
        """(R, 4) target xyxy, (R, 4) reference xyxy -> (R, 4) deltas."""
        wx, wy, ww, wh = self.weights
        t = xyxy_to_cxcywh(boxes.float())
        r = xyxy_to_cxcywh(reference.float())
        dx = wx * (t[:, 0] - r[:, 0]) / r[:, 2]
        dy = wy * (t[:, 1] - r[:, 1]) / r[:, 3]
        dw = ww * torch.log(t[:, 2] / r[:, 2])
        dh = wh * torch.log(t[:, 3] / r[:, 3])
        return torch.stack([dx, dy, dw, dh], dim=1)

    def decode(self, deltas: Tensor, reference: Tensor) -> Tensor:
        """(R, 4k) deltas, (R, 4) reference xyxy -> (R, 4k) boxes xyxy (k boxes per reference, e.g. per class)."""
        wx, wy, ww, wh = self.weights
        reference = reference.to(deltas.dtype)
        r = xyxy_to_cxcywh(reference)
        # (R, 4k) -> (R, k, 4); R as -1: an exported graph (detkit.export) then reshapes R = 0 too
        d = deltas.view(-1, deltas.shape[1] // 4, 4)
        dx = d[..., 0] / wx
        dy = d[..., 1] / wy
        dw = (d[..., 2] / ww).clamp(max=_MAX_LOG_SCALE)
        dh = (d[..., 3] / wh).clamp(max=_MAX_LOG_SCALE)
        cx = dx * r[:, None, 2] + r[:, None, 0]
        cy = dy * r[:, None, 3] + r[:, None, 1]
        w = torch.exp(dw) * r[:, None, 2]
        h = torch.exp(dh) * r[:, None, 3]
        boxes = cxcywh_to_xyxy(torch.stack([cx, cy, w, h], dim=-1))
        # (R, k, 4) -> (R, 4k)
        return boxes.reshape(deltas.shape)
