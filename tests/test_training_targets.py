"""What the detector learns from: RPN anchor labels, RoI sampling, regression targets and loss
normalisation, the optimizer's parameter groups and gradient clipping, each against numbers worked by hand.

The heads are built from a config (`from_config`), so a setting that is dropped or swapped on its way
from the config to the module fails here too.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from detkit.config import load_config
from detkit.modeling.roi_heads import RoIHeads
from detkit.modeling.rpn import RPN


def config(*overrides):
    return load_config(None, ["model.num_classes=3", *overrides])


def rpn_from_config(*overrides) -> RPN:
    torch.manual_seed(0)
    return RPN.from_config(config(*overrides), in_channels=8)


def heads_from_config(*overrides) -> RoIHeads:
    torch.manual_seed(0)
    return RoIHeads.from_config(config("model.roi_heads.head=fc", "model.roi_heads.fc_dim=16", *overrides),
                                in_channels=8, res5=None, num_classes=3)


# --- RPN anchor labelling (Faster R-CNN: >= 0.7 positive, < 0.3 negative, plus each object's best anchor)

GT = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 110.0, 110.0]])
ANCHORS = torch.tensor([
    [0.0, 0.0, 10.0, 8.0],  # IoU 0.8 with gt 0: positive, and gt 0's best anchor
    [0.0, 0.0, 10.0, 7.0],  # IoU 0.7 exactly: positive (at the threshold)
    [0.0, 0.0, 10.0, 6.9],  # IoU 0.69: ignored
    [0.0, 0.0, 10.0, 3.0],  # IoU 0.3 exactly: ignored (not below the low threshold)
    [0.0, 0.0, 10.0, 2.9],  # IoU 0.29: negative
    [100.0, 100.0, 110.0, 105.0],  # IoU 0.5 with gt 1, its best anchor: positive by the low-quality rule
    [100.0, 100.0, 110.0, 104.0],  # IoU 0.4: ignored
    [200.0, 200.0, 210.0, 210.0],  # no overlap: negative
])


def test_rpn_anchor_labels_at_the_thresholds_with_low_quality_matches():
    rpn = rpn_from_config()  # default iou_thresholds [0.3, 0.7], 256 anchors per image: nothing is subsampled
    targets = [{"boxes": GT, "labels": torch.tensor([0, 1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    labels, matched = rpn.label_and_sample(ANCHORS, targets)
    assert labels[0].tolist() == [1, 1, -1, -1, 0, 1, -1, 0]
    assert torch.equal(matched[0][[0, 1, 5]], GT[[0, 0, 1]])
    assert labels[1].tolist() == [0] * 8  # an image without objects: every anchor is background


def test_rpn_sampling_caps_positives_at_the_fraction():
    rpn = rpn_from_config("model.rpn.batch_size_per_image=4", "model.rpn.positive_fraction=0.25")
    anchors = torch.cat([GT[:1].repeat(6, 1), ANCHORS[7:].repeat(6, 1)])  # 6 exact matches, 6 disjoint
    labels, _ = rpn.label_and_sample(anchors, [{"boxes": GT[:1], "labels": torch.tensor([0])}])
    assert (labels == 1).sum() == 1 and (labels == 0).sum() == 3 and (labels[0, :6] >= 0).sum() == 1


def test_rpn_losses_normalised_by_the_sampled_anchor_budget():
    rpn = rpn_from_config("model.rpn.batch_size_per_image=8", "model.rpn.smooth_l1_beta=0.0")
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 20.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    deltas = torch.tensor([[[0.1, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0]]])
    labels = torch.tensor([[1, -1, 0]], dtype=torch.int8)  # anchor 1 not sampled, anchor 2 negative
    matched = torch.tensor([[[1.0, 0.0, 11.0, 10.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])
    losses = rpn.losses(anchors, logits, deltas, labels, matched)
    # BCE: positive logit 2 -> log(1 + e^-2); negative logit 0.5 -> log(1 + e^0.5); summed / (8 anchors x 1 image)
    expected_cls = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(0.5))) / 8
    # target of anchor 0: dx = (6 - 5) / 10 = 0.1 = the prediction, so only the ignored/negative ones could add
    assert losses["loss_rpn_cls"].item() == pytest.approx(expected_cls, rel=1e-5)
    assert losses["loss_rpn_box"].item() == pytest.approx(0.0, abs=1e-6)
    deltas[0, 0, 0] = 0.5  # now |0.5 - 0.1| = 0.4, L1 (beta 0), / 8
    assert rpn.losses(anchors, logits, deltas, labels, matched)["loss_rpn_box"].item() == pytest.approx(0.05, rel=1e-5)


def test_rpn_pre_and_post_nms_topk_for_train_and_test():
    rpn = rpn_from_config("model.rpn.pre_nms_topk_train=7", "model.rpn.pre_nms_topk_test=3",
                          "model.rpn.post_nms_topk_train=100", "model.rpn.post_nms_topk_test=100")
    # 10 disjoint anchors, objectness descending: the top k are the first k
    anchors = torch.tensor([[20.0 * i, 0.0, 20.0 * i + 10.0, 10.0] for i in range(10)])
    logits = torch.linspace(5.0, -5.0, 10)[None]
    deltas = torch.zeros(1, 10, 4)
    for training, count in [(True, 7), (False, 3)]:
        proposals = rpn.train(training).predict_proposals(anchors, logits, deltas, [(50, 400)])[0]
        assert torch.equal(proposals, anchors[:count]), training
    rpn = rpn_from_config("model.rpn.post_nms_topk_train=5", "model.rpn.post_nms_topk_test=2")
    for training, count in [(True, 5), (False, 2)]:
        proposals = rpn.train(training).predict_proposals(anchors, logits, deltas, [(50, 400)])[0]
        assert torch.equal(proposals, anchors[:count]), training


def test_rpn_positive_threshold_comes_from_the_config():
    rpn = rpn_from_config("model.rpn.iou_thresholds=[0.2,0.75]")
    labels, _ = rpn.label_and_sample(ANCHORS, [{"boxes": GT, "labels": torch.tensor([0, 1])}])
    # 0.7 is now ignored, 0.29 too; the low-quality rule still holds
    assert labels[0].tolist() == [1, -1, -1, -1, -1, 1, -1, 0]


# --- RoI sampling (Fast R-CNN: 25% foreground at IoU >= 0.5, background from [bg_low, 0.5))

def roi_proposals():
    """For the ground truth [0, 0, 100, 100]: 10 foreground (IoU >= 0.5), 10 in the background band
    (IoU 0.2), 10 below it (IoU 0.05)."""
    fg = torch.tensor([[0.0, 0.0, 100.0, 60.0 + i] for i in range(10)])  # IoU 0.60 .. 0.69
    band = torch.tensor([[0.0, 0.0, 100.0, 20.0]]).repeat(10, 1)  # IoU 0.2
    low = torch.tensor([[0.0, 0.0, 100.0, 5.0]]).repeat(10, 1)  # IoU 0.05
    return torch.cat([fg, band, low])


def test_roi_sampling_fraction_and_background_band():
    heads = heads_from_config("model.roi_heads.batch_size_per_image=8", "model.roi_heads.positive_fraction=0.375",
                              "model.roi_heads.bg_iou_thresh_low=0.1")
    gt = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    boxes, labels, gt_boxes = heads.label_and_sample([roi_proposals()], [{"boxes": gt, "labels": torch.tensor([1])}])
    assert len(boxes[0]) == 8 and len(labels) == 8
    assert (labels == 1).sum() == 3 and (labels == 3).sum() == 5  # 0.375 * 8 foreground, the rest background
    heights = boxes[0][:, 3] - boxes[0][:, 1]
    assert (heights[labels == 3] == 20).all()  # background only from the [0.1, 0.5) band
    assert (heights[labels == 1] >= 60).all()
    assert torch.equal(gt_boxes, gt.expand(8, 4))


def test_roi_background_below_the_band_only_without_a_band():
    heads = heads_from_config("model.roi_heads.batch_size_per_image=32", "model.roi_heads.positive_fraction=0.25")
    gt = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    boxes, labels, _ = heads.label_and_sample([roi_proposals()], [{"boxes": gt, "labels": torch.tensor([1])}])
    # 8 foreground of the 11 (10 + the ground truth itself), all 20 background (band and below) fill the rest
    assert (labels == 1).sum() == 8 and (labels == 3).sum() == 20


def test_roi_box_loss_uses_the_gt_class_deltas_and_the_sampled_count():
    heads = heads_from_config("model.roi_heads.smooth_l1_beta=0.0")  # bbox_reg_weights default (10, 10, 5, 5)
    proposals = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 20.0, 10.0], [5.0, 5.0, 9.0, 9.0], [0.0, 0.0, 4.0, 4.0]])
    gt_boxes = torch.tensor([[1.0, 0.0, 11.0, 10.0], [0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    labels = torch.tensor([2, 0, 3, 3])  # two foreground RoIs (classes 2 and 0), two background
    deltas = torch.full((4, 12), 7.0)  # every other class's deltas are far off
    deltas[0, 8:12] = torch.tensor([0.5, 0.0, 0.0, 0.0])  # RoI 0, class 2; target (1, 0, 0, 0)
    deltas[1, 0:4] = torch.tensor([0.0, 5.0, 0.0, 3.0])  # RoI 1, class 0; target (0, 5, 0, 5 ln 2)
    logits = torch.zeros(4, 4)
    logits[torch.arange(4), labels] = 1.0
    losses = heads.losses(logits, deltas, proposals, labels, gt_boxes)
    # L1 (beta 0): |1 - 0.5| + |5 ln 2 - 3| over 4 sampled RoIs (not over the 2 foreground ones)
    assert losses["loss_box"].item() == pytest.approx((0.5 + abs(5 * math.log(2) - 3)) / 4, rel=1e-5)
    assert losses["loss_cls"].item() == pytest.approx(math.log(math.e + 3) - 1, rel=1e-5)


def test_roi_box_loss_beta_from_the_config():
    heads = heads_from_config("model.roi_heads.smooth_l1_beta=1.0")
    proposals = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    gt_boxes = torch.tensor([[1.0, 0.0, 11.0, 10.0]])  # target dx = 10 * 1 / 10 = 1
    deltas = torch.zeros(1, 12)
    deltas[0, 0] = 0.5  # |d| = 0.5 < beta: 0.5 * d^2 / beta
    losses = heads.losses(torch.zeros(1, 4), deltas, proposals, torch.tensor([0]), gt_boxes)
    assert losses["loss_box"].item() == pytest.approx(0.125, rel=1e-5)
    assert losses["loss_cls"].item() == pytest.approx(math.log(4), rel=1e-5)


def test_roi_training_forward_matches_hand_loss():
    """Through forward: the sampled RoIs' losses equal cross-entropy and the encoded targets of `label_and_sample`."""
    heads = heads_from_config("model.roi_heads.batch_size_per_image=8", "model.roi_heads.positive_fraction=0.5",
                              "model.roi_heads.pooler_resolution=4", "model.roi_heads.smooth_l1_beta=0.0").train()
    feature = torch.randn(1, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    gt = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    targets = [{"boxes": gt, "labels": torch.tensor([1])}]
    torch.manual_seed(3)
    _, losses = heads(feature, [roi_proposals()], [(128, 128)], targets)
    torch.manual_seed(3)
    boxes, labels, gt_boxes = heads.label_and_sample([roi_proposals()], targets)
    logits, deltas = heads.predictor(heads.box_features(feature, boxes, [(128, 128)]))
    fg = labels < 3
    target = heads.box_coder.encode(gt_boxes[fg], boxes[0][fg])
    pred = deltas.view(-1, 3, 4)[fg, labels[fg]]
    assert losses["loss_box"].item() == pytest.approx((pred - target).abs().sum().item() / 8, rel=1e-4)
    assert losses["loss_cls"].item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)


