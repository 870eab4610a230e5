"""detectron2 C4 Faster R-CNN weights -> detkit's state_dict: an explicit name table, shape checks, anchor order.

detectron2's model zoo files (model_final_*.pkl, or a .pth saved by its trainer) hold a `model`
mapping of its module names. `detectron2_to_detkit` renames every tensor through the table below,
checks each shape against what `cfg` builds, and permutes the RPN's per-anchor channels:

    detectron2 name                                  detkit name
    backbone.stem.conv1.weight                       backbone.conv1.weight
    backbone.stem.conv1.norm.{P}                     backbone.bn1.{P}
    backbone.res{2,3,4}.{b}.conv{1,2,3}.weight       backbone.layer{1,2,3}.{b}.conv{1,2,3}.weight
    backbone.res{2,3,4}.{b}.conv{1,2,3}.norm.{P}     backbone.layer{1,2,3}.{b}.bn{1,2,3}.{P}
    backbone.res{2,3,4}.0.shortcut.weight            backbone.layer{1,2,3}.0.downsample.0.weight
    backbone.res{2,3,4}.0.shortcut.norm.{P}          backbone.layer{1,2,3}.0.downsample.1.{P}
    roi_heads.res5.{b}.<as above>                    roi_heads.box_head.res5.layer4.{b}.<as above>
    proposal_generator.rpn_head.conv.{W}             rpn.head.conv.{W}
    proposal_generator.rpn_head.objectness_logits.{W} rpn.head.objectness.{W}      (anchors permuted)
    proposal_generator.rpn_head.anchor_deltas.{W}    rpn.head.deltas.{W}           (anchors permuted)
    roi_heads.box_predictor.cls_score.{W}            roi_heads.predictor.cls_score.{W}
    roi_heads.box_predictor.bbox_pred.{W}            roi_heads.predictor.bbox_pred.{W}

with P in (weight, bias, running_mean, running_var) (frozen BN), W in (weight, bias), b the block
index (ResNet paper, Table 1: 3, 4, 6|23, 3 blocks for depth 50|101).

Anchor order: detectron2 orders a position's cell anchors size-major (for each size, each ratio);
detkit orders them ratio-major (for each ratio, each size). The objectness channels (A) and the
delta channel groups (A x 4) are reordered so detkit's anchor i reads detectron2's channel for the
same (size, ratio).

Input: detectron2's model zoo trained on BGR images (INPUT.FORMAT) in 0-255 minus PIXEL_MEAN, and its
ResNets stride the first 1x1 conv of a downsampling block (RESNETS.STRIDE_IN_1X1, inherited from the MSRA
ImageNet models). A config must build that ResNet (`model.backbone.stride_in_1x1: true`, checked); a
config fed RGB (`model.input_format: RGB`) gets conv1's input channels reversed, so it computes the same
function (the normalisation values are the config's to match; configs/detectron2/*.yaml do).

Classes: both keep the K foreground classes in the file's order, background last (K+1 scores), and
class-specific boxes (4K, class-major); detectron2's COCO order is the sorted COCO category ids,
which `detkit.checkpoint.coco_categories` (or the caller) maps back to COCO's own ids.
"""

from collections.abc import Mapping

import torch
from torch import Tensor

from detkit.errors import UserError

# Blocks per stage res2..res5 (ResNet paper, Table 1); detectron2's C4 models are bottleneck ResNets.
_STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
_NORM_PARAMS = ("weight", "bias", "running_mean", "running_var")

