import math

import pytest
import torch

from detkit.modeling.box_coder import BoxCoder
from detkit.modeling.matcher import Matcher
from detkit.modeling.roi_heads import FastRCNNPredictor, FCHead, RoIHeads, RoIPooler, box_voting


def make_heads(num_classes=3, **kw):
    torch.manual_seed(0)
    head = FCHead(in_channels=8, resolution=4, fc_dim=16)
    dim = head.out_dim * (2 if kw.get("global_context") else 1)
    return RoIHeads(
        pooler=RoIPooler(kind=kw.pop("pooler", "roi_pool"), resolution=4),
        box_head=head,
        predictor=FastRCNNPredictor(in_dim=dim, num_classes=num_classes),
        num_classes=num_classes,
        matcher=Matcher(thresholds=[0.5]),
        box_coder=BoxCoder(weights=(10.0, 10.0, 5.0, 5.0)),
        batch_size_per_image=16,
        score_threshold=0.0,
        **kw,
    )


TARGETS = [
    {"boxes": torch.tensor([[4.0, 4.0, 40.0, 30.0]]), "labels": torch.tensor([2])},
    {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
]
PROPOSALS = [torch.tensor([[0.0, 0.0, 20.0, 20.0], [5.0, 5.0, 41.0, 29.0]]), torch.tensor([[10.0, 10.0, 50.0, 50.0]])]
SIZES = [(64, 64), (64, 64)]


def test_label_and_sample_adds_gt_and_labels_background_last():
    heads = make_heads().train()
    boxes, labels, gt = heads.label_and_sample(PROPOSALS, TARGETS)
    assert len(boxes[0]) == 3  # 2 proposals + the ground truth itself
    assert sorted(labels[:3].tolist()) == [2, 2, 3]  # the close proposal and the gt are class 2; the other is bg
    assert labels[3].item() == 3  # image without objects: background only
    assert gt.shape == (4, 4)


def test_losses_finite_and_zero_box_loss_on_empty_targets():
    for kw in [{}, {"pooler": "roi_align"}, {"global_context": True}]:
        heads = make_heads(**kw).train()
        feature = torch.randn(2, 8, 4, 4, requires_grad=True)
        _, losses = heads(feature, PROPOSALS, SIZES, TARGETS)
        assert set(losses) == {"loss_cls", "loss_box"}
        assert all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
        _, losses = heads(feature, PROPOSALS, SIZES, [TARGETS[1], TARGETS[1]])
        assert losses["loss_box"].item() == 0.0


def test_global_context_doubles_predictor_input():
    plain, ctx = make_heads(), make_heads(global_context=True)
    feature = torch.randn(2, 8, 4, 4)
    assert plain.box_features(feature, PROPOSALS, SIZES).shape == (3, 16)
    assert ctx.box_features(feature, PROPOSALS, SIZES).shape == (3, 32)
    assert ctx.predictor.cls_score.in_features == 32


def test_predict_shapes_and_limits():
    heads = make_heads(detections_per_image=4).eval()
    dets, losses = heads(torch.randn(2, 8, 4, 4), PROPOSALS, SIZES)
    assert losses == {} and len(dets) == 2
    for d in dets:
        assert d["boxes"].shape[1] == 4 and len(d["boxes"]) <= 4
        assert ((d["labels"] >= 0) & (d["labels"] < 3)).all()
        assert (d["boxes"] >= 0).all() and (d["boxes"] <= 64).all()


def test_refinement_with_identity_regressor_changes_no_box():
    """With zero deltas every refined box equals its proposal; voting over identical boxes keeps them."""
    heads = make_heads(box_refinement=True, vote_iou_thresh=0.8, refine_nms_thresh=0.3).eval()
    torch.nn.init.zeros_(heads.predictor.bbox_pred.weight)
    torch.nn.init.zeros_(heads.predictor.bbox_pred.bias)
    proposals = [torch.tensor([[4.0, 4.0, 40.0, 30.0]]), torch.tensor([[10.0, 10.0, 50.0, 50.0]])]
    dets = heads(torch.randn(2, 8, 4, 4), proposals, SIZES)[0]
    for d, p in zip(dets, proposals):
        assert len(d["boxes"]) >= 1
        assert torch.allclose(d["boxes"], p.expand_as(d["boxes"]), atol=1e-4)


def test_box_voting_weighted_mean():
    kept = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    pool = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 11.0, 10.0], [0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    scores = torch.tensor([0.9, 0.3, 0.5, 0.8])
    labels = torch.tensor([0, 0, 1, 0])  # third box is another class, fourth does not overlap
    out = box_voting(kept, torch.tensor([0]), pool, scores, labels, iou_thresh=0.8)
    expected_x1 = (0.9 * 10 + 0.3 * 11) / 1.2
    assert torch.allclose(out, torch.tensor([[0.0, 0.0, expected_x1, 10.0]]))


def test_no_proposals_gives_no_detections():
    heads = make_heads(box_refinement=False).eval()
    dets, _ = heads(torch.randn(2, 8, 4, 4), [torch.zeros(0, 4), torch.zeros(0, 4)], SIZES)
    assert [len(d["boxes"]) for d in dets] == [0, 0]
    heads.box_refinement = True
    dets, _ = heads(torch.randn(2, 8, 4, 4), [torch.zeros(0, 4), torch.zeros(0, 4)], SIZES)
    assert [len(d["boxes"]) for d in dets] == [0, 0]


def test_context_pooled_size_and_sharing_are_config_choices():
    from detkit.config import load_config
    from detkit.errors import UserError
    from detkit.modeling.build import build_model

    base = ["model.num_classes=3", "model.backbone.depth=18", "model.backbone.weights=null", "model.backbone.width=32",
            "model.roi_heads.global_context=true", "input.min_size_test=64", "input.max_size_test=100"]
    shared = build_model(load_config(None, base + ["model.roi_heads.head=res5"]))
    assert shared.roi_heads.context_head is None  # shared: no second set of weights, no extra checkpoint keys
    assert not any(k.startswith("roi_heads.context_head") for k in shared.state_dict())
    separate = build_model(load_config(None, base + ["model.roi_heads.head=res5", "model.roi_heads.context_shared_head=false",
                                                       "model.roi_heads.context_pooler_resolution=8"]))
    assert separate.roi_heads.context_pooler.resolution == 8
    assert separate.roi_heads.context_head.res5 is not separate.roi_heads.box_head.res5
    context_weights = dict(separate.roi_heads.context_head.res5.named_parameters())
    assert all(p is not context_weights[k] for k, p in separate.roi_heads.box_head.res5.named_parameters())
    assert separate.roi_heads.predictor.cls_score.in_features == 2 * 256
    fc = build_model(load_config(None, base + ["model.roi_heads.head=fc", "model.roi_heads.pooler_resolution=4",
                                                 "model.roi_heads.fc_dim=32", "model.roi_heads.context_shared_head=false",
                                                 "model.roi_heads.context_pooler_resolution=2"]))
    assert fc.roi_heads.context_head.fc1.in_features == 128 * 2 * 2  # conv4 of a width-32 ResNet-18: 128 channels
    images = [torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8)]
    targets = [{"boxes": torch.tensor([[5.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([1])}]
    for model in (separate, fc):
        losses = model.train()(images, targets)
        sum(losses.values()).backward()
        assert all(torch.isfinite(v) for v in losses.values())
    import pytest

    with pytest.raises(UserError, match="^model.roi_heads.context_pooler_resolution must equal .* set context_shared_head: false$"):
        build_model(load_config(None, base + ["model.roi_heads.head=fc", "model.roi_heads.context_pooler_resolution=2"]))


def test_batch_without_any_sampled_roi_gives_a_zero_loss():
    """No ground truth anywhere and no proposal: nothing is sampled; the loss is zero, not NaN."""
    heads = make_heads().train()
    feature = torch.randn(2, 8, 4, 4, requires_grad=True)
    no_boxes = [torch.zeros(0, 4), torch.zeros(0, 4)]
    _, losses = heads(feature, no_boxes, SIZES, [TARGETS[1], TARGETS[1]])
    assert losses["loss_cls"].item() == 0.0 and losses["loss_box"].item() == 0.0
    sum(losses.values()).backward()  # still part of the graph: the training step runs as usual


def test_poolers_sample_where_computed_by_hand():
    """A 1-channel 8 x 8 map whose value is x^2 at column x (bilinear between columns), 2 x 2 bins.
    roi_align of [40, 40, 104, 104] (cells 2.5..6.5, aligned: minus half a cell, 2..6): one sample per bin at
    the bin centres x = 3, 5 -> 9, 25; adaptive (sampling_ratio 0: two per bin) at x = 2.5, 3.5 and 4.5, 5.5
    -> (6.5 + 12.5) / 2 = 9.5 and (20.5 + 30.5) / 2 = 25.5. roi_pool rounds [32, 32, 96, 96] to cells 2..6 and
    takes each bin's max: cells 2..4 and 4..6 -> 16, 36."""
    feature = (torch.arange(8.0) ** 2).expand(1, 1, 8, 8).contiguous()
    box = [torch.tensor([[40.0, 40.0, 104.0, 104.0]])]
    one = RoIPooler(kind="roi_align", resolution=2, sampling_ratio=1)(feature, box)
    adaptive = RoIPooler(kind="roi_align", resolution=2, sampling_ratio=0)(feature, box)
    pooled = RoIPooler(kind="roi_pool", resolution=2)(feature, [torch.tensor([[32.0, 32.0, 96.0, 96.0]])])
    assert torch.allclose(one[0, 0], torch.tensor([[9.0, 25.0], [9.0, 25.0]]))
    assert torch.allclose(adaptive[0, 0], torch.tensor([[9.5, 25.5], [9.5, 25.5]]))
    assert torch.equal(pooled[0, 0], torch.tensor([[16.0, 36.0], [16.0, 36.0]]))
    # a half-precision map (autocast) is pooled in float32
    half = RoIPooler(kind="roi_align", resolution=2, sampling_ratio=1)(feature.half(), box)
    assert half.dtype == torch.float32 and torch.allclose(half, one)


def test_fc_head_weights_start_as_detectron2s_c2_xavier_fill():
    """kaiming_uniform with a = 1: uniform in +-sqrt(3 / fan_in)."""
    head = FCHead(in_channels=8, resolution=4, fc_dim=64)
    for fc, fan_in in [(head.fc1, 8 * 4 * 4), (head.fc2, 64)]:
        bound = math.sqrt(3.0 / fan_in)
        assert 0.95 * bound < fc.weight.abs().max().item() <= bound


def test_whole_image_region_has_the_context_feature():
    """With global context the context half of a region's feature is the whole image [0, 0, w, h] pooled by the
    shared pooler and head, so a region that is the whole image has two equal halves (each image its own)."""
    heads = make_heads(global_context=True, pooler="roi_align")
    torch.manual_seed(1)
    feature = torch.randn(2, 8, 4, 4)
    sizes = [(64, 48), (40, 64)]
    boxes = [torch.tensor([[0.0, 0.0, 48.0, 64.0], [8.0, 8.0, 30.0, 40.0]]), torch.tensor([[0.0, 0.0, 64.0, 40.0]])]
    with torch.no_grad():
        features = heads.box_features(feature, boxes, sizes)
    d = heads.box_head.out_dim
    assert features.shape == (3, 2 * d)
    assert torch.allclose(features[0, :d], features[0, d:], atol=1e-6)
    assert torch.allclose(features[2, :d], features[2, d:], atol=1e-6)
    assert torch.equal(features[1, d:], features[0, d:]) and not torch.allclose(features[0, d:], features[2, d:])


def test_regressed_boxes_are_clipped_to_their_image():
    """A regressor that widens every box 20-fold (dw = dh = log 20, weights 5): each image's boxes are clipped to its
    own (h, w)."""
    heads = make_heads(num_classes=2)
    torch.nn.init.zeros_(heads.predictor.bbox_pred.weight)
    with torch.no_grad():
        heads.predictor.bbox_pred.bias.copy_(torch.tensor([0.0, 0.0, 5 * math.log(20.0), 5 * math.log(20.0)] * 2))
    features = torch.randn(2, heads.box_head.out_dim)
    boxes = [torch.tensor([[10.0, 10.0, 20.0, 20.0]]), torch.tensor([[30.0, 5.0, 40.0, 15.0]])]
    with torch.no_grad():
        _, out = heads.classify(features, boxes, [(50, 60), (30, 80)])
    assert torch.equal(out[0], torch.tensor([[[0.0, 0.0, 60.0, 50.0]] * 2]))
    assert torch.equal(out[1], torch.tensor([[[0.0, 0.0, 80.0, 30.0]] * 2]))


def test_candidates_strictly_above_the_score_threshold_and_not_empty():
    heads = make_heads(num_classes=2)
    heads.score_threshold = 0.25
    probs = torch.tensor([[0.25, 0.5, 0.25], [0.5, 0.3, 0.2], [0.6, 0.3, 0.1]])
    boxes = torch.tensor([
        [[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]],
        [[0.0, 0.0, 0.005, 10.0], [0.0, 0.0, 10.0, 10.0]],  # class 0's box is 0.005 px wide: dropped
        [[5.0, 5.0, 5.5, 5.5], [5.0, 5.0, 5.0, 9.0]],  # 0.5 px: kept; class 1's box is 0 px wide: dropped
    ])
    cand_boxes, scores, labels = heads.candidates(probs, boxes)
    # (region, class) kept: (0, 1) 0.5 (0.25 is not above 0.25), (1, 1) 0.3, (2, 0) 0.6
    assert labels.tolist() == [1, 1, 0] and torch.allclose(scores, torch.tensor([0.5, 0.3, 0.6]))
    assert torch.equal(cand_boxes, torch.stack([boxes[0, 1], boxes[1, 1], boxes[2, 0]]))


def test_box_voting_includes_boxes_at_the_threshold():
    """IoU of [0, 0, 10, 10] and [0, 0, 10, 5] is 50 / 100 = 0.5 exactly: at `iou_thresh` 0.5 it votes."""
    kept = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    pool = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0]])
    out = box_voting(kept, torch.tensor([0]), pool, torch.tensor([0.9, 0.6]), torch.tensor([0, 0]), iou_thresh=0.5)
    assert torch.allclose(out, torch.tensor([[0.0, 0.0, 10.0, (0.9 * 10 + 0.6 * 5) / 1.5]]))


