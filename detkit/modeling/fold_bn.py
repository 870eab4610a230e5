"""Inference-time folding of frozen BN into the preceding convolution.

A frozen BN is a fixed per-channel affine map y = x * s + t with s = w / sqrt(var + eps) and
t = b - mean * s. After a bias-free convolution W it folds exactly into a convolution with weights
W * s (per output channel) and bias t, saving one pass over every feature map. Only the standard
units fold (conv_k -> bn_k); in pre-activation units the norm precedes its convolution and stays.
Folding changes the module structure, so it is applied after weights are loaded, for inference only.
"""

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from detkit.modeling.backbone.resnet import PreActBasicBlock, PreActBottleneck


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: FrozenBatchNorm2d) -> nn.Conv2d:
    scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)
    # the fused weights keep the replaced convolution's memory layout (channels-last after `use_channels_last`)
    fused.weight = nn.Parameter(torch.empty_like(conv.weight))
    fused.weight.copy_(conv.weight * scale[:, None, None, None])
    fused.bias.copy_(bias)
    return fused


def fold_frozen_bn(model: nn.Module) -> int:
    """Fold every FrozenBatchNorm2d that directly follows a convolution into it, in place.

    Pairs are `conv<k>`/`bn<k>` attributes of one module (stem and standard residual units) and
    consecutive (Conv2d, FrozenBatchNorm2d) entries of an nn.Sequential (projection shortcuts).
    Trainable BN and GroupNorm are left alone. Returns the number of folded pairs.
    """
    folded = 0
    for module in list(model.modules()):
        if isinstance(module, (PreActBasicBlock, PreActBottleneck)):
            continue
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                if isinstance(module[i], nn.Conv2d) and isinstance(module[i + 1], FrozenBatchNorm2d):
                    module[i] = _fold(module[i], module[i + 1])
                    module[i + 1] = nn.Identity()
                    folded += 1
            continue
        for k in range(1, 4):
            conv, bn = getattr(module, f"conv{k}", None), getattr(module, f"bn{k}", None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, FrozenBatchNorm2d):
                setattr(module, f"conv{k}", _fold(conv, bn))
                setattr(module, f"bn{k}", nn.Identity())
                folded += 1
    return folded
