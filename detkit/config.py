"""Configuration: the defaults below, a YAML file (which may name a `_base_` file), and dotted KEY=VALUE overrides.

Every key the project reads is listed in DEFAULTS with a one-line comment. A YAML file or an
override may only set keys that exist here, with a value of the same type (ints are accepted
where floats are expected); keys whose default is null list their allowed types in NULLABLE.
A key whose values are restricted beyond their type has its default wrapped in a `Rule`
(`one_of`, `between`, `at_least`, `numbers`, or a `Rule` with its own check), so the allowed
values sit next to the default and the comment; every value is checked as it is read, and
`load_config` then checks the keys that depend on each other. Errors are `UserError`s that name
the key, the allowed values and the file, raised before any work starts.
"""

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from detkit.data.shapes import parse_variant
from detkit.errors import UserError


class Rule:
    """A key's default and the values it accepts: `problem(value)` is None for an allowed value,
    else what is wrong; `allowed` says in words what the key takes."""

    def __init__(self, default: Any, allowed: str, check: Callable[[Any], bool | str | None]):
        self.default = default
        self.allowed = allowed
        self.check = check

    def problem(self, value: Any) -> str | None:
        """`check` returns True/False, or an explanation string for a bad value (None: fine)."""
        result = self.check(value)
        if result is True or result is None:
            return None
        if result is False:
            return f"must be {self.allowed}, got {value!r}"
        return result


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def one_of(default: Any, *others: Any) -> Rule:
    """An enumerated key: the default or one of `others`."""
    choices = (default, *others)
    return Rule(default, "one of " + " | ".join(map(str, choices)), lambda v: v in choices)


def between(default: float, low: float, high: float) -> Rule:
    return Rule(default, f"a number in [{low}, {high}]", lambda v: low <= v <= high)


def below_one(default: float) -> Rule:
    """A number in [0, 1): 1 itself excluded (an offset of a whole cell, a target with nothing left on the true class)."""
    return Rule(default, "a number in [0, 1)", lambda v: 0.0 <= v < 1.0)


def at_least(default: float, low: float) -> Rule:
    return Rule(default, f"a number >= {low}", lambda v: v is None or v >= low)


def numbers(
    default: list,
    *,
    length: int | None = None,
    positive: bool = False,
    integer: bool = False,
    low: float | None = None,
    high: float | None = None,
    increasing: bool = False,
    empty_ok: bool = False,
) -> Rule:
    """A list of numbers: of `length` (else non-empty unless `empty_ok`), each > 0 / an int / in
    [low, high], strictly increasing."""
    kind = ("positive " if positive else "") + ("integers" if integer else "numbers")
    words = [f"a list of {length} {kind}" if length else f"a {'' if empty_ok else 'non-empty '}list of {kind}"]
    if low is not None:
        words.append(f"in [{low}, {high}]")
    if increasing:
        words.append("in increasing order")

    def check(v: list) -> bool:
        if length is not None and len(v) != length or not v and not empty_ok:
            return False
        if not all(_is_number(x) and (not integer or isinstance(x, int)) for x in v):
            return False
        if positive and any(x <= 0 for x in v) or low is not None and any(not low <= x <= high for x in v):
            return False
        return not increasing or all(a < b for a, b in zip(v, v[1:]))

    return Rule(default, " ".join(words), check)


def is_device(name: str) -> bool:
    return name in ("cpu", "cuda", "auto") or re.fullmatch(r"cuda:\d+", name) is not None


# Dataset entries of data.train / data.test: format -> (required keys, optional keys); `format` is implied.
#   {format: coco, images: IMAGE_DIR, annotations: JSON}             optional: filter_empty
#   {format: voc, root: .../VOC2007, split: trainval}                optional: keep_difficult
#   {format: shapes, split: train|test}                              optional: num_images, seed, variant
DATASET_FORMATS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "coco": (("images", "annotations"), ("filter_empty",)),
    "voc": (("root", "split"), ("keep_difficult",)),
    "shapes": (("split",), ("num_images", "seed", "variant")),
}
# The type of every dataset key.
DATASET_KEY_TYPES: dict[str, type] = {
    "images": str,
    "annotations": str,
    "filter_empty": bool,
    "root": str,
    "split": str,
    "keep_difficult": bool,
    "num_images": int,
    "seed": int,
    "variant": str,
}
DATASETS_ALLOWED = "a list of {format: " + " | ".join(DATASET_FORMATS) + ", ...} mappings"


def describe_format(fmt: str) -> str:
    required, optional = DATASET_FORMATS[fmt]
    return f"{fmt} takes {', '.join(required)}" + (f" (optional: {', '.join(optional)})" if optional else "")


