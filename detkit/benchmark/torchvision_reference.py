"""torchvision's `FasterRCNN` class assembled as the same C4 detector, with the same weights: the reference
that `tools/benchmark.py --compare torchvision` times and checks detections against.

What is mapped (everything else is torchvision's own code path):
    backbone   torchvision resnet<depth> conv1..conv4 with FrozenBatchNorm2d (its detection convention),
               loaded with our trunk's tensors (same names)
    RPN        torchvision AnchorGenerator / RPNHead / RegionProposalNetwork; our head's three convs copied
    pooler     torchvision.ops.RoIPool or RoIAlign (aligned) on the stride-16 map
    box head   torchvision's layer4 (conv5) + global average pooling, loaded with our res5
    predictor  torchvision FastRCNNPredictor; background is class 0 there and class K here, so the rows
               are permuted on copy and labels are shifted back by `torchvision_detections`
    transform  GeneralizedRCNNTransform with our normalisation, test size and stride-16 padding

Only the plain detector has a torchvision counterpart: global context, iterative localization, the fc
head, GroupNorm/trainable BN or pre-activation backbones are refused.
"""

from collections import OrderedDict

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.rpn import AnchorGenerator, RPNHead
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign, RoIAlign, RoIPool

from detkit.errors import UserError
from detkit.modeling.backbone.resnet import C4_STRIDE
from detkit.modeling.detector import FasterRCNN


class _SingleMapPooler(nn.Module):
    """torchvision's RoIHeads calls `box_roi_pool(features, proposals, image_shapes)` with a dict of maps."""

    def __init__(self, op: nn.Module):
        super().__init__()
        self.op = op

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes) -> Tensor:
        return self.op(features["0"], proposals)


def _check_supported(cfg) -> None:
    r, b = cfg.model.roi_heads, cfg.model.backbone
    unsupported = []
    if r.head != "res5":
        unsupported.append(f"model.roi_heads.head={r.head}")
    if r.global_context:
        unsupported.append("model.roi_heads.global_context=true")
    if r.box_refinement:
        unsupported.append("model.roi_heads.box_refinement=true")
    if b.norm != "frozen_bn" or b.preact or b.width != 64:
        unsupported.append("a backbone other than a standard ResNet with frozen BN")
    if b.stride_in_1x1:
        unsupported.append("model.backbone.stride_in_1x1=true")
    m = cfg.model
    if m.input_format != "RGB" or m.pixel_range != 1.0:
        unsupported.append(f"model.input_format={m.input_format} with model.pixel_range={m.pixel_range}")
    if not m.rpn.anchor_round or m.rpn.anchor_offset != 0.0:
        unsupported.append("anchors that are not rounded to pixels and centred at x*16 (model.rpn.anchor_round/anchor_offset)")
    if m.size_divisibility != C4_STRIDE or cfg.input.test_resize != "tensor" or m.clip_mapped_boxes:
        unsupported.append("model.size_divisibility, input.test_resize or model.clip_mapped_boxes other than 16, tensor, false")
    if unsupported:
        raise UserError(
            f"--compare torchvision: torchvision's FasterRCNN has no counterpart for {', '.join(unsupported)}; "
            "compare the plain C4 detector (e.g. configs/coco_r101.yaml; for detectron2's R101-C4 test workload add "
            "model.roi_heads.pooler=roi_align model.roi_heads.sampling_ratio=0 model.rpn.post_nms_topk_test=1000 "
            "model.rpn.anchor_sizes=[32,64,128,256,512] input.min_size_test=800 input.max_size_test=1333)"
        )