# --- optimizer and gradient clipping

def test_weight_decay_groups_split_norm_from_other_parameters():
    from detkit.engine.train import build_optimizer
    from detkit.modeling.build import build_model

    cfg = config("model.backbone.depth=18", "model.backbone.weights=null", "model.backbone.norm=bn",
                 "model.backbone.freeze_at=0", "model.backbone.width=16",
                 "solver.weight_decay=0.001", "solver.weight_decay_norm=0.25", "solver.base_lr=0.03")
    model = build_model(cfg)
    optimizer = build_optimizer(model, cfg.solver)
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    norm_ids = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(decay) == len(trainable)  # every trainable parameter once
    assert norm_ids and all(decay[i] == 0.25 for i in norm_ids)
    assert all(decay[id(p)] == 0.001 for p in trainable if id(p) not in norm_ids)
    assert all(g["lr"] == 0.03 and g["momentum"] == cfg.solver.momentum for g in optimizer.param_groups)


def test_gradient_clipping_bounds_the_update(tmp_path):
    """With the global gradient norm clipped to 1e-6, one step moves the parameters by at most lr * 1e-6."""
    from detkit.checkpoint.io import load_checkpoint
    from detkit.engine.train import train
    from tests.conftest import write_config

    lr = 0.02
    moved = {}
    for clip in (1e-6, 0.0):
        path = write_config(tmp_path / f"clip{clip}.yaml", tmp_path / "data", max_iter=2, checkpoint_period=1,
                            warmup_iters=0, base_lr=lr, momentum=0.0, weight_decay=0.0, clip_grad_norm=clip)
        cfg = load_config(str(path))
        out = tmp_path / f"out{clip}"
        train(cfg, output_dir=out)
        first = load_checkpoint(sorted(out.glob("model_0000001*.pth"))[0])["model"]
        final = load_checkpoint(out / "model_final.pth")["model"]
        names = [n for n, v in first.items() if v.is_floating_point() and "running" not in n]
        moved[clip] = math.sqrt(sum(((final[n] - first[n]).double() ** 2).sum().item() for n in names))
    assert moved[1e-6] <= lr * 1e-6 * 1.01
    assert moved[0.0] > 1e3 * lr * 1e-6  # without clipping the same step is far larger


