"""Loss pieces shared by the RPN and the RoI heads."""

import torch.nn.functional as F
from torch import Tensor


def smooth_l1(input: Tensor, target: Tensor, beta: float) -> Tensor:
    """Summed smooth L1 over all elements (plain L1 when beta is 0).

    Empty inputs give 0 that is still connected to the graph, so images without objects train.
    """
    if input.numel() == 0:
        return input.sum() * 0.0
    if beta < 1e-5:
        return (input - target).abs().sum()
    return F.smooth_l1_loss(input, target, beta=beta, reduction="sum")
