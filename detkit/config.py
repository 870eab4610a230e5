"""Configuration: the defaults below, a YAML file (which may name a `_base_` file), and dotted KEY=VALUE overrides.

Every key the project reads is listed in DEFAULTS with a one-line comment. A YAML file or an
override may only set keys that exist here, with a value of the same type (ints are accepted
where floats are expected); keys whose default is null list their allowed types in NULLABLE.
Errors are `UserError`s that name the key and the file.
"""

import copy
from pathlib import Path
from typing import Any

import yaml

from detkit.errors import UserError

DEFAULTS: dict[str, Any] = {
    "seed": 0,  # seeds python, numpy and torch; also fixes the training data order
    "model": {
        "num_classes": None,  # foreground classes; null: taken from the first training dataset
        "device": "auto",  # cpu | cuda | auto (cuda when available)
        "channels_last": False,  # NHWC memory format for the convolutions (often faster on GPUs with AMP)
        "weights": "",  # detkit checkpoint or detectron2 .pkl/.pth to start the whole detector from; layers of another shape stay new
        "pixel_mean": [0.485, 0.456, 0.406],  # RGB mean of 0-1 images, the convention of torchvision's weights
        "pixel_std": [0.229, 0.224, 0.225],  # RGB std of 0-1 images, same convention
        "input_format": "RGB",  # RGB | BGR: channel order the backbone's weights expect (pixel_mean/std in that order)
        "pixel_range": 1.0,  # 1.0 | 255.0: pixel_mean/std are for pixels in 0..pixel_range (detectron2, MSRA: 255)
        "size_divisibility": 16,  # pad the batch to a multiple of this; 0: only to the largest image (detectron2 C4)
        "clip_mapped_boxes": False,  # test: clip boxes mapped back to the input image and drop empty ones (detectron2)
        "backbone": {
            "depth": 101,  # 18, 34, 50, 101 or 152 (ResNet paper, Table 1)
            "weights": "imagenet",  # imagenet | path to a torchvision ResNet state_dict or MSRA R-50.pkl/R-101.pkl | null (MSRA init)
            "norm": "frozen_bn",  # frozen_bn (fine-tuning) | bn (batch statistics) | gn (GroupNorm, 32 groups)
            "freeze_at": 2,  # 0: train all; 1: freeze conv1; k>=2: freeze conv1 and res2..res(k)
            "preact": False,  # pre-activation units (He et al., Identity Mappings, ECCV 2016)
            "width": 64,  # channels of conv1 and res2 (64 in the paper); other stages double it
            "stride_in_1x1": False,  # downsampling bottlenecks stride the first 1x1 conv (paper, MSRA, detectron2); false: the 3x3 (torchvision)
        },
        "rpn": {
            "anchor_sizes": [64, 128, 256, 512],  # anchor side lengths in input pixels (paper: 128-512, COCO adds 64)
            "anchor_ratios": [0.5, 1.0, 2.0],  # anchor height/width ratios
            "anchor_offset": 0.0,  # anchor centres at (x + offset) * stride of each feature position (detectron2: 0.0)
            "anchor_round": True,  # round anchor widths/heights to whole pixels (torchvision); false: exact (detectron2)
            "bbox_reg_weights": [1.0, 1.0, 1.0, 1.0],  # scales of the RPN's (dx, dy, dw, dh) targets (detectron2: all 1)
            "head_channels": 0,  # channels of the 3x3 conv; 0: same as the backbone's output
            "iou_thresholds": [0.3, 0.7],  # below the first: negative; at or above the second: positive
            "batch_size_per_image": 256,  # anchors sampled per image for the losses
            "positive_fraction": 0.5,  # at most this share of the sampled anchors are positive
            "pre_nms_topk_train": 12000,  # proposals kept per image before NMS in training
            "post_nms_topk_train": 2000,  # proposals kept per image after NMS in training (paper: 2000)
            "pre_nms_topk_test": 6000,  # proposals kept per image before NMS at test time
            "post_nms_topk_test": 300,  # proposals kept per image after NMS at test time (paper: 300)
            "nms_thresh": 0.7,  # proposal NMS IoU
            "min_box_size": 0.0,  # proposals smaller than this (input pixels) are dropped
            "smooth_l1_beta": 0.1111111111111111,  # 1/9 as in torchvision; 0 gives L1
            "loss_weight": 1.0,  # multiplies both RPN losses
        },
        "roi_heads": {
            "head": "res5",  # res5: conv5_x per region (the paper's C4); fc: two FC layers on pooled conv4
            "pooler": "roi_pool",  # roi_pool (the paper) | roi_align
            "pooler_resolution": 14,  # pooled size; res5 halves it (14 -> 7)
            "sampling_ratio": 0,  # roi_align sampling points per bin; 0: adaptive
            "fc_dim": 1024,  # width of the two FC layers of the fc head
            "batch_size_per_image": 512,  # RoIs sampled per image for the losses
            "positive_fraction": 0.25,  # share of foreground RoIs (Fast R-CNN)
            "fg_iou_thresh": 0.5,  # IoU at or above: foreground
            "bg_iou_thresh_low": 0.0,  # IoU in [this, fg_iou_thresh): background (Fast R-CNN used 0.1)
            "bbox_reg_weights": [10.0, 10.0, 5.0, 5.0],  # scales of the (dx, dy, dw, dh) targets
            "smooth_l1_beta": 0.0,  # 0 gives L1, as detectron2
            "score_threshold": 0.05,  # detections below this score are dropped
            "nms_thresh": 0.5,  # per-class NMS IoU at test time
            "drop_empty_before_nms": True,  # drop boxes with a side <= 0.01 px before NMS; false: keep them (detectron2)
            "detections_per_image": 100,  # at most this many detections per image (COCO maxDets)
            "box_refinement": False,  # iterative localization: pool again at regressed boxes, then vote
            "refine_nms_thresh": 0.3,  # NMS IoU over the union of original and refined boxes
            "vote_iou_thresh": 0.8,  # box voting: same-class boxes at or above this IoU are averaged
            "global_context": False,  # concatenate a whole-image RoI feature to every region's feature
            "context_pooler_resolution": 0,  # pooled size of the whole-image RoI; 0: pooler_resolution (not published)
            "context_shared_head": True,  # the whole-image RoI goes through the regions' own layers (not published)
        },
    },
    "input": {
        "min_size_train": [600],  # short side in training, one picked at random per image
        "max_size_train": 1000,  # long side cap in training
        "min_size_test": 600,  # short side at test time (paper: 600)
        "max_size_test": 1000,  # long side cap at test time (paper: 1000)
        "test_resize": "tensor",  # tensor: bilinear on the normalised image | pil: PIL bilinear on uint8 pixels (detectron2)
        "hflip_prob": 0.5,  # horizontal flip probability in training
        "color_jitter": 0.0,  # brightness/contrast/saturation jitter strength in training; 0: off
        "crop_size": 0,  # training: a random crop_size x crop_size window after the resize; 0: no crop
        "crop_min_visible": 0.5,  # a box keeping less than this share of its area in the crop is dropped
    },
    "data": {
        "train": [],  # list of datasets: {format: coco|voc|shapes, ...}; see README
        "test": [],  # list of datasets evaluated by test_net and during training
        "cache_dir": "",  # where generated data (shapes) lives; empty: ~/.cache/detkit
        "keep_difficult": False,  # VOC: keep `difficult` objects as training targets
    },
    "dataloader": {
        "num_workers": 2,  # worker processes loading training images
        "aspect_ratio_grouping": True,  # batch landscape and portrait images separately
    },
    "solver": {
        "max_iter": 90000,  # training iterations
        "ims_per_batch": 16,  # images per iteration (all processes together)
        "base_lr": 0.02,  # learning rate after warmup
        "momentum": 0.9,  # SGD momentum
        "weight_decay": 0.0001,  # L2 on weights
        "weight_decay_norm": 0.0,  # L2 on normalisation scales and shifts
        "lr_schedule": "step",  # step | cosine
        "steps": [60000, 80000],  # step schedule: iterations where the LR is multiplied by gamma
        "gamma": 0.1,  # step schedule factor
        "warmup_iters": 1000,  # linear warmup length
        "warmup_factor": 0.001,  # LR multiplier at iteration 0 of the warmup
        "clip_grad_norm": 0.0,  # clip the global gradient norm to this; 0: off
        "checkpoint_period": 5000,  # save model_XXXXXXX.pth every this many iterations
        "amp": False,  # mixed precision on CUDA (bf16 where supported, else fp16 with a grad scaler); ignored on CPU
        "cudnn_benchmark": False,  # let cuDNN pick the fastest kernels per input shape (best with fixed sizes)
        "log_period": 20,  # iterations between log lines
        "tensorboard": False,  # write TensorBoard scalars to the output folder
    },
    "test": {
        "eval_period": 0,  # evaluate every this many iterations during training; 0: only at the end
        "scales": [],  # multi-scale testing: short sides; empty: single scale input.min_size_test
        "flip": False,  # also test on the horizontally flipped image
        "multiscale_mode": "union",  # union: detector per scale, NMS over the union | maxout: the paper's
        "ims_per_batch": 1,  # images per inference batch
        "fold_bn": False,  # fold frozen BN into the convolutions before inference (same detections, faster)
        "compile": False,  # torch.compile the trunk and the per-region head for inference (slow first images)
        "amp": False,  # CUDA inference under autocast (bf16 where supported, else fp16); ignored on CPU
    },
}

