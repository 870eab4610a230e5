"""Timing of inference (per stage) and training iterations, with a reference measured in the same run;
FLOP counts and peak memory.

Times are medians over `runs` after `warmup` untimed runs; the spread is (min, max). Compare ratios
within one run rather than absolute numbers across runs: shared machines are noisy.
"""

import resource
import statistics
import time
from typing import Callable

import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from detkit.modeling.detector import FasterRCNN


def _summary(times: list[float]) -> dict:
    return {"median_ms": 1000 * statistics.median(times), "min_ms": 1000 * min(times), "max_ms": 1000 * max(times)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def time_inference(model: FasterRCNN, image: torch.Tensor, *, warmup: int = 1, runs: int = 3) -> dict:
    """Per-stage inference times of one image (3, H, W): preprocess, backbone, rpn, roi_heads, postprocess."""
    model.eval()
    device = model.device
    stages = {k: [] for k in ["preprocess", "backbone", "rpn", "roi_heads", "postprocess", "total"]}
    for i in range(warmup + runs):
        marks = [time.perf_counter()]
        batch, sizes, _ = model.preprocessor([image])
        _sync(device)
        marks.append(time.perf_counter())
        with model.autocast():  # the stages run as FasterRCNN.inference runs them (AMP when switched on)
            feature = model.backbone(batch)
            _sync(device)
            marks.append(time.perf_counter())
            proposals, _ = model.rpn(feature, sizes)
            _sync(device)
            marks.append(time.perf_counter())
            detections, _ = model.roi_heads(feature, proposals, sizes)
            _sync(device)
            marks.append(time.perf_counter())
        model.preprocessor.postprocess(detections, sizes, [tuple(image.shape[-2:])])
        _sync(device)
        marks.append(time.perf_counter())
        if i >= warmup:
            for name, a, b in zip(list(stages)[:-1], marks, marks[1:]):
                stages[name].append(b - a)
            stages["total"].append(marks[-1] - marks[0])
    return {name: _summary(t) for name, t in stages.items()}


@torch.inference_mode()
def time_torchvision_trunk(depth: int, height: int, width: int, *, device: torch.device, warmup: int = 1, runs: int = 3) -> dict:
    """torchvision's ResNet conv1..conv5 (no pooling/fc) on one (1, 3, H, W) input, as a same-run reference."""
    net = getattr(torchvision.models, f"resnet{depth}")().eval().to(device)
    trunk = torch.nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
    x = torch.randn(1, 3, height, width, device=device)
    times = []
    for i in range(warmup + runs):
        tic = time.perf_counter()
        trunk(x)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - tic)
    return _summary(times)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: tensors allocated on a CUDA device, or the process's peak resident size on the CPU
    (an upper bound for its tensors: it also holds the interpreter, libraries and allocator caches)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux reports KiB


def time_training(model: FasterRCNN, loader, *, warmup: int = 1, runs: int = 3, lr: float = 0.001) -> dict:
    """Training iterations from `loader`: time per iteration, images/s, the share spent waiting for data, and
    the peak memory (see `peak_memory_mb`; on CUDA counted from the first timed iteration's start)."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9)
    device = model.device
    data_times, step_times, images_seen = [], [], 0
    it = iter(loader)
    for i in range(warmup + runs):
        if i == warmup and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        tic = time.perf_counter()
        images, targets = next(it)
        loaded = time.perf_counter()
        losses = model(images, targets)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
        _sync(device)
        if i >= warmup:
            data_times.append(loaded - tic)
            step_times.append(time.perf_counter() - tic)
            images_seen += len(images)
    total = sum(step_times)
    return {
        "iteration": _summary(step_times),
        "images_per_s": images_seen / total,
        "data_share": sum(data_times) / total,
        "peak_memory_mb": peak_memory_mb(device),
    }


@torch.inference_mode()
def time_interleaved(calls: dict[str, Callable[[], object]], *, device: torch.device, warmup: int = 1, runs: int = 3) -> dict:
    """Time several callables taking turns (a, b, c, a, b, c, ...), so drift on a shared machine hits all alike."""
    times = {name: [] for name in calls}
    for i in range(warmup + runs):
        for name, call in calls.items():
            tic = time.perf_counter()
            call()
            _sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - tic)
    return {name: _summary(t) for name, t in times.items()}


@torch.inference_mode()
def count_flops(call: Callable[[], object]) -> int:
    """Floating-point operations (a multiply-add counts 2) of the matrix products and convolutions in `call`."""
    counter = FlopCounterMode(display=False)
    with counter:
        call()
    return counter.get_total_flops()


@torch.inference_mode()
def matmul_gflops(*, device: torch.device, n: int = 2048, runs: int = 5) -> float:
    """The machine's measured float32 matrix-multiply rate (GFLOP/s, best of `runs` n x n products):
    the practical ceiling that convolution-heavy inference is compared with."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(runs):
        _sync(device)
        tic = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - tic)
    return 2 * n**3 / best / 1e9
