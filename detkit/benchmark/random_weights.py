"""Random weights that behave like trained ones, so a benchmark or a comparison needs no download:
ResNet BN statistics measured on random images, and a classifier whose scores pass the detection threshold."""

import math

import torch
import torchvision


@torch.no_grad()
def calibrated_resnet_weights(depth: int, path, input_std: float = 1.0) -> None:
    """Save a torchvision-format ResNet state_dict with random weights whose BN statistics are measured
    on random images, so a benchmark without downloaded weights sees activations of a realistic scale
    (uncalibrated deep random ResNets produce huge features, and then an RPN keeps no proposal).

    `input_std`: the spread of the normalised images the detector will feed it (about 1.3 for torchvision's
    0-1 normalisation, about 74 for detectron2's 0-255 input with std 1; see `normalised_input_std`)."""
    torch.manual_seed(0)
    net = getattr(torchvision.models, f"resnet{depth}")()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration batches
    net.train()
    for _ in range(2):
        net(torch.randn(4, 3, 224, 224) * input_std)
    torch.save(net.state_dict(), path)


def normalised_input_std(pixel_range: float, pixel_std: list[float]) -> float:
    """Standard deviation of uniformly random 0-255 pixels after the detector's normalisation (pixels scaled to
    0..`pixel_range`, the mean subtracted, divided by `pixel_std`)."""
    uniform_std = 255.0 / math.sqrt(12.0)  # 73.6
    return uniform_std * (pixel_range / 255.0) / (sum(pixel_std) / len(pixel_std))


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
