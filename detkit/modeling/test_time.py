"""Multi-scale and flipped testing (ResNet paper, appendix B), on one image at a time.

Two modes (`test.multiscale_mode`):
    union   the full detector runs at every scale (and flipped); the union of the detections is
            merged by per-class NMS (Detectron / detectron2 test-time augmentation).
    maxout  the paper's variant, after NoC (Ren et al.): the RPN runs once at the single test scale;
            conv features are computed on the image pyramid one scale at a time (memory stays that
            of one scale); each RoI is pooled at the two adjacent scales around the one where its
            area is closest to 224 x 224, both go through the per-region layers, and the two
            feature vectors are merged by an element-wise max before the classifier and regressor.
Shapes:
    image (3, H, W); R proposals; D per-region feature size (2D with global context)
"""

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from detkit.data.transforms import resize_shortest_edge_size
from detkit.modeling.detector import FasterRCNN
from detkit.structures.boxes import box_area, flip_boxes

# NoC / SPP-net pick the scale at which a region is closest to the network's 224 x 224 training input.
CANONICAL_AREA = 224.0 * 224.0


def scale_sizes(scale: int, min_size_test: int, max_size_test: int) -> tuple[int, int]:
    """(short side, long-side cap) for one pyramid scale, keeping the config's long/short ratio.

    The test scale itself keeps the test sizes (also `min_size_test=0`, no resize, as for flip-only testing)."""
    if scale == min_size_test:
        return min_size_test, max_size_test
    return scale, round(scale * max_size_test / min_size_test)


def resize_factor(height: int, width: int, min_size: int, max_size: int) -> float:
    """The factor an image of (height, width) is really resized by for (min_size, max_size): the short side
    goes to `min_size` unless the long side would pass `max_size` (min_size 0: no resize)."""
    if min_size <= 0:
        return 1.0
    new_h, _ = resize_shortest_edge_size(height, width, min_size, max_size)
    return new_h / height


def merge_detections(parts: list[dict], *, nms_thresh: float, max_detections: int) -> dict:
    """Union of several detection sets on the same image, per-class NMS, top `max_detections` by score."""
    boxes = torch.cat([p["boxes"] for p in parts])
    scores = torch.cat([p["scores"] for p in parts])
    labels = torch.cat([p["labels"] for p in parts])
    keep = batched_nms(boxes, scores, labels, nms_thresh)[:max_detections]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


def flipped(image: Tensor) -> Tensor:
    """(3, H, W) -> the horizontally mirrored image."""
    return image.flip(-1)


def unflip(detections: dict, width: int) -> dict:
    return {**detections, "boxes": flip_boxes(detections["boxes"], width)}


@torch.no_grad()
def detect_union(model: FasterRCNN, image: Tensor, *, scales: list[int], flip: bool) -> dict:
    """Full detector per scale (and flipped), merged by per-class NMS."""
    pre = model.preprocessor
    parts = []
    for scale in scales:
        min_size, max_size = scale_sizes(scale, pre.min_size_test, pre.max_size_test)
        parts.append(model.inference([image], min_size=min_size, max_size=max_size)[0])
        if flip:
            out = model.inference([flipped(image)], min_size=min_size, max_size=max_size)[0]
            parts.append(unflip(out, image.shape[-1]))
    heads = model.roi_heads
    return merge_detections(parts, nms_thresh=heads.nms_thresh, max_detections=heads.detections_per_image)


def select_adjacent_scales(areas: Tensor, factors: list[float]) -> tuple[Tensor, Tensor]:
    """For regions of `areas` (R,) in original pixels and pyramid scale factors (ascending), the indices
    (R,), (R,) of the two adjacent scales that bracket the one closest to the canonical area."""
    f2 = torch.tensor(factors, dtype=areas.dtype, device=areas.device) ** 2
    scaled = areas[:, None] * f2[None, :]  # (R, S)
    best = (scaled - CANONICAL_AREA).abs().argmin(dim=1)
    num = len(factors)
    if num == 1:
        return best, best
    # the neighbour on the side of the canonical area: a region still too small goes one scale up
    too_small = scaled.gather(1, best[:, None]).squeeze(1) < CANONICAL_AREA
    other = torch.where(too_small, best + 1, best - 1)
    other = torch.where(other >= num, best - 1, other)
    other = torch.where(other < 0, best + 1, other)
    return torch.minimum(best, other), torch.maximum(best, other)


