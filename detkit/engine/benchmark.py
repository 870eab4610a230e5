"""Timing of inference (per stage) and training iterations, with a reference measured in the same run.

Times are medians over `runs` after `warmup` untimed runs; the spread is (min, max). Compare ratios
within one run rather than absolute numbers across runs: shared machines are noisy.
"""

import math
import resource
import statistics
import time
from typing import Callable

import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from detkit.modeling.detector import FasterRCNN
from detkit.structures.boxes import box_iou


@torch.no_grad()
def calibrated_resnet_weights(depth: int, path) -> None:
    """Save a torchvision-format ResNet state_dict with random weights whose BN statistics are measured
    on random images, so a benchmark without downloaded weights sees activations of a realistic scale
    (uncalibrated deep random ResNets produce huge features, and then an RPN keeps no proposal)."""
    torch.manual_seed(0)
    net = getattr(torchvision.models, f"resnet{depth}")()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration batches
    net.train()
    for _ in range(2):
        net(torch.randn(4, 3, 224, 224))
    torch.save(net.state_dict(), path)


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


def compare_detections(a: dict, b: dict, *, min_iou: float = 0.99, score_tol: float = 0.05) -> dict:
    """Whether two detection sets of one image are the same up to order and numerical error.

    Each detection of one set needs a counterpart in the other with the same label, IoU >= `min_iou` and a
    score within `score_tol`, except detections scored within `score_tol` of the lower of the two sets'
    lowest kept scores: a float-level difference may decide which of two nearly tied detections makes the
    top-N cut. The tolerances are not float epsilons because, with roi_pool, a box moved by a float-level
    amount can cross an integer bin boundary and pool a slightly different region (measured on R101 at
    800 px: scores move by up to ~0.03 with BN folded and channels-last layout together).
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
        iou = box_iou(x["boxes"], y["boxes"]) * (x["labels"][:, None] == y["labels"][None, :])
        best_iou, partner = iou[must_match].max(dim=1)
        worst_iou = min(worst_iou, best_iou.min().item())
        score_diff = (x["scores"][must_match] - y["scores"][partner]).abs()
        max_score_diff = max(max_score_diff, score_diff.max().item())
    same = worst_iou >= min_iou and max_score_diff <= score_tol
    return {"same": same, "worst_iou": worst_iou, "max_score_diff": max_score_diff, "counts": counts}


@torch.inference_mode()
def spread_class_scores(model, image: torch.Tensor, logit_std: float = 2.0) -> None:
    """Random heads score every class about 1/K, below the detection threshold: redraw the classifier so its
    logits have std `logit_std` on this image's regions, so there are detections to compare and post-process."""
    batch, sizes, _ = model.preprocessor([image])
    feature = model.backbone(batch)
    proposals, _ = model.rpn(feature, sizes)
    features = model.roi_heads.box_features(feature, proposals, sizes)  # (R, D)
    rms = features.pow(2).mean().sqrt().item()
    cls = model.roi_heads.predictor.cls_score
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(cls.weight.shape, generator=generator) * logit_std / (rms * math.sqrt(cls.in_features))
    cls.weight.copy_(weight)
