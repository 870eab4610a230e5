"""Timing of inference (per stage) and training iterations, with a reference measured in the same run.

Times are medians over `runs` after `warmup` untimed runs; the spread is (min, max). Compare ratios
within one run rather than absolute numbers across runs: shared machines are noisy.
"""

import statistics
import time

import torch
import torchvision

from detkit.modeling.detector import FasterRCNN


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


def time_training(model: FasterRCNN, loader, *, warmup: int = 1, runs: int = 3, lr: float = 0.001) -> dict:
    """Training iterations from `loader`: time per iteration, images/s, and the share spent waiting for data."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9)
    device = model.device
    data_times, step_times, images_seen = [], [], 0
    it = iter(loader)
    for i in range(warmup + runs):
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
    }
