import pytest
import torch

from detkit.modeling.box_coder import BoxCoder
from detkit.modeling.matcher import Matcher
from detkit.modeling.rpn import RPN, AnchorGenerator, RPNHead


def test_anchor_count_and_placement():
    gen = AnchorGenerator(sizes=[32, 64], ratios=[0.5, 1.0, 2.0], stride=16)
    assert gen.num_anchors == 6
    anchors = gen(torch.zeros(1, 8, 3, 5))
    assert anchors.shape == (3 * 5 * 6, 4)
    # (H*W*A, 4) -> (H, W, A, 4): every anchor at position (y, x) is centred at (16x, 16y)
    grid = anchors.view(3, 5, 6, 4)
    centres = (grid[..., :2] + grid[..., 2:]) / 2
    assert torch.allclose(centres[2, 4], torch.tensor([64.0, 32.0]).expand(6, 2))
    # ratio 1 anchors are square with the given side; ratio 2 is twice as tall as wide
    sizes = grid[0, 0, :, 2:] - grid[0, 0, :, :2]
    assert sizes[2].tolist() == [32.0, 32.0] and sizes[3].tolist() == [64.0, 64.0]
    assert abs(sizes[4, 1] / sizes[4, 0] - 2.0) < 0.1


def make_rpn(**kw):
    anchors = AnchorGenerator(sizes=[16, 32], ratios=[1.0], stride=16)
    return RPN(
        anchor_generator=anchors,
        head=RPNHead(in_channels=8, num_anchors=anchors.num_anchors),
        matcher=Matcher(thresholds=[0.3, 0.7], allow_low_quality_matches=True),
        box_coder=BoxCoder(),
        batch_size_per_image=32,
        pre_nms_topk=(50, 40),
        post_nms_topk=(20, 10),
        **kw,
    )


def test_rpn_losses_finite_and_zero_box_loss_without_objects():
    torch.manual_seed(0)
    rpn = make_rpn().train()
    feature = torch.randn(2, 8, 4, 4, requires_grad=True)
    targets = [
        {"boxes": torch.tensor([[0.0, 0.0, 20.0, 20.0]]), "labels": torch.tensor([0])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    proposals, losses = rpn(feature, [(64, 64), (60, 50)], targets)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_rpn_box"] > 0
    sum(losses.values()).backward()
    assert feature.grad is not None
    _, losses = rpn(feature, [(64, 64), (60, 50)], [targets[1], targets[1]])
    assert losses["loss_rpn_box"].item() == 0.0 and losses["loss_rpn_cls"] > 0
    assert len(proposals) == 2 and all(p.shape[1] == 4 and len(p) <= 20 for p in proposals)


def test_rpn_proposals_inside_image_and_test_topk():
    torch.manual_seed(0)
    rpn = make_rpn().eval()
    proposals, losses = rpn(torch.randn(1, 8, 6, 6), [(90, 70)])
    assert losses == {}
    p = proposals[0]
    assert 1 <= len(p) <= 10
    assert (p[:, 0] >= 0).all() and (p[:, 2] <= 70).all() and (p[:, 3] <= 90).all()


def test_rpn_does_not_mutate_targets():
    torch.manual_seed(0)
    rpn = make_rpn().train()
    boxes = torch.tensor([[0.0, 0.0, 20.0, 20.0]])
    target = {"boxes": boxes.clone(), "labels": torch.tensor([0])}
    rpn(torch.randn(1, 8, 4, 4), [(64, 64)], [target])
    assert torch.equal(target["boxes"], boxes)


def test_anchor_offset_centres_anchors_in_their_cell():
    """Offset 0.5 (detectron2's option): centres at (x + 0.5) * 16; a 2 x 3 map, one 16 x 16 anchor per position."""
    gen = AnchorGenerator(sizes=[16], ratios=[1.0], stride=16, offset=0.5)
    anchors = gen(torch.zeros(1, 1, 2, 3))
    centres = [(x, y) for y in (8.0, 24.0) for x in (8.0, 24.0, 40.0)]  # row-major (y, x)
    assert torch.equal(anchors, torch.tensor([[x - 8, y - 8, x + 8, y + 8] for x, y in centres]))


def test_training_without_targets_is_an_error():
    rpn = make_rpn().train()
    with pytest.raises(ValueError, match="^RPN needs targets in training mode$"):
        rpn(torch.zeros(1, 8, 4, 4), [(64, 64)])