def dataset_problem(spec: Any) -> str | None:
    """What is wrong with one dataset entry, or None."""
    if not isinstance(spec, dict):
        return f"must be a mapping such as {{format: shapes, split: train}}, got {spec!r}"
    fmt = spec.get("format")
    if fmt not in DATASET_FORMATS:
        return f"unknown dataset format {fmt!r}; allowed formats: {', '.join(DATASET_FORMATS)}"
    required, optional = DATASET_FORMATS[fmt]
    missing = [k for k in required if k not in spec]
    if missing:
        return f"missing key {', '.join(missing)} for format {fmt}; {describe_format(fmt)}"
    unknown = [k for k in spec if k != "format" and k not in required and k not in optional]
    if unknown:
        return f"unknown key {', '.join(map(str, unknown))} for format {fmt}; {describe_format(fmt)}"
    for key, value in spec.items():
        want = DATASET_KEY_TYPES.get(key)
        if want is not None and (not isinstance(value, want) or want is int and isinstance(value, bool)):
            return f"key {key} must be {want.__name__}, got {value!r}"
    if fmt == "shapes" and "variant" in spec:
        try:
            parse_variant(spec["variant"])
        except UserError as e:
            return str(e)
    return None


def dataset_list_problem(specs: list) -> str | None:
    for i, spec in enumerate(specs):
        problem = dataset_problem(spec)
        if problem is not None:
            return f"has a bad entry [{i}]: {problem}"
    return None


