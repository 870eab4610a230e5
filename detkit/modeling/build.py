"""Maps a config onto the detector's parts: the one place that reads `cfg.model`."""

import copy
import logging
from pathlib import Path

import torch

from detkit.checkpoint.formats import read_detector_weights
from detkit.checkpoint.io import load_model_weights
from detkit.errors import UserError
from detkit.modeling.backbone.resnet import C4_STRIDE, build_resnet_c4
from detkit.modeling.detector import FasterRCNN, ImagePreprocessor
from detkit.modeling.optimize import optimize_for_inference, use_channels_last
from detkit.modeling.roi_heads import RoIHeads
from detkit.modeling.rpn import RPN

logger = logging.getLogger("detkit")


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when available; asking for CUDA on a machine without it is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"model.device={name} but CUDA is not available here; use model.device=cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"model.device={name!r} is not a device; use cpu, cuda, cuda:N or auto") from None


def build_model(cfg, *, num_classes: int | None = None, device: str | None = None) -> FasterRCNN:
    """Build the C4 Faster R-CNN from `cfg.model` on `device` (default `cfg.model.device`).

    `num_classes` overrides `cfg.model.num_classes`; one of them must be set (training passes the
    training data's class count).
    """
    num_classes = num_classes or cfg.model.num_classes
    if not num_classes:
        raise UserError("model.num_classes is not set: set it in the config or give data.train so it can be read")
    b = cfg.model.backbone
    if cfg.model.roi_heads.head not in ("res5", "fc"):
        raise UserError(f"model.roi_heads.head must be res5 or fc, got {cfg.model.roi_heads.head!r}")
    if cfg.model.roi_heads.pooler not in ("roi_pool", "roi_align"):
        raise UserError(f"model.roi_heads.pooler must be roi_pool or roi_align, got {cfg.model.roi_heads.pooler!r}")
    trunk, res5 = build_resnet_c4(
        depth=b.depth,
        weights=b.weights,
        norm=b.norm,
        freeze_at=b.freeze_at,
        preact=b.preact,
        width=b.width,
        stride_in_1x1=b.stride_in_1x1,
        input_format=cfg.model.input_format,
    )
    preprocessor = ImagePreprocessor(
        pixel_mean=cfg.model.pixel_mean,
        pixel_std=cfg.model.pixel_std,
        min_size_test=cfg.input.min_size_test,
        max_size_test=cfg.input.max_size_test,
        size_divisibility=cfg.model.size_divisibility,
        input_format=cfg.model.input_format,
        pixel_range=cfg.model.pixel_range,
        resize=cfg.input.test_resize,
        clip_mapped_boxes=cfg.model.clip_mapped_boxes,
    )
    model = FasterRCNN(
        preprocessor=preprocessor,
        backbone=trunk,
        rpn=RPN.from_config(cfg, in_channels=trunk.out_channels, stride=C4_STRIDE),
        roi_heads=RoIHeads.from_config(
            cfg,
            in_channels=trunk.out_channels,
            res5=res5 if cfg.model.roi_heads.head == "res5" else None,
            num_classes=num_classes,
        ),
    )
    if cfg.model.weights:
        load_matching_weights(model, cfg.model.weights, cfg=cfg)
    model = model.to(resolve_device(device or cfg.model.device))
    if cfg.model.channels_last:  # the layout of the whole model, for training and inference alike
        use_channels_last(model)
    return model


def _any_class_count(cfg):
    """`cfg` with model.num_classes unset: a file's own class count is read as it is (fine-tuning changes it)."""
    cfg = copy.deepcopy(cfg)
    cfg.model.num_classes = None
    return cfg


def load_matching_weights(model: FasterRCNN, path: str, *, cfg) -> None:
    """Initialise from a detkit checkpoint or a detectron2 model-zoo file (read by
    `detkit.checkpoint.formats.read_detector_weights`), keeping the layers whose shapes differ (e.g. the class-specific
    predictor when fine-tuning COCO -> VOC) at their fresh initialisation, and saying which those are."""
    state = read_detector_weights(path, cfg=_any_class_count(cfg)).model
    own = model.state_dict()
    matching = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matching:
        raise UserError(f"model.weights={path}: no layer of the checkpoint fits this model (different backbone?)")
    model.load_state_dict(matching, strict=False)
    fresh = sorted(k for k in own if k not in matching)
    logger.info(f"initialised {len(matching)} tensors from {path}; new: {', '.join(fresh) if fresh else 'none'}")


def load_detector(cfg, weights: str | Path | None, *, class_names: list[str] | None = None) -> tuple[FasterRCNN, list[str]]:
    """Build `cfg`'s detector for inference (in channels-last layout with `model.channels_last`), load a
    detkit checkpoint into it, then apply the speed-ups the config switches on (`test.fold_bn`,
    `test.compile`, `test.amp`; see `detkit.modeling.optimize`).

    `weights`: a detkit checkpoint, a detectron2 model-zoo .pkl or a detectron2 .pth (see
    `detkit.checkpoint.formats`). Class names: the file's (training stores them; an 80-class detectron2
    file gets COCO's), else `class_names`, else "class_<i>".
    The class count: `model.num_classes`, else the number of names. Returns (model in eval mode, names).
    """
    loaded = read_detector_weights(weights, cfg=cfg) if weights is not None else None
    names = (loaded.class_names if loaded else None) or class_names
    num_classes = cfg.model.num_classes or (len(names) if names else None)
    if num_classes is None and loaded is not None and "roi_heads.predictor.cls_score.weight" in loaded.model:
        num_classes = loaded.model["roi_heads.predictor.cls_score.weight"].shape[0] - 1  # K + background
    if num_classes is None:
        raise UserError("model.num_classes is not set and the weights do not name their classes")
    if loaded is not None:  # every tensor comes from `weights`: reading the backbone's or model.weights' would be waste
        cfg = copy.deepcopy(cfg)
        cfg.model.backbone.weights = None
        cfg.model.weights = ""
    model = build_model(cfg, num_classes=num_classes)
    if loaded is not None:
        load_model_weights(model, {"model": loaded.model}, weights)
    else:
        logger.warning("no weights given: the detection heads are untrained")
    optimize_for_inference(model, fold_bn=cfg.test.fold_bn, torch_compile=cfg.test.compile, amp=cfg.test.amp)
    return model, list(names) if names else [f"class_{i}" for i in range(num_classes)]
