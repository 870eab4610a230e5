"""The whole test-time detector as one traceable function of a BGR uint8 image, for ONNX export.

`DeployGraph(model, ...)(image)` computes what `detkit.modeling.test_time.detect` computes on the eval-mode
FasterRCNN (single scale, or the union of scales and flips), from the image exactly as `Predictor` takes it:
    image  (H, W, 3) uint8 BGR, any H and W
    ->     boxes (D, 4) float32 xyxy in the image's pixels, scores (D,) float32, labels (D,) int64
It reuses the model's own layers (trunk, RPN head and anchors, pooler, per-region head, predictor, box
coder) and restates, with sizes kept as tensors, the few steps that compute with Python ints in the
readable path (test resize, padding, clipping, top-k counts), so that H and W stay dynamic in the graph.
Per-class NMS is ONNX's NonMaxSuppression with one batch entry per class (`per_class_nms`), which is what
`batched_nms` computes, without the coordinate-offset trick.

Shapes:
    R  proposals    K  foreground classes    D  detections    M  candidates (score above the threshold)
    size  (2,) float32 (h, w) of the resized image; int64 sizes are 0-d tensors
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import nms

from detkit.modeling.detector import FasterRCNN
from detkit.modeling.roi_heads import box_voting
from detkit.modeling.test_time import scale_sizes
from detkit.structures.boxes import flip_boxes


class PerClassNMS(torch.autograd.Function):
    """NMS within each class: boxes (K, R, 4), scores (K, R) -> (M, 2) int64 [class, region] pairs, each
    class's at most `max_per_class` survivors in decreasing score order. Scores <= `score_threshold` never
    survive. Exported as ONNX NonMaxSuppression (batch = class); eager mode runs torchvision's nms per class."""

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float, max_per_class: int):
        found = []
        for k in range(boxes.shape[0]):
            idx = torch.nonzero(scores[k] > score_threshold).squeeze(1)
            keep = idx[nms(boxes[k, idx], scores[k, idx], iou_threshold)[:max_per_class]]
            found.append(torch.stack([torch.full_like(keep, k), keep], dim=1))
        return torch.cat(found) if found else boxes.new_zeros((0, 2), dtype=torch.int64)

    @staticmethod
    def symbolic(g, boxes, scores, iou_threshold, score_threshold, max_per_class):
        # (K, R) -> (K, 1, R): ONNX scores are (batch, classes, boxes)
        scores = g.op("Unsqueeze", scores, g.op("Constant", value_t=torch.tensor([1])))
        selected = g.op(
            "NonMaxSuppression",
            boxes,
            scores,
            g.op("Constant", value_t=torch.tensor([max_per_class], dtype=torch.int64)),
            g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float32)),
            g.op("Constant", value_t=torch.tensor([score_threshold], dtype=torch.float32)),
        )
        # (M, 3) [batch = class, 0, region] -> (M, 2)
        return g.op("Gather", selected, g.op("Constant", value_t=torch.tensor([0, 2])), axis_i=1)


def per_class_nms(boxes: Tensor, scores: Tensor, keep: Tensor, iou_threshold: float, max_per_class: int) -> Tensor:
    """boxes (K, R, 4), scores (K, R), keep (K, R) bool (the candidates) -> (M, 2) [class, region]."""
    # non-candidates get -1, below the threshold of -0.5 that every probability passes
    masked = torch.where(keep, scores, torch.full_like(scores, -1.0))
    return PerClassNMS.apply(boxes, masked, iou_threshold, -0.5, max_per_class)


def count_at_most(k: int, x: Tensor) -> Tensor | int:
    """min(k, len(x)), as a graph value while tracing (a Python int would freeze the traced length)."""
    if not torch.jit.is_tracing():
        return min(k, x.shape[0])
    return torch.clamp(torch._shape_as_tensor(x)[0], max=k)


def clip_to(boxes: Tensor, size: Tensor) -> Tensor:
    """(..., 4) xyxy clipped to [0, w] x [0, h] of size (2,) = (h, w)."""
    limits = torch.stack([size[1], size[0], size[1], size[0]])
    return torch.minimum(boxes.clamp(min=0), limits)


def larger_than(boxes: Tensor, min_size: float) -> Tensor:
    """(...) bool: both sides of (..., 4) xyxy boxes exceed `min_size`."""
    return ((boxes[..., 2] - boxes[..., 0]) > min_size) & ((boxes[..., 3] - boxes[..., 1]) > min_size)


def resized_size(height: Tensor, width: Tensor, short: int, max_size: int) -> tuple[Tensor, Tensor]:
    """`detkit.data.transforms.resize_shortest_edge_size` on 0-d int64 sizes, in float64 as Python computes it."""
    h, w = height.double(), width.double()
    scale = short / torch.minimum(h, w)
    if max_size > 0:
        long = torch.maximum(h, w)
        scale = torch.where(long * scale > max_size, max_size / long, scale)
    new_h = torch.clamp(torch.floor(h * scale + 0.5), min=1).long()
    new_w = torch.clamp(torch.floor(w * scale + 0.5), min=1).long()
    return new_h, new_w