def test_rpn_anchor_and_proposal_settings_come_from_the_config():
    rpn = rpn_from_config("model.rpn.anchor_sizes=[30]", "model.rpn.anchor_ratios=[2.0]", "model.rpn.anchor_round=false",
                          "model.rpn.anchor_offset=0.5", "model.rpn.nms_thresh=0.6", "model.rpn.min_box_size=2.0")
    gen = rpn.anchor_generator
    # exact (not rounded) size 30, ratio 2: w = sqrt(900 / 2) = 21.2132..., h = 2 w = 42.4264...
    w = math.sqrt(450.0)
    assert torch.allclose(gen.cell_anchors, torch.tensor([[-w / 2, -w, w / 2, w]]))
    assert gen.offset == 0.5 and (rpn.nms_thresh, rpn.min_box_size) == (0.6, 2.0)
    other = rpn_from_config("model.rpn.head_channels=4", "model.rpn.loss_weight=2.5")
    assert other.head.conv.out_channels == 4 and other.loss_weight == 2.5
    # rounded: w / 2 = 10.6 -> 11, h / 2 = 21.2 -> 21
    rounded = rpn_from_config("model.rpn.anchor_sizes=[30]", "model.rpn.anchor_ratios=[2.0]", "model.rpn.anchor_round=true")
    assert torch.equal(rounded.anchor_generator.cell_anchors, torch.tensor([[-11.0, -21.0, 11.0, 21.0]]))


