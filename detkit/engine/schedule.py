"""Learning-rate schedule as a pure function of the iteration, so resuming needs no scheduler state."""

import math


def lr_at(
    iteration: int,
    *,
    base_lr: float,
    max_iter: int,
    schedule: str = "step",
    steps: list[int] = (),
    gamma: float = 0.1,
    warmup_iters: int = 0,
    warmup_factor: float = 0.001,
) -> float:
    """LR for `iteration` (0-based): linear warmup from `warmup_factor * base_lr`, then step or cosine decay."""
    if schedule == "step":
        lr = base_lr * gamma ** sum(1 for s in steps if iteration >= s)
    elif schedule == "cosine":
        lr = base_lr * 0.5 * (1.0 + math.cos(math.pi * min(iteration, max_iter) / max_iter))
    else:
        raise ValueError(f"unknown schedule {schedule!r}; use step or cosine")
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        lr *= warmup_factor * (1 - alpha) + alpha
    return lr