# Keys whose default is null (or an empty list) and the types they accept.
NULLABLE: dict[str, tuple[type, ...]] = {
    "model.num_classes": (int,),
    "model.backbone.weights": (str,),
}

# Keys whose value must satisfy a rule beyond its type, checked where the value is read (file or
# override), so a bad value stops at load with the key and the file named: key -> (rule, description).
VALUE_RULES: dict[str, tuple[Any, str]] = {
    "model.input_format": (lambda v: v in ("RGB", "BGR"), "RGB or BGR"),
    "model.pixel_range": (lambda v: v > 0, "a positive number (1.0 or 255.0)"),
    "model.size_divisibility": (lambda v: v >= 0, "0 or a positive integer"),
    "model.rpn.anchor_offset": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "model.rpn.bbox_reg_weights": (
        lambda v: len(v) == 4 and all(isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in v),
        "a list of 4 positive numbers",
    ),
    "input.test_resize": (lambda v: v in ("tensor", "pil"), "tensor or pil"),
}


class Config(dict):
    """A nested dict with attribute access: `cfg.model.backbone.depth`."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def to_dict(self) -> dict:
        return {k: v.to_dict() if isinstance(v, Config) else copy.deepcopy(v) for k, v in self.items()}

    def dump(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _to_config(d: dict) -> Config:
    return Config({k: _to_config(v) if isinstance(v, dict) else v for k, v in d.items()})


def _check_type(key: str, value: Any, default: Any, source: str) -> Any:
    """Return `value` if it fits the type of `default` (ints widen to floats), else raise."""
    if value is None:
        if default is None or key in NULLABLE:
            return None
        raise UserError(f"config key '{key}' in {source} cannot be null (default: {default!r})")
    if default is None:
        allowed = NULLABLE.get(key)
        if allowed is None or isinstance(value, bool) and bool not in allowed or not isinstance(value, allowed):
            names = " or ".join(t.__name__ for t in allowed or ())
            raise UserError(f"config key '{key}' in {source} must be {names} or null, got {value!r}")
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise UserError(
            f"config key '{key}' in {source} must be {type(default).__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def _merge(base: dict, update: dict, prefix: str, source: str) -> None:
    """Merge `update` into `base` in place, checking every key against `base`."""
    for key, value in update.items():
        full = f"{prefix}{key}"
        if key not in base:
            close = [k for k in base if k.startswith(str(key)[:3])]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UserError(f"unknown config key '{full}' in {source}{hint}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise UserError(f"config key '{full}' in {source} is a section: give a mapping, not {value!r}")
            _merge(base[key], value, full + ".", source)
        else:
            base[key] = _check_type(full, value, base[key], source)
            rule = VALUE_RULES.get(full)
            if rule is not None and not rule[0](base[key]):
                raise UserError(f"config key '{full}' in {source} must be {rule[1]}, got {base[key]!r}")


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping at the top level")
    return data


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise UserError(f"override '{item}' must look like KEY=VALUE (for example solver.max_iter=200)")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise UserError(f"override '{item}': value {raw!r} is not valid YAML") from None
    return key.strip().split("."), value


def _merge_file(cfg: dict, path: Path, seen: tuple[Path, ...]) -> None:
    """Merge `path` into `cfg`, after the file its `_base_` names (relative to it), if any."""
    path = path.resolve()
    if path in seen:
        raise UserError(f"{path}: _base_ chain loops back to itself")
    data = _read_yaml(path)
    base = data.pop("_base_", None)
    if base is not None:
        if not isinstance(base, str):
            raise UserError(f"{path}: _base_ must be a file name, got {base!r}")
        _merge_file(cfg, path.parent / base, seen + (path,))
    _merge(cfg, data, "", str(path))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- `_base_` files <- `path` <- overrides ("solver.max_iter=200", values parsed as YAML)."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        _merge_file(cfg, Path(path), seen=())
    for item in overrides or []:
        keys, value = _parse_override(item)
        nested: Any = value
        for k in reversed(keys):
            nested = {k: nested}
        _merge(cfg, nested, "", f"override '{item}'")
    return _to_config(cfg)
