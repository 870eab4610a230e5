"""Fast R-CNN stage on RPN proposals: RoI pooling on conv4, a per-region head, classifier and box regressor.

Shapes:
    N  images         R  regions in the batch (R_i per image)     K  foreground classes
    C  conv4 channels S  pooled size      D  per-region feature size (2D with global context)
    feature (N, C, H, W) -> pooled (R, C, S, S) -> head (R, D) -> logits (R, K+1), deltas (R, 4K)
Labels: 0..K-1 foreground, K background, -1 ignored (never sampled).
Losses: `loss_cls` (cross-entropy over sampled RoIs), `loss_box` (smooth L1 on foreground RoIs, for the
ground-truth class only, normalised by the number of sampled RoIs).

Inference: softmax, class-specific decode, clip, score threshold, per-class NMS, top detections.
Iterative localization (ResNet paper, appendix B) optionally re-scores regressed boxes and votes.
"""

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, roi_align, roi_pool

from detkit.errors import UserError
from detkit.modeling.backbone.resnet import C4_STRIDE
from detkit.modeling.box_coder import BoxCoder
from detkit.modeling.losses import smooth_l1
from detkit.modeling.matcher import Matcher
from detkit.modeling.sampler import sample_balanced
from detkit.structures.boxes import box_iou, clip_boxes, nonempty


class RoIPooler(nn.Module):
    """torchvision.ops roi_pool (the paper's choice) or roi_align on a single stride-16 map.

    Pooling runs in float32 even under autocast (box coordinates in half precision would be off by
    pixels); `channels_last` (set by `detkit.modeling.optimize`) hands the head NHWC regions.
    """

    def __init__(self, *, kind: str = "roi_pool", resolution: int = 14, stride: int = C4_STRIDE, sampling_ratio: int = 0):
        super().__init__()
        if kind not in ("roi_pool", "roi_align"):
            raise ValueError(f"pooler must be roi_pool or roi_align, got {kind!r}")
        self.kind = kind
        self.resolution = resolution
        self.spatial_scale = 1.0 / stride
        self.sampling_ratio = sampling_ratio
        self.channels_last = False

    def forward(self, feature: Tensor, boxes: list[Tensor]) -> Tensor:
        """(N, C, H, W), N lists of (R_i, 4) xyxy input-pixel boxes -> (R, C, S, S)."""
        if feature.dtype in (torch.float16, torch.bfloat16):
            feature = feature.float()
        boxes = [b.to(feature.dtype) for b in boxes]
        size = (self.resolution, self.resolution)
        if self.kind == "roi_pool":
            pooled = roi_pool(feature, boxes, size, self.spatial_scale)
        else:
            pooled = roi_align(feature, boxes, size, self.spatial_scale, self.sampling_ratio, aligned=True)
        return pooled.contiguous(memory_format=torch.channels_last) if self.channels_last else pooled


class Res5Head(nn.Module):
    """conv5_x run per region (first block stride 2), then global average pooling: (R, C, S, S) -> (R, D)."""

    def __init__(self, *, res5: nn.Module, out_channels: int):
        super().__init__()
        self.res5 = res5
        self.out_dim = out_channels

    def forward(self, pooled: Tensor) -> Tensor:
        return self.res5(pooled).mean(dim=(2, 3))


class FCHead(nn.Module):
    """Two fully connected layers on the flattened pooled conv4 features (Fast R-CNN style, light)."""

    def __init__(self, *, in_channels: int, resolution: int, fc_dim: int = 1024):
        super().__init__()
        self.fc1 = nn.Linear(in_channels * resolution * resolution, fc_dim)
        self.fc2 = nn.Linear(fc_dim, fc_dim)
        self.out_dim = fc_dim
        for fc in (self.fc1, self.fc2):
            nn.init.kaiming_uniform_(fc.weight, a=1)
            nn.init.zeros_(fc.bias)

    def forward(self, pooled: Tensor) -> Tensor:
        # (R, C, S, S) -> (R, C*S*S)
        x = pooled.flatten(1)
        return F.relu(self.fc2(F.relu(self.fc1(x))))