@torch.no_grad()
def build_torchvision_equivalent(model: FasterRCNN, cfg) -> TorchvisionFasterRCNN:
    """torchvision's FasterRCNN with `model`'s architecture, test settings and weights, on its device, in eval mode.

    `model` must still hold frozen BN layers (build the reference before folding BN into convolutions).
    """
    _check_supported(cfg)
    state = model.state_dict()
    if not any(k.startswith("backbone.") and k.endswith("running_var") for k in state):
        raise ValueError("build the torchvision reference before folding BN: the model has no BN statistics left")
    depth = cfg.model.backbone.depth
    net = getattr(torchvision.models, f"resnet{depth}")(norm_layer=FrozenBatchNorm2d)
    resnet_state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    res5_prefix = "roi_heads.box_head.res5."
    resnet_state.update({k[len(res5_prefix) :]: v for k, v in state.items() if k.startswith(res5_prefix)})
    missing, unexpected = net.load_state_dict(resnet_state, strict=False)
    if unexpected or set(missing) != {"fc.weight", "fc.bias"}:
        raise ValueError(f"weights do not map onto torchvision's resnet{depth}: missing {missing}, unexpected {unexpected}")

    trunk = nn.Sequential(OrderedDict(
        conv1=net.conv1, bn1=net.bn1, relu=net.relu, maxpool=net.maxpool,
        layer1=net.layer1, layer2=net.layer2, layer3=net.layer3,
    ))
    trunk.out_channels = model.backbone.out_channels
    box_head = nn.Sequential(net.layer4, nn.AdaptiveAvgPool2d(1), nn.Flatten())

    rpn_cfg, roi_cfg = cfg.model.rpn, cfg.model.roi_heads
    anchors = AnchorGenerator(sizes=(tuple(rpn_cfg.anchor_sizes),), aspect_ratios=(tuple(rpn_cfg.anchor_ratios),))
    num_anchors = anchors.num_anchors_per_location()[0]
    ours_rpn = model.rpn.head
    if ours_rpn.conv.out_channels != ours_rpn.conv.in_channels:
        raise UserError("--compare torchvision: torchvision's RPNHead needs model.rpn.head_channels: 0")
    rpn_head = RPNHead(trunk.out_channels, num_anchors)
    rpn_head.conv[0][0].load_state_dict(ours_rpn.conv.state_dict())
    rpn_head.cls_logits.load_state_dict(ours_rpn.objectness.state_dict())
    rpn_head.bbox_pred.load_state_dict(ours_rpn.deltas.state_dict())

    size = (roi_cfg.pooler_resolution, roi_cfg.pooler_resolution)
    scale = 1.0 / C4_STRIDE
    if roi_cfg.pooler == "roi_pool":
        pool_op = RoIPool(size, scale)
    else:
        pool_op = RoIAlign(size, scale, roi_cfg.sampling_ratio, aligned=True)

    ours = model.roi_heads.predictor
    num_classes = model.roi_heads.num_classes
    predictor = FastRCNNPredictor(ours.cls_score.in_features, num_classes + 1)
    # ours: logits [fg_0 .. fg_{K-1}, bg], deltas [fg_0 .. fg_{K-1}]; torchvision: [bg, fg_0 .. fg_{K-1}] for both
    order = torch.cat([torch.tensor([num_classes]), torch.arange(num_classes)])
    predictor.cls_score.weight.copy_(ours.cls_score.weight[order])
    predictor.cls_score.bias.copy_(ours.cls_score.bias[order])
    predictor.bbox_pred.weight.zero_()
    predictor.bbox_pred.bias.zero_()
    predictor.bbox_pred.weight[4:].copy_(ours.bbox_pred.weight)
    predictor.bbox_pred.bias[4:].copy_(ours.bbox_pred.bias)

    reference = TorchvisionFasterRCNN(
        trunk,
        num_classes=None,
        min_size=cfg.input.min_size_test,
        max_size=cfg.input.max_size_test,
        image_mean=list(cfg.model.pixel_mean),
        image_std=list(cfg.model.pixel_std),
        rpn_anchor_generator=anchors,
        rpn_head=rpn_head,
        rpn_pre_nms_top_n_test=rpn_cfg.pre_nms_topk_test,
        rpn_post_nms_top_n_test=rpn_cfg.post_nms_topk_test,
        rpn_nms_thresh=rpn_cfg.nms_thresh,
        box_roi_pool=MultiScaleRoIAlign(["0"], size, 0),  # type-checked by the constructor; replaced below
        box_head=box_head,
        box_predictor=predictor,
        box_score_thresh=roi_cfg.score_threshold,
        box_nms_thresh=roi_cfg.nms_thresh,
        box_detections_per_img=roi_cfg.detections_per_image,
        bbox_reg_weights=tuple(roi_cfg.bbox_reg_weights),
        size_divisible=C4_STRIDE,
    )
    # MultiScaleRoIAlign is FPN's pooler (unaligned RoIAlign, scale inferred per level); C4 pools one map
    reference.roi_heads.box_roi_pool = _SingleMapPooler(pool_op)
    return reference.to(model.device).eval()


def torchvision_detections(reference: TorchvisionFasterRCNN, image: Tensor) -> dict:
    """Run the reference on one (3, H, W) 0..255 image; detections in our convention (labels 0..K-1)."""
    device = next(reference.parameters()).device
    out = reference([image.to(device=device, dtype=torch.float32) / 255.0])[0]
    return {"boxes": out["boxes"], "scores": out["scores"], "labels": out["labels"] - 1}
