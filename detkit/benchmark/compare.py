"""Whether two detectors' outputs on one image are the same up to order and numerical error."""

import torch

from detkit.structures.boxes import box_iou


def compare_detections(
    a: dict, b: dict, *, min_iou: float = 0.99, score_tol: float = 0.05, box_tol: float = 0.0
) -> dict:
    """Whether two detection sets of one image are the same up to order and numerical error.

    Each detection of one set needs a counterpart in the other with the same label, IoU >= `min_iou` and a
    score within `score_tol`, except detections scored within `score_tol` of the lower of the two sets'
    lowest kept scores: a float-level difference may decide which of two nearly tied detections makes the
    top-N cut. The tolerances are not float epsilons because, with roi_pool, a box moved by a float-level
    amount can cross an integer bin boundary and pool a slightly different region (measured on R101 at
    800 px: scores move by up to ~0.03 with BN folded and channels-last layout together).
    Two boxes whose corners all lie within `box_tol` pixels count as IoU 1: the IoU of a box a fraction of a
    pixel thin (untrained regressors make them) changes wholesale with float-level corner differences.
    Returns {"same", "worst_iou", "max_score_diff", "counts"}: the worst IoU and the largest score
    difference over the detections that must match, each paired with its best same-label counterpart.
    """
    worst_iou, max_score_diff = 1.0, 0.0
    counts = (len(a["boxes"]), len(b["boxes"]))
    for x, y in ((a, b), (b, a)):
        if len(x["boxes"]) == 0:
            continue
        if len(y["boxes"]) == 0:
            return {"same": False, "worst_iou": 0.0, "max_score_diff": 1.0, "counts": counts}
        cut = max(x["scores"].min().item(), y["scores"].min().item()) + score_tol
        must_match = x["scores"] > cut
        if not must_match.any():
            continue
        iou = box_iou(x["boxes"], y["boxes"])
        if box_tol > 0:
            # (N, 1, 4) - (1, M, 4) -> (N, M): the largest corner difference of each pair
            close = (x["boxes"][:, None, :] - y["boxes"][None, :, :]).abs().amax(dim=2) <= box_tol
            iou = torch.where(close, torch.ones_like(iou), iou)
        iou = iou * (x["labels"][:, None] == y["labels"][None, :])
        best_iou, partner = iou[must_match].max(dim=1)
        worst_iou = min(worst_iou, best_iou.min().item())
        score_diff = (x["scores"][must_match] - y["scores"][partner]).abs()
        max_score_diff = max(max_score_diff, score_diff.max().item())
    same = worst_iou >= min_iou and max_score_diff <= score_tol
    return {"same": same, "worst_iou": worst_iou, "max_score_diff": max_score_diff, "counts": counts}