class FastRCNNPredictor(nn.Module):
    """Sibling layers: K+1 class logits (background last) and class-specific box deltas (4K)."""

    def __init__(self, *, in_dim: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_dim, num_classes + 1)
        self.bbox_pred = nn.Linear(in_dim, num_classes * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(R, D) -> logits (R, K+1), deltas (R, 4K)."""
        return self.cls_score(x), self.bbox_pred(x)


class RoIHeads(nn.Module):
    """The Fast R-CNN stage of the C4 detector: `label_and_sample` + `losses` in training, `predict` in eval.

    Built parts:
        pooler           RoIPooler: (N, C, H, W) conv4 map and (R_i, 4) boxes per image -> (R, C, S, S)
        box_head         per-region head, (R, C, S, S) -> (R, D) with an `out_dim` D: Res5Head or FCHead
        predictor        FastRCNNPredictor: (R, D [+ D']) -> logits (R, K+1) (background last), deltas (R, 4K)
        matcher          Matcher labelling proposals by their best IoU with the ground truth: 1 foreground,
                         0 background, -1 never sampled (Fast R-CNN: background only in [0.1, 0.5))
        box_coder        BoxCoder: the (dx, dy, dw, dh) regression targets and their decoding
        context_pooler   the whole-image RoI's pooler with `global_context`; None: `pooler`
        context_head     the whole-image RoI's head (output D') with `global_context`; None: `box_head`
                         (shared weights, no extra checkpoint keys)
    Training:
        num_classes           K foreground classes; labels 0..K-1, background K
        batch_size_per_image  RoIs sampled per image for the losses (ground-truth boxes join the proposals)
        positive_fraction     at most this share of the sampled RoIs is foreground
        smooth_l1_beta        beta of the box loss's smooth L1, in encoded units (0: L1)
        label_smoothing       the classification target puts 1 - eps on the true class and spreads eps
                              uniformly over all K+1 classes (Szegedy et al. 2016); 0: plain cross-entropy
    Inference:
        score_threshold       class scores strictly above it are candidates
        nms_thresh            per-class NMS IoU
        detections_per_image  at most this many detections per image, best scores first
        drop_empty_before_nms candidates with a side <= 0.01 px (after clipping) are dropped before NMS;
                              false keeps them, as detectron2 does (it drops empty boxes only after mapping
                              to the input image)
        global_context        every region's feature is joined by its image's whole-image RoI feature
        box_refinement        iterative localization (ResNet paper, appendix B): each region is scored
                              again at its regressed box, the union of both passes goes through NMS at
                              `refine_nms_thresh`, then box voting (`predict_refined`)
        refine_nms_thresh     NMS IoU over that union
        vote_iou_thresh       box voting: same-class candidates at or above this IoU with a kept box are
                              averaged into it, weighted by score
    """

    def __init__(
        self,
        *,
        pooler: RoIPooler,
        box_head: nn.Module,
        predictor: FastRCNNPredictor,
        num_classes: int,
        matcher: Matcher,
        box_coder: BoxCoder,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        smooth_l1_beta: float = 0.0,
        label_smoothing: float = 0.0,
        score_threshold: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_image: int = 100,
        global_context: bool = False,
        context_pooler: RoIPooler | None = None,
        context_head: nn.Module | None = None,
        box_refinement: bool = False,
        refine_nms_thresh: float = 0.3,
        vote_iou_thresh: float = 0.8,
        drop_empty_before_nms: bool = True,
    ):
        super().__init__()
        self.pooler = pooler
        self.box_head = box_head
        self.predictor = predictor
        self.num_classes = num_classes
        self.matcher = matcher
        self.box_coder = box_coder
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.smooth_l1_beta = smooth_l1_beta
        self.label_smoothing = label_smoothing
        self.score_threshold = score_threshold
        self.nms_thresh = nms_thresh
        self.detections_per_image = detections_per_image
        self.global_context = global_context
        # the whole-image RoI's pooler and head; None: the regions' own (shared weights, no extra keys)
        self.context_pooler = context_pooler
        self.context_head = context_head
        self.box_refinement = box_refinement
        self.refine_nms_thresh = refine_nms_thresh
        self.vote_iou_thresh = vote_iou_thresh
        self.drop_empty_before_nms = drop_empty_before_nms

    @classmethod
    def from_config(cls, cfg, *, in_channels: int, res5: nn.Module | None, num_classes: int) -> "RoIHeads":
        """`res5` is the backbone's conv5 stage (used when `model.roi_heads.head` is res5)."""
        c = cfg.model.roi_heads
        pooler = RoIPooler(kind=c.pooler, resolution=c.pooler_resolution, sampling_ratio=c.sampling_ratio)
        if c.head == "res5":
            box_head = Res5Head(res5=res5, out_channels=res5.out_channels)
        else:
            box_head = FCHead(in_channels=in_channels, resolution=c.pooler_resolution, fc_dim=c.fc_dim)
        context_pooler = context_head = None
        if c.global_context:
            resolution = c.context_pooler_resolution or c.pooler_resolution
            context_pooler = RoIPooler(kind=c.pooler, resolution=resolution, sampling_ratio=c.sampling_ratio)
            if not c.context_shared_head:
                if c.head == "res5":
                    context_head = Res5Head(res5=copy.deepcopy(res5), out_channels=res5.out_channels)
                else:
                    context_head = FCHead(in_channels=in_channels, resolution=resolution, fc_dim=c.fc_dim)
            elif c.head == "fc" and resolution != c.pooler_resolution:
                raise UserError(
                    "model.roi_heads.context_pooler_resolution must equal pooler_resolution when the fc head is "
                    "shared with the context (its first layer's size depends on it); set context_shared_head: false"
                )
        feature_dim = box_head.out_dim + ((context_head or box_head).out_dim if c.global_context else 0)
        return cls(
            pooler=pooler,
            box_head=box_head,
            predictor=FastRCNNPredictor(in_dim=feature_dim, num_classes=num_classes),
            num_classes=num_classes,
            # background is IoU in [bg_iou_thresh_low, fg_iou_thresh); lower IoUs are never sampled
            matcher=Matcher(thresholds=[c.bg_iou_thresh_low, c.fg_iou_thresh], labels=[-1, 0, 1]),
            box_coder=BoxCoder(weights=tuple(c.bbox_reg_weights)),
            batch_size_per_image=c.batch_size_per_image,
            positive_fraction=c.positive_fraction,
            smooth_l1_beta=c.smooth_l1_beta,
            label_smoothing=c.label_smoothing,
            score_threshold=c.score_threshold,
            nms_thresh=c.nms_thresh,
            detections_per_image=c.detections_per_image,
            global_context=c.global_context,
            context_pooler=context_pooler,
            context_head=context_head,
            box_refinement=c.box_refinement,
            refine_nms_thresh=c.refine_nms_thresh,
            vote_iou_thresh=c.vote_iou_thresh,
            drop_empty_before_nms=c.drop_empty_before_nms,
        )

    def forward(
        self,
        feature: Tensor,
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[dict] | None = None,
    ) -> tuple[list[dict], dict[str, Tensor]]:
        """Training: (empty list, losses). Inference: (detections per image, empty dict)."""
        if self.training:
            if targets is None:
                raise ValueError("RoIHeads needs targets in training mode")
            proposals, labels, gt_boxes = self.label_and_sample(proposals, targets)
            logits, deltas = self.predictor(self.box_features(feature, proposals, image_sizes))
            return [], self.losses(logits, deltas, torch.cat(proposals), labels, gt_boxes)
        return self.predict(feature, proposals, image_sizes), {}

    def box_features(self, feature: Tensor, boxes: list[Tensor], image_sizes: list[tuple[int, int]]) -> Tensor:
        """Per-region features (R, D); with global context, each region's is joined by its image's: (R, D + D')."""
        regions = self.box_head(self.pooler(feature, boxes))
        if not self.global_context:
            return regions
        whole = [torch.tensor([[0.0, 0.0, w, h]], device=feature.device) for h, w in image_sizes]
        pooler = self.context_pooler if self.context_pooler is not None else self.pooler
        head = self.context_head if self.context_head is not None else self.box_head
        context = head(pooler(feature, whole))  # (N, D')
        counts = torch.tensor([len(b) for b in boxes], device=feature.device)
        # (N, D') -> (R, D'): repeat each image's context for its regions
        context = context.repeat_interleave(counts, dim=0)
        return torch.cat([regions, context], dim=1)

    @torch.no_grad()
    def label_and_sample(
        self, proposals: list[Tensor], targets: list[dict]
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        """Add ground truth to the proposals, match, sample. Returns sampled boxes per image,
        labels (R,) in 0..K (K background), matched ground-truth boxes (R, 4)."""
        sampled_boxes, all_labels, all_gt = [], [], []
        for props, target in zip(proposals, targets):
            gt, gt_labels = target["boxes"], target["labels"]
            props = torch.cat([props, gt.to(props.dtype)])
            iou = box_iou(gt, props)
            matches, flags = self.matcher(iou)
            labels = torch.full_like(matches, self.num_classes)
            if gt.numel():
                labels = torch.where(flags == 1, gt_labels[matches], labels)
            pos, neg = sample_balanced(
                flags, batch_size=self.batch_size_per_image, positive_fraction=self.positive_fraction
            )
            keep = torch.cat([pos, neg])
            sampled_boxes.append(props[keep])
            all_labels.append(labels[keep])
            all_gt.append(gt[matches[keep]] if gt.numel() else torch.zeros_like(props[keep]))
        return sampled_boxes, torch.cat(all_labels), torch.cat(all_gt)

    def losses(
        self, logits: Tensor, deltas: Tensor, proposals: Tensor, labels: Tensor, gt_boxes: Tensor
    ) -> dict[str, Tensor]:
        """logits (R, K+1), deltas (R, 4K), proposals/gt_boxes (R, 4), labels (R,)."""
        if labels.numel() == 0:
            # no sampled RoI in the whole batch (no ground truth, no proposals): a zero loss that keeps the graph,
            # where cross-entropy's mean over nothing would be NaN
            zero = logits.sum() * 0.0 + deltas.sum() * 0.0
            return {"loss_cls": zero, "loss_box": zero.clone()}
        loss_cls = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        fg = torch.nonzero(labels < self.num_classes).squeeze(1)
        # (R, 4K) -> (R, K, 4); take each foreground RoI's deltas for its ground-truth class
        pred = deltas.view(deltas.shape[0], -1, 4)[fg, labels[fg]]
        target = self.box_coder.encode(gt_boxes[fg], proposals[fg])
        loss_box = smooth_l1(pred, target, self.smooth_l1_beta) / max(labels.numel(), 1)
        return {"loss_cls": loss_cls, "loss_box": loss_box}

    @torch.no_grad()
    def predict(self, feature: Tensor, proposals: list[Tensor], image_sizes: list[tuple[int, int]]) -> list[dict]:
        scores, boxes = self.score_and_regress(feature, proposals, image_sizes)
        if self.box_refinement:
            return self.predict_refined(
                scores, boxes, image_sizes, rescore=lambda regions: self.score_and_regress(feature, regions, image_sizes)
            )
        return [
            self.postprocess(s, b, size, self.nms_thresh) for s, b, size in zip(scores, boxes, image_sizes)
        ]

    def score_and_regress(
        self, feature: Tensor, boxes: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Per image: class probabilities (R_i, K+1) and class-specific boxes (R_i, K, 4), clipped."""
        return self.classify(self.box_features(feature, boxes, image_sizes), boxes, image_sizes)

    def classify(
        self, features: Tensor, boxes: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Per-region features (R, D) of `boxes` -> per image probabilities (R_i, K+1) and clipped boxes (R_i, K, 4)."""
        logits, deltas = self.predictor(features)
        probs = F.softmax(logits.float(), dim=-1)
        decoded = self.box_coder.decode(deltas.float(), torch.cat(boxes).float())
        counts = [len(b) for b in boxes]
        out_boxes = []
        for b, (h, w) in zip(decoded.split(counts), image_sizes):
            # (R_i, 4K) -> (R_i * K, 4) -> clip -> (R_i, K, 4)
            out_boxes.append(clip_boxes(b.reshape(-1, 4), h, w).view(len(b), self.num_classes, 4))
        return list(probs.split(counts)), out_boxes

    def predict_refined(
        self,
        scores: list[Tensor],
        boxes: list[Tensor],
        image_sizes: list[tuple[int, int]],
        *,
        rescore: Callable[[list[Tensor]], tuple[list[Tensor], list[Tensor]]],
    ) -> list[dict]:
        """Iterative localization: re-score each region at its regressed box (for its best class),
        merge both sets, NMS at `refine_nms_thresh`, then box voting.

        scores (R_i, K+1), boxes (R_i, K, 4) per image: the first pass. `rescore` maps one (R_i, 4) box list
        per image to the same two lists for those boxes: pooling on the test scale's map (`predict`), or
        maxout over the pyramid (`detkit.modeling.test_time`)."""
        refined_inputs = []
        for s, b in zip(scores, boxes):
            best = s[:, : self.num_classes].argmax(dim=1)
            refined_inputs.append(b[torch.arange(len(b), device=b.device), best])
        scores2, boxes2 = rescore(refined_inputs)
        results = []
        for s1, b1, s2, b2, size in zip(scores, boxes, scores2, boxes2, image_sizes):
            # both passes' (R_i, K+1), (R_i, K, 4) -> (2 R_i, K+1), (2 R_i, K, 4)
            s, b = torch.cat([s1, s2]), torch.cat([b1, b2])
            results.append(self.postprocess_with_voting(s, b, size, self.refine_nms_thresh))
        return results

    def postprocess(self, probs: Tensor, boxes: Tensor, image_size: tuple[int, int], nms_thresh: float) -> dict:
        """probs (R, K+1), boxes (R, K, 4) clipped to `image_size` -> {boxes (D, 4), scores (D,), labels (D,)},
        D <= detections_per_image: the candidates (`candidates`) that survive per-class NMS at `nms_thresh`."""
        detections, _ = self.select_detections(*self.candidates(probs, boxes), nms_thresh)
        return detections

    def postprocess_with_voting(
        self, probs: Tensor, boxes: Tensor, image_size: tuple[int, int], nms_thresh: float
    ) -> dict:
        """`postprocess`, then each kept box replaced by the vote (`box_voting`) of all candidates around it."""
        candidates = self.candidates(probs, boxes)
        detections, kept = self.select_detections(*candidates, nms_thresh)
        if len(kept):
            cand_boxes, cand_scores, cand_labels = candidates
            detections["boxes"] = box_voting(
                detections["boxes"], detections["labels"], cand_boxes, cand_scores, cand_labels, self.vote_iou_thresh
            )
        return detections

    def candidates(self, probs: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """probs (R, K+1), boxes (R, K, 4) -> every (box, score, class) above `score_threshold` (and non-empty,
        with `drop_empty_before_nms`): boxes (M, 4), scores (M,), labels (M,)."""
        num_classes = self.num_classes
        fg_scores = probs[:, :num_classes]
        labels = torch.arange(num_classes, device=probs.device).expand_as(fg_scores)
        # (R, K) -> (R*K,), (R, K, 4) -> (R*K, 4)
        fg_scores, labels, boxes = fg_scores.reshape(-1), labels.reshape(-1), boxes.reshape(-1, 4)
        keep = fg_scores > self.score_threshold  # strictly above, as detectron2 and torchvision
        if self.drop_empty_before_nms:
            keep &= nonempty(boxes, 1e-2)
        return boxes[keep], fg_scores[keep], labels[keep]

    def select_detections(
        self, boxes: Tensor, scores: Tensor, labels: Tensor, nms_thresh: float
    ) -> tuple[dict, Tensor]:
        """Per-class NMS over candidates (M, 4), (M,), (M,), best `detections_per_image` kept:
        ({boxes (D, 4), scores (D,), labels (D,)}, the kept candidates' indices (D,))."""
        kept = batched_nms(boxes, scores, labels, nms_thresh)[: self.detections_per_image]
        return {"boxes": boxes[kept], "scores": scores[kept], "labels": labels[kept]}, kept


def box_voting(
    kept_boxes: Tensor, kept_labels: Tensor, boxes: Tensor, scores: Tensor, labels: Tensor, iou_thresh: float
) -> Tensor:
    """Replace each kept box by the score-weighted mean of the same-class boxes overlapping it at IoU >= `iou_thresh`.

    kept_boxes (D, 4), kept_labels (D,); boxes (M, 4), scores (M,), labels (M,): the voting pool
    (which contains the kept boxes themselves, so every kept box has at least one voter).
    """
    iou = box_iou(kept_boxes, boxes)  # (D, M)
    voters = (iou >= iou_thresh) & (kept_labels[:, None] == labels[None, :])
    weights = voters.to(scores.dtype) * scores[None, :]
    # (D, M) @ (M, 4) -> (D, 4)
    return (weights @ boxes) / weights.sum(dim=1, keepdim=True).clamp(min=1e-12)