# detectron2 stage prefix -> detkit module prefix (res5 runs per region inside the RoI heads in both)
STAGE_PREFIXES = {
    "backbone.res2": "backbone.layer1",
    "backbone.res3": "backbone.layer2",
    "backbone.res4": "backbone.layer3",
    "roi_heads.res5": "roi_heads.box_head.res5.layer4",
}
# inside one bottleneck block: detectron2 suffix -> detkit suffix
BLOCK_NAMES = {
    **{f"conv{i}.weight": f"conv{i}.weight" for i in (1, 2, 3)},
    **{f"conv{i}.norm.{p}": f"bn{i}.{p}" for i in (1, 2, 3) for p in _NORM_PARAMS},
}
SHORTCUT_NAMES = {
    "shortcut.weight": "downsample.0.weight",
    **{f"shortcut.norm.{p}": f"downsample.1.{p}" for p in _NORM_PARAMS},
}
STEM_NAMES = {
    "backbone.stem.conv1.weight": "backbone.conv1.weight",
    **{f"backbone.stem.conv1.norm.{p}": f"backbone.bn1.{p}" for p in _NORM_PARAMS},
}
HEAD_NAMES = {
    **{f"proposal_generator.rpn_head.conv.{w}": f"rpn.head.conv.{w}" for w in ("weight", "bias")},
    **{f"proposal_generator.rpn_head.objectness_logits.{w}": f"rpn.head.objectness.{w}" for w in ("weight", "bias")},
    **{f"proposal_generator.rpn_head.anchor_deltas.{w}": f"rpn.head.deltas.{w}" for w in ("weight", "bias")},
    **{f"roi_heads.box_predictor.cls_score.{w}": f"roi_heads.predictor.cls_score.{w}" for w in ("weight", "bias")},
    **{f"roi_heads.box_predictor.bbox_pred.{w}": f"roi_heads.predictor.bbox_pred.{w}" for w in ("weight", "bias")},
}
# Tensors detectron2 files may hold that detkit computes itself (none are needed to run the model).
IGNORED = ("pixel_mean", "pixel_std")


def name_table(depth: int) -> dict[str, str]:
    """Every detectron2 name of a depth-`depth` C4 Faster R-CNN -> its detkit name (the table above, expanded)."""
    table = dict(STEM_NAMES)
    for (d2_stage, dk_stage), blocks in zip(STAGE_PREFIXES.items(), _STAGE_BLOCKS[depth]):
        for b in range(blocks):
            names = {**BLOCK_NAMES, **(SHORTCUT_NAMES if b == 0 else {})}
            table.update({f"{d2_stage}.{b}.{d2}": f"{dk_stage}.{b}.{dk}" for d2, dk in names.items()})
    table.update(HEAD_NAMES)
    return table


def expected_shapes(cfg, num_classes: int) -> dict[str, tuple[int, ...]]:
    """detkit name -> shape of the tensor `cfg` builds (bottleneck ResNet C4, res5 head)."""
    b = cfg.model.backbone
    width = b.width
    shapes: dict[str, tuple[int, ...]] = {"backbone.conv1.weight": (width, 3, 7, 7)}
    shapes.update({f"backbone.bn1.{p}": (width,) for p in _NORM_PARAMS})
    in_channels = width
    for i, (prefix, blocks) in enumerate(zip(STAGE_PREFIXES.values(), _STAGE_BLOCKS[b.depth])):
        planes = width * 2**i
        out = 4 * planes
        for j in range(blocks):
            p = f"{prefix}.{j}"
            shapes[f"{p}.conv1.weight"] = (planes, in_channels, 1, 1)
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            shapes[f"{p}.conv3.weight"] = (out, planes, 1, 1)
            for k, c in ((1, planes), (2, planes), (3, out)):
                shapes.update({f"{p}.bn{k}.{q}": (c,) for q in _NORM_PARAMS})
            if j == 0:
                shapes[f"{p}.downsample.0.weight"] = (out, in_channels, 1, 1)
                shapes.update({f"{p}.downsample.1.{q}": (out,) for q in _NORM_PARAMS})
            in_channels = out
        if i == 2:
            c4 = out
    c5 = in_channels
    head = cfg.model.rpn.head_channels or c4
    anchors = len(cfg.model.rpn.anchor_sizes) * len(cfg.model.rpn.anchor_ratios)
    shapes.update({
        "rpn.head.conv.weight": (head, c4, 3, 3),
        "rpn.head.conv.bias": (head,),
        "rpn.head.objectness.weight": (anchors, head, 1, 1),
        "rpn.head.objectness.bias": (anchors,),
        "rpn.head.deltas.weight": (4 * anchors, head, 1, 1),
        "rpn.head.deltas.bias": (4 * anchors,),
        "roi_heads.predictor.cls_score.weight": (num_classes + 1, c5),
        "roi_heads.predictor.cls_score.bias": (num_classes + 1,),
        "roi_heads.predictor.bbox_pred.weight": (4 * num_classes, c5),
        "roi_heads.predictor.bbox_pred.bias": (4 * num_classes,),
    })
    return shapes


