"""Samples a fixed-size, class-balanced subset of labelled predictions for the losses."""

import torch
from torch import Tensor


def sample_balanced(
    labels: Tensor, *, batch_size: int, positive_fraction: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Pick up to `batch_size` indices: positives first (at most `positive_fraction`), then negatives.

    labels: (P,) with 1 positive, 0 negative, -1 ignored (never sampled).
    Returns (positive indices, negative indices), each int64, drawn uniformly without replacement.
    """
    positive = torch.nonzero(labels == 1).squeeze(1)
    negative = torch.nonzero(labels == 0).squeeze(1)
    num_pos = min(positive.numel(), int(batch_size * positive_fraction))
    num_neg = min(negative.numel(), batch_size - num_pos)
    device = labels.device
    # Draw the permutation on the CPU generator so a seed gives the same sample on any device.
    perm_pos = torch.randperm(positive.numel(), generator=generator)[:num_pos].to(device)
    perm_neg = torch.randperm(negative.numel(), generator=generator)[:num_neg].to(device)
    return positive[perm_pos], negative[perm_neg]
