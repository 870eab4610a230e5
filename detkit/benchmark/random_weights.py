"""Random weights that behave like trained ones, so a benchmark or a comparison needs no download:
ResNet BN statistics measured on random images, and a classifier whose scores pass the detection threshold."""

import math

import torch
import torchvision


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
