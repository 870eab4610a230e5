"""Speed-ups that keep the detections: the one place they are applied, each switchable.

    model.channels_last   NHWC tensors and weights (`use_channels_last`, applied by `build_model`, so
                          training runs in it too): oneDNN's native layout on CPU, tensor cores' on GPU;
                          regions pooled for the conv5 head are converted too, so the head never
                          switches layout per call
    test.fold_bn          frozen BN folded into the preceding convolutions (`detkit.modeling.fold_bn`):
                          one pass less over every feature map; folded convolutions keep the layout
    test.compile          torch.compile of the conv1..conv4 trunk and the per-region head (needs a C++
                          compiler on CPU; the first images of each new shape pay the compilation)
    test.amp              CUDA only: the forward pass under autocast (bf16 where supported, else fp16);
                          boxes and scores are computed in float32 after the head

Inference always runs under `torch.inference_mode` (no autograd bookkeeping), the per-class NMS is one
batched call and no stage loops over regions in Python. `tests/test_optimize.py` checks that every
switch keeps the detections.
"""

import torch

from detkit.modeling.detector import FasterRCNN
from detkit.modeling.fold_bn import fold_frozen_bn
from detkit.modeling.roi_heads import RoIPooler


def optimize_for_inference(
    model: FasterRCNN,
    *,
    fold_bn: bool = False,
    torch_compile: bool = False,
    amp: bool = False,
) -> FasterRCNN:
    """Apply the switched-on inference speed-ups to `model` in place (weights must already be loaded); returns
    it in eval mode. Its memory layout is `build_model`'s (`model.channels_last`), which folding keeps."""
    model.eval()
    if amp and model.device.type == "cuda":
        model.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if fold_bn:
        fold_frozen_bn(model)
    if torch_compile:
        model.backbone = torch.compile(model.backbone, dynamic=False)
        model.roi_heads.box_head = torch.compile(model.roi_heads.box_head, dynamic=True)
    return model


def use_channels_last(model: FasterRCNN) -> None:
    """Convert weights, the padded batch and the pooled regions to channels-last (NHWC) layout, in place:
    the one place the layout is set (`build_model` calls it for `model.channels_last`)."""
    model.to(memory_format=torch.channels_last)
    model.preprocessor.channels_last = True
    for module in model.modules():
        if isinstance(module, RoIPooler):
            module.channels_last = True