@torch.no_grad()
def detect_maxout(model: FasterRCNN, image: Tensor, *, scales: list[int]) -> dict:
    """The paper's variant: RPN at the test scale, per-region features maxed over two adjacent scales."""
    pre, heads = model.preprocessor, model.roi_heads
    height, width = image.shape[-2:]
    batch, sizes, _ = pre([image])
    proposals, _ = model.rpn(model.backbone(batch), sizes)
    # base-scale boxes -> original pixels
    sy, sx = height / sizes[0][0], width / sizes[0][1]
    boxes = proposals[0] * torch.tensor([sx, sy, sx, sy], device=proposals[0].device)
    if len(boxes) == 0:
        # no proposal: nothing to pool, the empty result of the single-scale path
        empty = boxes.new_zeros((0, heads.num_classes, 4))
        return heads.postprocess(boxes.new_zeros((0, heads.num_classes + 1)), empty, (height, width), heads.nms_thresh)
    scales = sorted(scales)
    # the real factor of each scale, long-side cap included (elongated images are capped below `scale`)
    factors = [
        resize_factor(height, width, *scale_sizes(scale, pre.min_size_test, pre.max_size_test)) for scale in scales
    ]
    low, high = select_adjacent_scales(box_area(boxes), factors)
    features_low = features_high = None
    for i, scale in enumerate(scales):
        wanted_low, wanted_high = low == i, high == i
        if not (wanted_low.any() or wanted_high.any()):
            continue  # this scale serves no region: skip its backbone pass
        min_size, max_size = scale_sizes(scale, pre.min_size_test, pre.max_size_test)
        batch_i, sizes_i, _ = pre([image], min_size=min_size, max_size=max_size)
        feature = model.backbone(batch_i)
        fy, fx = sizes_i[0][0] / height, sizes_i[0][1] / width
        scaled = boxes * torch.tensor([fx, fy, fx, fy], device=boxes.device)
        feats = heads.box_features(feature, [scaled], sizes_i)  # (R, D): every region, this scale
        if features_low is None:
            features_low = feats.new_zeros(feats.shape)
            features_high = feats.new_zeros(feats.shape)
        features_low[wanted_low] = feats[wanted_low]
        features_high[wanted_high] = feats[wanted_high]
        del feature
    probs, class_boxes = heads.classify(torch.maximum(features_low, features_high), [boxes], [(height, width)])
    return heads.postprocess(probs[0], class_boxes[0], (height, width), heads.nms_thresh)


@torch.no_grad()
def detect(model: FasterRCNN, images: list[Tensor], *, scales: list[int], flip: bool, mode: str) -> list[dict]:
    """Test-time augmented detections for each image, boxes in its own pixels."""
    if not scales and not flip:
        return model.inference(images)
    scales = list(scales) or [model.preprocessor.min_size_test]
    outputs = []
    for image in images:
        if mode == "union":
            outputs.append(detect_union(model, image, scales=scales, flip=flip))
        elif mode == "maxout":
            with model.autocast():
                parts = [detect_maxout(model, image, scales=scales)]
                if flip:
                    parts.append(unflip(detect_maxout(model, flipped(image), scales=scales), image.shape[-1]))
            heads = model.roi_heads
            outputs.append(
                merge_detections(parts, nms_thresh=heads.nms_thresh, max_detections=heads.detections_per_image)
                if flip
                else parts[0]
            )
        else:
            raise ValueError(f"test.multiscale_mode must be union or maxout, got {mode!r}")
    return outputs
