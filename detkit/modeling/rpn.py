"""Region Proposal Network (Faster R-CNN, Ren et al. NIPS 2015) on one stride-16 feature map.

Shapes:
    N  images in the batch          C  feature channels
    H, W  feature map size          A  anchors per position (len(ratios) * len(sizes))
    HWA = H * W * A anchors per image, ordered (y, x, ratio, size)
    anchors (HWA, 4) xyxy in padded-input pixels; objectness (N, HWA); deltas (N, HWA, 4)
Losses: `loss_rpn_cls` (binary cross-entropy on sampled anchors) and `loss_rpn_box`
(smooth L1 on positive anchors), both normalised by the number of sampled anchors.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import nms

from detkit.modeling.backbone.resnet import C4_STRIDE
from detkit.modeling.box_coder import BoxCoder
from detkit.modeling.losses import smooth_l1
from detkit.modeling.matcher import Matcher
from detkit.modeling.sampler import sample_balanced
from detkit.structures.boxes import box_iou, clip_boxes, nonempty


class AnchorGenerator(nn.Module):
    """Anchors of every (size, ratio) centred at each feature position ((x + offset) * stride, (y + offset) * stride).

    `ratios` are height / width; an anchor of size s and ratio r has area s^2 (width s / sqrt(r), height
    s * sqrt(r)). With `round_sizes` the cell anchors are rounded to whole pixels (torchvision's convention,
    so detections can be compared one to one); without, they keep their exact sizes, computed in double
    precision as sqrt(s^2 / r) and r times that (detectron2's DefaultAnchorGenerator), then stored as float32.
    """

    def __init__(self, *, sizes: list[float], ratios: list[float], stride: int, offset: float = 0.0, round_sizes: bool = True):
        super().__init__()
        self.stride = stride
        self.offset = offset
        if round_sizes:
            scales = torch.as_tensor(sizes, dtype=torch.float32)
            ratios_t = torch.as_tensor(ratios, dtype=torch.float32)
            h_ratios = torch.sqrt(ratios_t)
            w_ratios = 1 / h_ratios
            # (len(ratios), 1) * (1, len(sizes)) -> (A,), ratio-major
            ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
            hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
            cell = (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()
        else:
            # ratio-major as above; float64 until the end so each corner is the float32 nearest the exact value
            ws = torch.tensor([math.sqrt(s * s / r) for r in ratios for s in sizes], dtype=torch.float64)
            hs = torch.tensor([r for r in ratios for _ in sizes], dtype=torch.float64) * ws
            cell = (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).float()
        self.register_buffer("cell_anchors", cell, persistent=False)

    @property
    def num_anchors(self) -> int:
        return self.cell_anchors.shape[0]

    def forward(self, feature: Tensor) -> Tensor:
        """(N, C, H, W) feature map -> (H*W*A, 4) anchors, shared by every image of the batch."""
        height, width = feature.shape[-2:]
        device = feature.device
        shift_x = (torch.arange(width, dtype=torch.float32, device=device) + self.offset) * self.stride
        shift_y = (torch.arange(height, dtype=torch.float32, device=device) + self.offset) * self.stride
        sy, sx = torch.meshgrid(shift_y, shift_x, indexing="ij")
        shifts = torch.stack([sx, sy, sx, sy], dim=-1).reshape(-1, 1, 4)
        # (H*W, 1, 4) + (1, A, 4) -> (H*W*A, 4)
        return (shifts + self.cell_anchors.to(device)[None]).reshape(-1, 4)


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then sibling 1x1 convs for objectness (A) and box deltas (4A)."""

    def __init__(self, *, in_channels: int, num_anchors: int, conv_channels: int = 0):
        super().__init__()
        conv_channels = conv_channels or in_channels
        self.conv = nn.Conv2d(in_channels, conv_channels, kernel_size=3, padding=1)
        self.objectness = nn.Conv2d(conv_channels, num_anchors, kernel_size=1)
        self.deltas = nn.Conv2d(conv_channels, num_anchors * 4, kernel_size=1)
        for layer in (self.conv, self.objectness, self.deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, feature: Tensor) -> tuple[Tensor, Tensor]:
        """(N, C, H, W) -> objectness (N, HWA), deltas (N, HWA, 4)."""
        x = F.relu(self.conv(feature))
        logits = self.objectness(x)
        deltas = self.deltas(x)
        n, a, h, w = logits.shape
        # (N, A, H, W) -> (N, H, W, A) -> (N, HWA)
        logits = logits.permute(0, 2, 3, 1).reshape(n, -1)
        # (N, A*4, H, W) -> (N, A, 4, H, W) -> (N, H, W, A, 4) -> (N, HWA, 4)
        deltas = deltas.view(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4)
        return logits, deltas


class RPN(nn.Module):
    """Anchors -> head -> (training: label, sample, losses) -> proposals after NMS."""

    def __init__(
        self,
        *,
        anchor_generator: AnchorGenerator,
        head: RPNHead,
        matcher: Matcher,
        box_coder: BoxCoder,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        pre_nms_topk: tuple[int, int] = (12000, 6000),
        post_nms_topk: tuple[int, int] = (2000, 300),
        nms_thresh: float = 0.7,
        min_box_size: float = 0.0,
        smooth_l1_beta: float = 1 / 9,
        loss_weight: float = 1.0,
    ):
        """`pre_nms_topk` and `post_nms_topk` are (train, test) pairs of counts per image."""
        super().__init__()
        self.anchor_generator = anchor_generator
        self.head = head
        self.matcher = matcher
        self.box_coder = box_coder
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.pre_nms_topk = pre_nms_topk
        self.post_nms_topk = post_nms_topk
        self.nms_thresh = nms_thresh
        self.min_box_size = min_box_size
        self.smooth_l1_beta = smooth_l1_beta
        self.loss_weight = loss_weight

    @classmethod
    def from_config(cls, cfg, in_channels: int, stride: int = C4_STRIDE) -> "RPN":
        c = cfg.model.rpn
        anchors = AnchorGenerator(
            sizes=c.anchor_sizes,
            ratios=c.anchor_ratios,
            stride=stride,
            offset=c.anchor_offset,
            round_sizes=c.anchor_round,
        )
        return cls(
            anchor_generator=anchors,
            head=RPNHead(in_channels=in_channels, num_anchors=anchors.num_anchors, conv_channels=c.head_channels),
            matcher=Matcher(thresholds=c.iou_thresholds, allow_low_quality_matches=True),
            box_coder=BoxCoder(weights=tuple(c.bbox_reg_weights)),
            batch_size_per_image=c.batch_size_per_image,
            positive_fraction=c.positive_fraction,
            pre_nms_topk=(c.pre_nms_topk_train, c.pre_nms_topk_test),
            post_nms_topk=(c.post_nms_topk_train, c.post_nms_topk_test),
            nms_thresh=c.nms_thresh,
            min_box_size=c.min_box_size,
            smooth_l1_beta=c.smooth_l1_beta,
            loss_weight=c.loss_weight,
        )

    def forward(
        self, feature: Tensor, image_sizes: list[tuple[int, int]], targets: list[dict] | None = None
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """feature (N, C, H, W); image_sizes (h, w) of each image before padding.

        Returns proposals, a list of (P_i, 4) xyxy per image (no gradient), and the losses (training only).
        """
        anchors = self.anchor_generator(feature)
        logits, deltas = self.head(feature)
        # float32 even under autocast: decoding in half precision would move boxes by pixels
        proposals = self.predict_proposals(anchors, logits.detach().float(), deltas.detach().float(), image_sizes)
        losses = {}
        if self.training:
            if targets is None:
                raise ValueError("RPN needs targets in training mode")
            labels, matched_boxes = self.label_and_sample(anchors, targets)
            losses = self.losses(anchors, logits, deltas, labels, matched_boxes)
        return proposals, losses

    @torch.no_grad()
    def label_and_sample(self, anchors: Tensor, targets: list[dict]) -> tuple[Tensor, Tensor]:
        """Anchors (HWA, 4) -> labels (N, HWA) in {1, 0, -1} after sampling, matched gt boxes (N, HWA, 4)."""
        all_labels, all_matched = [], []
        for target in targets:
            gt = target["boxes"]
            matches, labels = self.matcher(box_iou(gt, anchors))
            # Sampling: everything not drawn becomes ignored.
            pos, neg = sample_balanced(
                labels, batch_size=self.batch_size_per_image, positive_fraction=self.positive_fraction
            )
            sampled = torch.full_like(labels, -1)
            sampled[pos] = 1
            sampled[neg] = 0
            all_labels.append(sampled)
            all_matched.append(gt[matches] if gt.numel() else torch.zeros_like(anchors))
        return torch.stack(all_labels), torch.stack(all_matched)

    def losses(
        self, anchors: Tensor, logits: Tensor, deltas: Tensor, labels: Tensor, matched_boxes: Tensor
    ) -> dict[str, Tensor]:
        """Objectness and box losses, normalised by the sampled anchor count of the batch."""
        num_images = labels.shape[0]
        normaliser = self.batch_size_per_image * num_images
        pos = labels == 1
        valid = labels >= 0
        loss_cls = F.binary_cross_entropy_with_logits(logits[valid], labels[valid].to(logits.dtype), reduction="sum")
        # (N, HWA, 4) positives -> (P, 4)
        pos_anchors = anchors[None].expand(num_images, -1, -1)[pos]
        target_deltas = self.box_coder.encode(matched_boxes[pos], pos_anchors)
        loss_box = smooth_l1(deltas[pos], target_deltas, self.smooth_l1_beta)
        return {
            "loss_rpn_cls": self.loss_weight * loss_cls / normaliser,
            "loss_rpn_box": self.loss_weight * loss_box / normaliser,
        }

    @torch.no_grad()
    def predict_proposals(
        self, anchors: Tensor, logits: Tensor, deltas: Tensor, image_sizes: list[tuple[int, int]]
    ) -> list[Tensor]:
        """Top-k by objectness, decode, clip, drop tiny boxes, NMS, keep the top post-NMS boxes."""
        pre_topk = self.pre_nms_topk[0 if self.training else 1]
        post_topk = self.post_nms_topk[0 if self.training else 1]
        proposals = []
        for logit, delta, (height, width) in zip(logits, deltas, image_sizes):
            k = min(pre_topk, logit.numel())
            scores, idx = logit.topk(k)
            boxes = self.box_coder.decode(delta[idx], anchors[idx])
            boxes = clip_boxes(boxes, height, width)
            keep = nonempty(boxes, self.min_box_size)
            boxes, scores = boxes[keep], scores[keep]
            keep = nms(boxes, scores, self.nms_thresh)[:post_topk]
            proposals.append(boxes[keep])
        return proposals