def anchor_permutation(num_sizes: int, num_ratios: int) -> list[int]:
    """detkit anchor index (ratio-major) -> detectron2 anchor index (size-major) of the same (size, ratio)."""
    return [s * num_ratios + r for r in range(num_ratios) for s in range(num_sizes)]


def _check_config(cfg) -> None:
    m = cfg.model
    if m.backbone.depth not in _STAGE_BLOCKS:
        raise UserError(
            f"detectron2 C4 weights need a bottleneck ResNet: model.backbone.depth must be 50, 101 or 152, "
            f"got {m.backbone.depth}"
        )
    if m.backbone.preact or m.backbone.norm == "gn":
        raise UserError(
            "detectron2 C4 weights are for a post-activation ResNet with batch-norm statistics: "
            "set model.backbone.preact=false and model.backbone.norm=frozen_bn"
        )
    if not m.backbone.stride_in_1x1:
        raise UserError(
            "detectron2's C4 models stride the first 1x1 conv of each downsampling block: set "
            "model.backbone.stride_in_1x1=true (configs/detectron2/*.yaml do)"
        )
    if m.roi_heads.head != "res5":
        raise UserError("detectron2 C4 weights hold a res5 box head: set model.roi_heads.head=res5")
    if m.roi_heads.global_context:
        raise UserError(
            "detectron2 models are trained without global context and hold no weights for it "
            "(the classifier reads res5 features alone): set model.roi_heads.global_context=false"
        )


def detectron2_to_detkit(state: Mapping[str, Tensor], *, cfg) -> dict[str, Tensor]:
    """Rename a detectron2 C4 Faster R-CNN state (its `model` mapping) into detkit's state_dict for `cfg`.

    `cfg.model.num_classes`, when set, must match the file's classifier; null takes the file's count.
    Raises UserError naming the first key that is unknown, missing, or of the wrong shape.
    The result loads into `build_model(cfg)` with strict=True.
    """
    _check_config(cfg)
    table = name_table(cfg.model.backbone.depth)
    for key in state:
        if key not in table and key not in IGNORED:
            raise UserError(
                f"detectron2 weights: unexpected tensor '{key}' (not part of a ResNet-{cfg.model.backbone.depth} "
                f"C4 Faster R-CNN; check model.backbone.depth and that the file is a C4 model, not FPN or DC5)"
            )
    for key in table:
        if key not in state:
            raise UserError(
                f"detectron2 weights: tensor '{key}' is missing (check model.backbone.depth="
                f"{cfg.model.backbone.depth} and that the file is a C4 Faster R-CNN)"
            )
    file_classes = state["roi_heads.box_predictor.cls_score.weight"].shape[0] - 1
    num_classes = cfg.model.num_classes or file_classes
    if num_classes != file_classes:
        raise UserError(
            f"detectron2 weights have {file_classes} classes but model.num_classes={cfg.model.num_classes}: "
            f"set model.num_classes to {file_classes}"
        )
    shapes = expected_shapes(cfg, num_classes)
    out: dict[str, Tensor] = {}
    for d2_name, dk_name in table.items():
        tensor = torch.as_tensor(state[d2_name]).float()
        if tuple(tensor.shape) != shapes[dk_name]:
            raise UserError(
                f"detectron2 weights: '{d2_name}' has shape {tuple(tensor.shape)}, the config builds "
                f"{shapes[dk_name]} for '{dk_name}' (check model.backbone.depth/width, model.rpn.anchor_sizes/"
                f"anchor_ratios and model.num_classes)"
            )
        out[dk_name] = tensor
    if cfg.model.input_format == "RGB":  # the file's conv1 reads BGR: (C, 3, 7, 7) input channels reversed
        out["backbone.conv1.weight"] = out["backbone.conv1.weight"].flip(1).contiguous()
    perm = torch.tensor(anchor_permutation(len(cfg.model.rpn.anchor_sizes), len(cfg.model.rpn.anchor_ratios)))
    for name in ("rpn.head.objectness.weight", "rpn.head.objectness.bias"):
        out[name] = out[name][perm].contiguous()
    for name in ("rpn.head.deltas.weight", "rpn.head.deltas.bias"):
        t = out[name]
        # (4A, ...) -> (A, 4, ...) -> reorder anchors -> (4A, ...)
        out[name] = t.view(-1, 4, *t.shape[1:])[perm].reshape(t.shape).contiguous()
    return out