class DeployGraph(nn.Module):
    """`model` in eval mode as image -> (boxes, scores, labels); `scales`/`flip`: union test-time augmentation
    (test.scales, test.flip with test.multiscale_mode union). The caller refuses what this cannot compute
    (`detkit.export.onnx_file.unsupported_settings`)."""

    def __init__(self, model: FasterRCNN, *, scales: list[int] = (), flip: bool = False):
        super().__init__()
        self.model = model
        self.scales = list(scales)
        self.flip = flip
        self.eval()  # the exporter restores this module's mode, recursively, after tracing

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pre, heads = self.model.preprocessor, self.model.roi_heads
        if not self.scales and not self.flip:
            return self.detect(image, pre.min_size_test, pre.max_size_test)
        parts = []
        for scale in self.scales or [pre.min_size_test]:
            min_size, max_size = scale_sizes(scale, pre.min_size_test, pre.max_size_test)
            parts.append(self.detect(image, min_size, max_size))
            if self.flip:
                boxes, scores, labels = self.detect(image.flip(1), min_size, max_size)
                width = torch._shape_as_tensor(image)[1].float()
                parts.append((flip_boxes(boxes, width), scores, labels))
        boxes, scores, labels = (torch.cat(p) for p in zip(*parts))
        # the union, NMS within each class: (M, 4) -> (K, M, 4) with each class's own detections as candidates
        num_classes = heads.num_classes
        classes = torch.arange(num_classes, device=labels.device)
        mine = labels[None, :] == classes[:, None]  # (K, M)
        picked = per_class_nms(
            boxes[None].expand(num_classes, -1, -1), scores[None].expand(num_classes, -1), mine,
            heads.nms_thresh, heads.detections_per_image,
        )[:, 1]
        top = scores[picked].topk(count_at_most(heads.detections_per_image, picked)).indices
        picked = picked[top]
        return boxes[picked], scores[picked], labels[picked]

    def preprocess(self, image: Tensor, min_size: int, max_size: int) -> tuple[Tensor, Tensor]:
        """(H, W, 3) BGR uint8 -> padded batch (1, 3, Hp, Wp) as ImagePreprocessor makes it, and the resized
        size (2,) float32."""
        pre = self.model.preprocessor
        x = image.permute(2, 0, 1).float()  # (H, W, 3) -> (3, H, W), BGR
        if pre.input_format == "RGB":
            x = x.flip(0)
        x = (x - pre.pixel_mean) / pre.pixel_std
        height, width = torch._shape_as_tensor(image)[0], torch._shape_as_tensor(image)[1]
        if min_size > 0:
            height, width = resized_size(height, width, min_size, max_size)
            size = (height, width) if torch.jit.is_tracing() else (int(height), int(width))
            # (3, H, W) -> (1, 3, h, w)
            x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)
        else:
            x = x[None]
        d = pre.size_divisibility
        if d > 1:
            x = F.pad(x, [0, (d - width % d) % d, 0, (d - height % d) % d])
        if pre.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, torch.stack([height, width]).float()

    def detect(self, image: Tensor, min_size: int, max_size: int) -> tuple[Tensor, Tensor, Tensor]:
        """The single-scale detector at (min_size, max_size): FasterRCNN.inference on one image."""
        heads = self.model.roi_heads
        batch, size = self.preprocess(image, min_size, max_size)
        feature = self.model.backbone(batch)
        proposals = self.propose(feature, size)
        probs, boxes = self.classify(feature, proposals, size)
        if heads.box_refinement:
            best = probs[:, : heads.num_classes].argmax(dim=1)
            refined = boxes[torch.arange(boxes.shape[0]), best]  # (R, 4): each region's box for its best class
            probs2, boxes2 = self.classify(feature, refined, size)
            boxes, scores, labels = self.postprocess_with_voting(
                torch.cat([probs, probs2]), torch.cat([boxes, boxes2]), heads.refine_nms_thresh
            )
        else:
            boxes, scores, labels = self.postprocess(probs, boxes, heads.nms_thresh)
        return self.map_back(boxes, scores, labels, image, size)

    def propose(self, feature: Tensor, size: Tensor) -> Tensor:
        """RPN.predict_proposals at test time for one image: (1, C, H', W') -> (R, 4) xyxy in resized pixels."""
        rpn = self.model.rpn
        anchors = rpn.anchor_generator(feature)
        logits, deltas = rpn.head(feature)
        logits, deltas = logits[0].float(), deltas[0].float()  # (HWA,), (HWA, 4)
        scores, idx = logits.topk(count_at_most(rpn.pre_nms_topk[1], logits))
        boxes = clip_to(rpn.box_coder.decode(deltas[idx], anchors[idx]), size)
        keep = larger_than(boxes, rpn.min_box_size)
        boxes, scores = boxes[keep], scores[keep]
        return boxes[nms(boxes, scores, rpn.nms_thresh)[: rpn.post_nms_topk[1]]]

    def region_features(self, feature: Tensor, boxes: Tensor, size: Tensor) -> Tensor:
        """RoIHeads.box_features for one image: (R, 4) -> (R, D), with global context (R, D + D')."""
        heads = self.model.roi_heads
        regions = heads.box_head(heads.pooler(feature, [boxes]))
        if not heads.global_context:
            return regions
        zero = torch.zeros((), device=size.device)
        whole = torch.stack([zero, zero, size[1], size[0]])[None]  # (1, 4): the whole resized image
        pooler = heads.context_pooler if heads.context_pooler is not None else heads.pooler
        head = heads.context_head if heads.context_head is not None else heads.box_head
        context = head(pooler(feature, [whole]))  # (1, D')
        return torch.cat([regions, context.expand(regions.shape[0], -1)], dim=1)

    def classify(self, feature: Tensor, boxes: Tensor, size: Tensor) -> tuple[Tensor, Tensor]:
        """RoIHeads.score_and_regress for one image: (R, 4) -> probabilities (R, K+1), clipped boxes (R, K, 4)."""
        heads = self.model.roi_heads
        logits, deltas = heads.predictor(self.region_features(feature, boxes, size))
        probs = F.softmax(logits.float(), dim=-1)
        decoded = heads.box_coder.decode(deltas.float(), boxes.float())  # (R, 4K)
        # (R, 4K) -> (R, K, 4)
        return probs, clip_to(decoded.reshape(-1, heads.num_classes, 4), size)

    def postprocess(self, probs: Tensor, boxes: Tensor, nms_thresh: float) -> tuple[Tensor, Tensor, Tensor]:
        """RoIHeads.postprocess: probs (R, K+1), boxes (R, K, 4) -> boxes (D, 4), scores (D,), labels (D,)."""
        return self.select_detections(probs, boxes, self.candidates(probs, boxes), nms_thresh)

    def postprocess_with_voting(self, probs: Tensor, boxes: Tensor, nms_thresh: float) -> tuple[Tensor, Tensor, Tensor]:
        """RoIHeads.postprocess_with_voting: `postprocess`, then each kept box voted by the candidates around it."""
        heads = self.model.roi_heads
        candidate = self.candidates(probs, boxes)
        kept_boxes, kept_scores, labels = self.select_detections(probs, boxes, candidate, nms_thresh)
        scores = probs[:, : heads.num_classes]  # (R, K)
        pool = torch.nonzero(candidate)  # (M, 2) [region, class]: the voters
        kept_boxes = box_voting(
            kept_boxes, labels, boxes[pool[:, 0], pool[:, 1]], scores[pool[:, 0], pool[:, 1]], pool[:, 1],
            heads.vote_iou_thresh,
        )
        return kept_boxes, kept_scores, labels

    def candidates(self, probs: Tensor, boxes: Tensor) -> Tensor:
        """RoIHeads.candidates as a mask: probs (R, K+1), boxes (R, K, 4) -> (R, K) bool."""
        heads = self.model.roi_heads
        candidate = probs[:, : heads.num_classes] > heads.score_threshold  # strictly above, as RoIHeads
        if heads.drop_empty_before_nms:
            candidate = candidate & larger_than(boxes, 1e-2)
        return candidate

    def select_detections(
        self, probs: Tensor, boxes: Tensor, candidate: Tensor, nms_thresh: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        """RoIHeads.select_detections: per-class NMS over the (R, K) candidates, best `detections_per_image` kept:
        boxes (D, 4), scores (D,), labels (D,)."""
        heads = self.model.roi_heads
        scores = probs[:, : heads.num_classes]  # (R, K)
        # (R, K, 4) -> (K, R, 4): one NMS batch entry per class
        picked = per_class_nms(
            boxes.transpose(0, 1), scores.t(), candidate.t(), nms_thresh, heads.detections_per_image
        )
        labels, regions = picked[:, 0], picked[:, 1]
        kept_scores = scores[regions, labels]
        top = kept_scores.topk(count_at_most(heads.detections_per_image, kept_scores)).indices
        labels, regions, kept_scores = labels[top], regions[top], kept_scores[top]
        return boxes[regions, labels], kept_scores, labels

    def map_back(self, boxes: Tensor, scores: Tensor, labels: Tensor, image: Tensor, size: Tensor):
        """ImagePreprocessor.postprocess: boxes from the resized image to the input image's pixels."""
        original = torch._shape_as_tensor(image)[:2].double()  # (2,) (H, W)
        factor = (original / size.double()).float()  # float64 division as Python's, then float32
        boxes = boxes * torch.stack([factor[1], factor[0], factor[1], factor[0]])
        if self.model.preprocessor.clip_mapped_boxes:
            boxes = clip_to(boxes, original.float())
            keep = larger_than(boxes, 0.0)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        return boxes, scores, labels
