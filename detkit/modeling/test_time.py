"""Multi-scale and flipped testing (ResNet paper, appendix B), on one image at a time.

Two modes (`test.multiscale_mode`):
    union   the full detector runs at every scale (and flipped); the union of the detections is
            merged by per-class NMS (Detectron / detectron2 test-time augmentation).
    maxout  the paper's variant, after NoC (Ren et al.): the RPN runs once at the single test scale;
            conv features are computed on the image pyramid one scale at a time (the trunk's
            activations are those of one scale; the conv4 maps are kept for the refinement pass);
            each RoI is pooled at the two adjacent scales around the one where its area is closest
            to 224 x 224, both go through the per-region layers, and the two feature vectors are
            merged by an element-wise max before the classifier and regressor. With box refinement,
            the regressed boxes go through the same maxout pooling again (their own two scales),
            then union, NMS and voting as at a single scale (ResNet paper, appendix B).
Shapes:
    image (3, H, W); R proposals; D per-region feature size (2D with global context)
"""

from dataclasses import dataclass

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


class FeaturePyramid:
    """conv4 features of one image at each pyramid scale (ascending short sides), computed on first use and
    kept: the refinement pass pools its regressed boxes from the same maps. Only the conv4 maps stay in
    memory (stride 16), not the trunk's activations."""

    def __init__(self, model: FasterRCNN, image: Tensor, scales: list[int]):
        pre = model.preprocessor
        self.model = model
        self.image = image
        self.sizes = [scale_sizes(scale, pre.min_size_test, pre.max_size_test) for scale in sorted(scales)]
        height, width = image.shape[-2:]
        # the real factor of each scale, long-side cap included (elongated images are capped below `scale`)
        self.factors = [resize_factor(height, width, *sizes) for sizes in self.sizes]
        self.maps: dict[int, tuple[Tensor, tuple[int, int]]] = {}

    def seed(self, min_size: int, max_size: int, feature: Tensor, size: tuple[int, int]) -> None:
        """Keep an already computed map (the RPN's, at the test scale) for the scale with these sizes, if any."""
        for i, sizes in enumerate(self.sizes):
            if sizes == (min_size, max_size):
                self.maps[i] = (feature, size)

    def level(self, i: int) -> tuple[Tensor, tuple[int, int]]:
        """Scale i's conv4 map (1, C, H', W') and the resized image's (h, w) inside it."""
        if i not in self.maps:
            min_size, max_size = self.sizes[i]
            batch, sizes, _ = self.model.preprocessor([self.image], min_size=min_size, max_size=max_size)
            self.maps[i] = (self.model.backbone(batch), sizes[0])
        return self.maps[i]


def maxout_features(model: FasterRCNN, pyramid: FeaturePyramid, boxes: Tensor) -> Tensor:
    """Regions `boxes` (R, 4) in original pixels -> features (R, D): each region pooled at the two adjacent
    scales around its canonical one, through the per-region layers, merged by an element-wise max."""
    height, width = pyramid.image.shape[-2:]
    low, high = select_adjacent_scales(box_area(boxes), pyramid.factors)
    features_low = features_high = None
    for i in range(len(pyramid.factors)):
        wanted_low, wanted_high = low == i, high == i
        if not (wanted_low.any() or wanted_high.any()):
            continue  # this scale serves no region: no backbone pass for it
        feature, (h, w) = pyramid.level(i)
        scaled = boxes * torch.tensor([w / width, h / height, w / width, h / height], device=boxes.device)
        feats = model.roi_heads.box_features(feature, [scaled], [(h, w)])  # (R, D): every region, this scale
        if features_low is None:
            features_low = feats.new_zeros(feats.shape)
            features_high = feats.new_zeros(feats.shape)
        features_low[wanted_low] = feats[wanted_low]
        features_high[wanted_high] = feats[wanted_high]
    return torch.maximum(features_low, features_high)


@torch.no_grad()
def detect_maxout(model: FasterRCNN, image: Tensor, *, scales: list[int]) -> dict:
    """The paper's variant: RPN at the test scale, per-region features maxed over two adjacent scales.

    With `box_refinement` the paper's system (appendix B): each region's box regressed for its best class
    is pooled again by maxout over the two scales adjacent to its own canonical one, scored and regressed
    a second time; the union of both passes goes through NMS at `refine_nms_thresh`, then box voting
    (`RoIHeads.predict_refined`, as at a single scale)."""
    pre, heads = model.preprocessor, model.roi_heads
    height, width = image.shape[-2:]
    batch, sizes, _ = pre([image])
    feature = model.backbone(batch)
    proposals, _ = model.rpn(feature, sizes)
    # base-scale boxes -> original pixels
    sy, sx = height / sizes[0][0], width / sizes[0][1]
    boxes = proposals[0] * torch.tensor([sx, sy, sx, sy], device=proposals[0].device)
    if len(boxes) == 0:
        # no proposal: nothing to pool, the empty result of the single-scale path
        empty = boxes.new_zeros((0, heads.num_classes, 4))
        return heads.postprocess(boxes.new_zeros((0, heads.num_classes + 1)), empty, (height, width), heads.nms_thresh)
    pyramid = FeaturePyramid(model, image, scales)
    pyramid.seed(pre.min_size_test, pre.max_size_test, feature, sizes[0])
    del feature

    def score(regions: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        # one image's regions (R, 4) -> probabilities [(R, K+1)], clipped class boxes [(R, K, 4)]
        return heads.classify(maxout_features(model, pyramid, regions[0]), regions, [(height, width)])

    probs, class_boxes = score([boxes])
    if heads.box_refinement:
        return heads.predict_refined(probs, class_boxes, [(height, width)], rescore=score)[0]
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


@dataclass(frozen=True)
class Augmentation:
    """The config's test-time system: `test.scales`, `test.flip`, `test.multiscale_mode` (refinement and
    context live in the model). The one inference call of tools/test_net.py, the evaluation during
    training, tools/ablation.py, `detkit.Predictor` and the demos, so one config gives one set of detections."""

    scales: tuple[int, ...] = ()
    flip: bool = False
    mode: str = "union"

    @classmethod
    def from_config(cls, cfg) -> "Augmentation":
        return cls(scales=tuple(cfg.test.scales), flip=bool(cfg.test.flip), mode=cfg.test.multiscale_mode)

    def __call__(self, model: FasterRCNN, images: list[Tensor]) -> list[dict]:
        """Images (3, H_i, W_i) RGB 0..255 -> detections in each image's pixels."""
        return detect(model, images, scales=list(self.scales), flip=self.flip, mode=self.mode)
