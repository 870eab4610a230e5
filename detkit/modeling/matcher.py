"""Assigns each prediction (anchor or proposal) to a ground-truth box from an IoU matrix.

Shapes:
    G  ground-truth boxes, P  predictions
    iou (G, P) -> matches (P,) index of the best ground truth, labels (P,) int8 in {1, 0, -1}
Labels: 1 foreground, 0 background, -1 ignored (between the thresholds).
"""

import torch
from torch import Tensor


class Matcher:
    """Threshold the best IoU of each prediction: [0, t0) -> 0, [t0, t1) -> -1, [t1, 1] -> 1.

    With one threshold there is no ignored band. `allow_low_quality_matches` also marks as
    foreground, for each ground truth, the predictions that reach its highest IoU (the Faster R-CNN
    rule that gives every object at least one anchor).
    """

    def __init__(self, *, thresholds: list[float], allow_low_quality_matches: bool = False):
        if len(thresholds) not in (1, 2) or sorted(thresholds) != list(thresholds):
            raise ValueError(f"thresholds must be one or two increasing values, got {thresholds}")
        self.low = thresholds[0]
        self.high = thresholds[-1]
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, iou: Tensor) -> tuple[Tensor, Tensor]:
        """(G, P) IoU -> matches (P,) int64, labels (P,) int8. With G == 0 all predictions are background."""
        num_preds = iou.shape[1]
        if iou.shape[0] == 0:
            matches = torch.zeros(num_preds, dtype=torch.int64, device=iou.device)
            labels = torch.zeros(num_preds, dtype=torch.int8, device=iou.device)
            return matches, labels
        best_iou, matches = iou.max(dim=0)
        labels = torch.ones(num_preds, dtype=torch.int8, device=iou.device)
        labels[best_iou < self.high] = -1
        labels[best_iou < self.low] = 0
        if self.allow_low_quality_matches:
            best_per_gt = iou.max(dim=1, keepdim=True).values
            # A ground truth with IoU 0 everywhere has no real match; don't mark every prediction for it.
            is_best = (iou == best_per_gt) & (best_per_gt > 0)
            labels[is_best.any(dim=0)] = 1
        return matches, labels