def test_rpn_losses_normalised_by_the_anchor_budget_of_the_whole_batch():
    """Two images, 4 sampled anchors each: the sums are divided by 4 x 2."""
    rpn = rpn_from_config("model.rpn.batch_size_per_image=4", "model.rpn.smooth_l1_beta=0.0")
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    logits = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    deltas = torch.zeros(2, 2, 4)
    deltas[1, 0, 0] = 0.3  # image 1, anchor 0: |0.3 - 0.1| = 0.2 against its target dx 0.1
    labels = torch.tensor([[-1, 0], [1, -1]], dtype=torch.int8)
    matched = torch.tensor([[[0.0] * 4, [0.0] * 4], [[1.0, 0.0, 11.0, 10.0], [0.0] * 4]])
    losses = rpn.losses(anchors, logits, deltas, labels, matched)
    # BCE: image 0's negative logit 1 -> log(1 + e); image 1's positive logit 2 -> log(1 + e^-2)
    assert losses["loss_rpn_cls"].item() == pytest.approx((math.log1p(math.e) + math.log1p(math.exp(-2.0))) / 8, rel=1e-5)
    assert losses["loss_rpn_box"].item() == pytest.approx(0.2 / 8, rel=1e-5)


def test_roi_head_settings_come_from_the_config():
    heads = heads_from_config(
        "model.roi_heads.pooler=roi_align", "model.roi_heads.sampling_ratio=2", "model.roi_heads.pooler_resolution=4",
        "model.roi_heads.global_context=true", "model.roi_heads.context_shared_head=false",
        "model.roi_heads.context_pooler_resolution=2", "model.roi_heads.score_threshold=0.2",
        "model.roi_heads.nms_thresh=0.4", "model.roi_heads.detections_per_image=7",
        "model.roi_heads.drop_empty_before_nms=false")
    for pooler, resolution in [(heads.pooler, 4), (heads.context_pooler, 2)]:
        assert (pooler.kind, pooler.sampling_ratio, pooler.resolution) == ("roi_align", 2, resolution)
    assert heads.context_head.fc1.in_features == 8 * 2 * 2 and heads.context_head.out_dim == 16  # fc_dim 16
    assert (heads.score_threshold, heads.nms_thresh, heads.detections_per_image) == (0.2, 0.4, 7)
    assert heads.drop_empty_before_nms is False