def test_training_without_targets_is_an_error():
    heads = make_heads().train()
    with pytest.raises(ValueError, match="^RoIHeads needs targets in training mode$"):
        heads(torch.zeros(2, 8, 4, 4), PROPOSALS, SIZES)


def test_detections_with_global_context_do_not_depend_on_the_batch():
    """Each image's regions are joined by its own whole-image feature: detecting on a batch of two images of
    different sizes gives each image the detections it gets alone."""
    heads = make_heads(global_context=True, pooler="roi_align").eval()
    torch.manual_seed(2)
    feature = torch.randn(2, 8, 4, 4)
    sizes = [(64, 48), (40, 64)]
    with torch.no_grad():
        both = heads(feature, PROPOSALS, sizes)[0]
        alone = [heads(feature[i : i + 1], [PROPOSALS[i]], [sizes[i]])[0][0] for i in range(2)]
    for b, a in zip(both, alone):
        assert len(a["boxes"]) >= 1
        assert torch.equal(b["labels"], a["labels"]) and torch.allclose(b["scores"], a["scores"], atol=1e-6)
        assert torch.allclose(b["boxes"], a["boxes"], atol=1e-5)


def test_label_smoothing_puts_eps_over_all_classes_in_the_classification_loss():
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0], [0.1, 0.2, -0.3, 1.5]])  # (R=2, K+1=4)
    labels = torch.tensor([0, 3])
    deltas, boxes = torch.zeros(2, 12), torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 2)
    log_p = torch.log_softmax(logits, dim=1)
    eps = 0.2
    # target 1 - eps on the true class plus eps / 4 on every class, written out
    expected = -((1 - eps) * log_p[torch.arange(2), labels] + eps / 4 * log_p.sum(1)).mean()
    plain = make_heads().losses(logits, deltas, boxes, labels, boxes)["loss_cls"]
    smoothed = make_heads(label_smoothing=eps).losses(logits, deltas, boxes, labels, boxes)["loss_cls"]
    assert torch.allclose(smoothed, expected)
    assert torch.allclose(plain, -log_p[torch.arange(2), labels].mean())
    assert smoothed.item() != pytest.approx(plain.item(), abs=1e-3)


def test_label_smoothing_from_config_and_checked_at_load():
    from detkit.config import load_config
    from detkit.errors import UserError

    cfg = load_config("configs/shapes_r18.yaml", ["model.roi_heads.label_smoothing=0.1"])
    heads = RoIHeads.from_config(cfg, in_channels=8, res5=None, num_classes=3)
    assert heads.label_smoothing == 0.1
    with pytest.raises(UserError, match="label_smoothing"):
        load_config("configs/shapes_r18.yaml", ["model.roi_heads.label_smoothing=1.0"])
