"""Assigns each prediction (anchor or proposal) to a ground-truth box from an IoU matrix.

Shapes:
    G  ground-truth boxes, P  predictions
    iou (G, P) -> matches (P,) index of the best ground truth, labels (P,) int8 in {1, 0, -1}
Labels: 1 foreground, 0 background, -1 ignored (never sampled).
"""

import torch
from torch import Tensor

LABELS = (1, 0, -1)


class Matcher:
    """Label each prediction by the band its best IoU falls in.

    `thresholds` t_0 < ... < t_{n-1} cut [0, 1] into n + 1 bands [0, t_0), [t_0, t_1), ..., [t_{n-1}, 1];
    `labels` gives one label per band, lowest band first. Defaults: with one threshold [0, 1]
    (background, foreground); with two [0, -1, 1] (the RPN's ignored band between them). Fast R-CNN's
    background band [lo, hi) with lower IoUs ignored is thresholds [lo, hi], labels [-1, 0, 1].

    `allow_low_quality_matches` also marks as foreground, for each ground truth, the predictions that
    reach its highest IoU (the Faster R-CNN rule that gives every object at least one anchor).
    Without ground truth every prediction is background, whatever the bands.
    """

    def __init__(
        self, *, thresholds: list[float], labels: list[int] | None = None, allow_low_quality_matches: bool = False
    ):
        if not thresholds or sorted(thresholds) != list(thresholds):
            raise ValueError(f"thresholds must be increasing values, got {thresholds}")
        if labels is None:
            labels = [0, 1] if len(thresholds) == 1 else [0, -1, 1] if len(thresholds) == 2 else None
        if labels is None or len(labels) != len(thresholds) + 1 or any(label not in LABELS for label in labels):
            raise ValueError(f"labels must be one of {LABELS} per band ({len(thresholds) + 1}), got {labels}")
        self.thresholds = list(thresholds)
        self.labels = list(labels)
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, iou: Tensor) -> tuple[Tensor, Tensor]:
        """(G, P) IoU -> matches (P,) int64, labels (P,) int8. With G == 0 all predictions are background."""
        num_preds = iou.shape[1]
        if iou.shape[0] == 0:
            matches = torch.zeros(num_preds, dtype=torch.int64, device=iou.device)
            labels = torch.zeros(num_preds, dtype=torch.int8, device=iou.device)
            return matches, labels
        best_iou, matches = iou.max(dim=0)
        labels = torch.full((num_preds,), self.labels[0], dtype=torch.int8, device=iou.device)
        for threshold, label in zip(self.thresholds, self.labels[1:]):
            labels[best_iou >= threshold] = label  # each band overwrites the ones below it
        if self.allow_low_quality_matches:
            best_per_gt = iou.max(dim=1, keepdim=True).values
            # A ground truth with IoU 0 everywhere has no real match; don't mark every prediction for it.
            is_best = (iou == best_per_gt) & (best_per_gt > 0)
            labels[is_best.any(dim=0)] = 1
        return matches, labels