DEFAULTS: dict[str, Any] = {
    "seed": 0,  # seeds python, numpy and torch; also fixes the training data order
    "model": {
        "num_classes": at_least(None, 1),  # foreground classes; null: taken from the first training dataset
        "device": Rule("auto", "cpu, cuda, cuda:N or auto", is_device),  # auto: cuda when available
        "channels_last": False,  # NHWC memory format for the convolutions (often faster on GPUs with AMP)
        "weights": "",  # detkit checkpoint or detectron2 .pkl/.pth to start the whole detector from; layers of another shape stay new
        "pixel_mean": numbers([0.485, 0.456, 0.406], length=3),  # RGB mean of 0-1 images, the convention of torchvision's weights
        "pixel_std": numbers([0.229, 0.224, 0.225], length=3, positive=True),  # RGB std of 0-1 images, same convention
        "input_format": one_of("RGB", "BGR"),  # channel order the backbone's weights expect (pixel_mean/std in that order)
        "pixel_range": one_of(1.0, 255.0),  # pixel_mean/std are for pixels in 0..pixel_range (detectron2, MSRA: 255)
        "size_divisibility": at_least(16, 0),  # pad the batch to a multiple of this; 0: only to the largest image (detectron2 C4)
        "clip_mapped_boxes": False,  # test: clip boxes mapped back to the input image and drop empty ones (detectron2)
        "backbone": {
            "depth": one_of(101, 18, 34, 50, 152),  # ResNet paper, Table 1
            "weights": "imagenet",  # imagenet | path to a torchvision ResNet state_dict or MSRA R-50.pkl/R-101.pkl | null (MSRA init)
            "norm": one_of("frozen_bn", "bn", "gn"),  # frozen (fine-tuning) | batch statistics | GroupNorm, 32 groups
            "freeze_at": between(2, 0, 5),  # 0: train all; 1: freeze conv1; k>=2: freeze conv1 and res2..res(k)
            "preact": False,  # pre-activation units (He et al., Identity Mappings, ECCV 2016)
            "width": at_least(64, 1),  # channels of conv1 and res2 (64 in the paper); other stages double it
            "stride_in_1x1": False,  # downsampling bottlenecks stride the first 1x1 conv (paper, MSRA, detectron2); false: the 3x3 (torchvision)
        },
        "rpn": {
            "anchor_sizes": numbers([64, 128, 256, 512], positive=True),  # anchor side lengths in input pixels (paper: 128-512, COCO adds 64)
            "anchor_ratios": numbers([0.5, 1.0, 2.0], positive=True),  # anchor height/width ratios
            "anchor_offset": below_one(0.0),  # anchor centres at (x + offset) * stride (detectron2: 0.0)
            "anchor_round": True,  # round anchor widths/heights to whole pixels (torchvision); false: exact (detectron2)
            "bbox_reg_weights": numbers([1.0, 1.0, 1.0, 1.0], length=4, positive=True),  # scales of the RPN's (dx, dy, dw, dh) targets
            "head_channels": at_least(0, 0),  # channels of the 3x3 conv; 0: same as the backbone's output
            "iou_thresholds": numbers([0.3, 0.7], length=2, low=0.0, high=1.0, increasing=True),  # below the first: negative; at or above the second: positive
            "batch_size_per_image": at_least(256, 1),  # anchors sampled per image for the losses
            "positive_fraction": between(0.5, 0.0, 1.0),  # at most this share of the sampled anchors are positive
            "pre_nms_topk_train": at_least(12000, 1),  # proposals kept per image before NMS in training
            "post_nms_topk_train": at_least(2000, 1),  # proposals kept per image after NMS in training (paper: 2000)
            "pre_nms_topk_test": at_least(6000, 1),  # proposals kept per image before NMS at test time
            "post_nms_topk_test": at_least(300, 1),  # proposals kept per image after NMS at test time (paper: 300)
            "nms_thresh": between(0.7, 0.0, 1.0),  # proposal NMS IoU
            "min_box_size": at_least(0.0, 0.0),  # proposals smaller than this (input pixels) are dropped
            "smooth_l1_beta": at_least(0.1111111111111111, 0.0),  # 1/9 as in torchvision; 0 gives L1
            "loss_weight": 1.0,  # multiplies both RPN losses
        },
        "roi_heads": {
            "head": one_of("res5", "fc"),  # res5: conv5_x per region (the paper's C4); fc: two FC layers on pooled conv4
            "pooler": one_of("roi_pool", "roi_align"),  # roi_pool: the paper's
            "pooler_resolution": at_least(14, 1),  # pooled size; res5 halves it (14 -> 7)
            "sampling_ratio": at_least(0, 0),  # roi_align sampling points per bin; 0: adaptive
            "fc_dim": at_least(1024, 1),  # width of the two FC layers of the fc head
            "batch_size_per_image": at_least(512, 1),  # RoIs sampled per image for the losses
            "positive_fraction": between(0.25, 0.0, 1.0),  # share of foreground RoIs (Fast R-CNN)
            "fg_iou_thresh": between(0.5, 0.0, 1.0),  # IoU at or above: foreground
            "bg_iou_thresh_low": between(0.0, 0.0, 1.0),  # IoU in [this, fg_iou_thresh): background (Fast R-CNN used 0.1)
            "bbox_reg_weights": numbers([10.0, 10.0, 5.0, 5.0], length=4, positive=True),  # scales of the (dx, dy, dw, dh) targets
            "smooth_l1_beta": at_least(0.0, 0.0),  # 0 gives L1, as detectron2
            "label_smoothing": below_one(0.0),  # classification target: 1 - eps on the true class + eps / (K+1) on every class; 0: off
            "score_threshold": between(0.05, 0.0, 1.0),  # detections below this score are dropped
            "nms_thresh": between(0.5, 0.0, 1.0),  # per-class NMS IoU at test time
            "drop_empty_before_nms": True,  # drop boxes with a side <= 0.01 px before NMS; false: keep them (detectron2)
            "detections_per_image": at_least(100, 1),  # at most this many detections per image (COCO maxDets)
            "box_refinement": False,  # iterative localization: pool again at regressed boxes, then vote
            "refine_nms_thresh": between(0.3, 0.0, 1.0),  # NMS IoU over the union of original and refined boxes
            "vote_iou_thresh": between(0.8, 0.0, 1.0),  # box voting: same-class boxes at or above this IoU are averaged
            "global_context": False,  # concatenate a whole-image RoI feature to every region's feature
            "context_pooler_resolution": at_least(0, 0),  # pooled size of the whole-image RoI; 0: pooler_resolution (not published)
            "context_shared_head": True,  # the whole-image RoI goes through the regions' own layers (not published)
        },
    },
    "input": {
        "min_size_train": numbers([600], integer=True, positive=True),  # short side in training, one picked at random per image
        "max_size_train": at_least(1000, 0),  # long side cap in training
        "min_size_test": at_least(600, 0),  # short side at test time (paper: 600)
        "max_size_test": at_least(1000, 0),  # long side cap at test time (paper: 1000)
        "test_resize": one_of("tensor", "pil"),  # tensor: bilinear on the normalised image | pil: PIL bilinear on uint8 pixels (detectron2)
        "hflip_prob": between(0.5, 0.0, 1.0),  # horizontal flip probability in training
        "color_jitter": at_least(0.0, 0.0),  # brightness/contrast/saturation jitter strength in training; 0: off
        "crop_size": at_least(0, 0),  # training: a random crop_size x crop_size window after the resize; 0: no crop
        "crop_min_visible": between(0.5, 0.0, 1.0),  # a box keeping less than this share of its area in the crop is dropped
    },
    "data": {
        "train": Rule([], DATASETS_ALLOWED, dataset_list_problem),  # list of datasets: {format: ..., its keys}; see DATASET_FORMATS
        "test": Rule([], DATASETS_ALLOWED, dataset_list_problem),  # list of datasets evaluated by test_net and during training
        "cache_dir": "",  # where generated data (shapes) lives; empty: ~/.cache/detkit
        "keep_difficult": False,  # VOC: keep `difficult` objects as training targets
    },
    "dataloader": {
        "num_workers": at_least(2, 0),  # worker processes loading training images
        "aspect_ratio_grouping": True,  # batch landscape and portrait images separately
    },
    "solver": {
        "max_iter": at_least(90000, 1),  # training iterations
        "ims_per_batch": at_least(16, 1),  # images per iteration (all processes together)
        "base_lr": at_least(0.02, 0.0),  # learning rate after warmup
        "momentum": between(0.9, 0.0, 1.0),  # SGD momentum
        "weight_decay": at_least(0.0001, 0.0),  # L2 on weights
        "weight_decay_norm": at_least(0.0, 0.0),  # L2 on normalisation scales and shifts
        "lr_schedule": one_of("step", "cosine"),  # step: drops by gamma at steps; cosine: decays to 0 at max_iter
        "steps": numbers([60000, 80000], integer=True, positive=True, increasing=True, empty_ok=True),  # step schedule: iterations where the LR is multiplied by gamma
        "gamma": at_least(0.1, 0.0),  # step schedule factor
        "warmup_iters": at_least(1000, 0),  # linear warmup length
        "warmup_factor": between(0.001, 0.0, 1.0),  # LR multiplier at iteration 0 of the warmup
        "clip_grad_norm": at_least(0.0, 0.0),  # clip the global gradient norm to this; 0: off
        "checkpoint_period": at_least(5000, 0),  # save model_XXXXXXX.pth every this many iterations; 0: only the final one
        "amp": False,  # mixed precision on CUDA (bf16 where supported, else fp16 with a grad scaler); ignored on CPU
        "cudnn_benchmark": False,  # let cuDNN pick the fastest kernels per input shape (best with fixed sizes)
        "log_period": at_least(20, 1),  # iterations between log lines
        "tensorboard": False,  # write TensorBoard scalars to the output folder
    },
    "test": {
        "eval_period": at_least(0, 0),  # evaluate every this many iterations during training; 0: only at the end
        "scales": numbers([], integer=True, positive=True, empty_ok=True),  # multi-scale testing: short sides; empty: single scale input.min_size_test
        "flip": False,  # also test on the horizontally flipped image
        "multiscale_mode": one_of("union", "maxout"),  # union: detector per scale, NMS over the union | maxout: the paper's
        "ims_per_batch": at_least(1, 1),  # images per inference batch
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


def _split_rules(tree: dict, prefix: str = "") -> tuple[dict, dict[str, Rule]]:
    """DEFAULTS -> (the plain nested defaults, {dotted key: Rule})."""
    plain, rules = {}, {}
    for key, value in tree.items():
        if isinstance(value, dict):
            plain[key], inner = _split_rules(value, f"{prefix}{key}.")
            rules.update(inner)
        elif isinstance(value, Rule):
            plain[key], rules[f"{prefix}{key}"] = value.default, value
        else:
            plain[key] = value
    return plain, rules


PLAIN_DEFAULTS, RULES = _split_rules(DEFAULTS)


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
            rule = RULES.get(full)
            problem = rule.problem(base[key]) if rule is not None and base[key] is not None else None
            if problem is not None:
                raise UserError(f"config key '{full}' in {source} {problem}")


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
    cfg = copy.deepcopy(PLAIN_DEFAULTS)
    if path is not None:
        _merge_file(cfg, Path(path), seen=())
    for item in overrides or []:
        keys, value = _parse_override(item)
        nested: Any = value
        for k in reversed(keys):
            nested = {k: nested}
        _merge(cfg, nested, "", f"override '{item}'")
    cfg = _to_config(cfg)
    _check_together(cfg, str(path) if path is not None else "the defaults", bool(overrides))
    return cfg


def _check_together(cfg: Config, path: str, overridden: bool) -> None:
    """Values that are only wrong in combination (each one alone passed its rule)."""
    where = path + (" and its overrides" if overridden else "")
    if cfg.test.scales and cfg.input.min_size_test == 0:
        raise UserError(
            f"config keys 'test.scales' and 'input.min_size_test' in {where}: multi-scale testing needs "
            "input.min_size_test > 0 (each scale's long-side cap keeps max_size_test / min_size_test); "
            "set input.min_size_test or empty test.scales"
        )
    roi = cfg.model.roi_heads
    if roi.bg_iou_thresh_low > roi.fg_iou_thresh:
        raise UserError(
            f"config keys 'model.roi_heads.bg_iou_thresh_low' ({roi.bg_iou_thresh_low}) and 'fg_iou_thresh' "
            f"({roi.fg_iou_thresh}) in {where}: background is IoU in [bg_iou_thresh_low, fg_iou_thresh); "
            "set bg_iou_thresh_low at most fg_iou_thresh"
        )
