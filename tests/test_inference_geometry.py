"""Test-time geometry checked exactly: the resize and the mapping of boxes back, the global-context box of
each image, iterative localization (refinement and voting) with a regressor that moves boxes, and the
scale assignment of maxout testing."""

import pytest
import torch

from detkit.config import load_config
from detkit.modeling.roi_heads import RoIHeads
from detkit.modeling.test_time import select_adjacent_scales
from tests.conftest import tiny_model


def heads_from_config(*overrides) -> RoIHeads:
    torch.manual_seed(0)
    cfg = load_config(None, ["model.num_classes=3", "model.roi_heads.head=fc", "model.roi_heads.fc_dim=16",
                             "model.roi_heads.pooler_resolution=4", *overrides])
    return RoIHeads.from_config(cfg, in_channels=8, res5=None, num_classes=3)


# --- test-time resize and mapping back

@pytest.mark.parametrize("factor", [2, 3])
def test_enlarged_image_gives_the_same_detections_at_scaled_coordinates(factor):
    """An image `factor` times the test size (each pixel repeated) is resized back to exactly the small one
    (bilinear at an integer factor samples block centres), so its detections are the small image's times `factor`."""
    model = tiny_model().eval()  # min_size_test 64
    small = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    large = small.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)
    with torch.no_grad():
        a = model([small])[0]
        b = model([large])[0]
    assert len(a["boxes"]) >= 5  # the comparison covers real boxes
    assert torch.equal(a["labels"], b["labels"])
    assert torch.allclose(b["scores"], a["scores"], atol=1e-5)
    assert torch.allclose(b["boxes"], factor * a["boxes"], rtol=1e-5, atol=1e-3)


def test_resize_keeps_aspect_caps_the_long_side_and_maps_back_per_axis():
    """(100, 151) at short side 64: (64, 97), so x scales by 151/97 and y by 100/64 on the way back;
    (40, 400) with the long side capped at 100: (10, 100)."""
    model = tiny_model().eval()  # min_size_test 64, max_size_test 100
    image = torch.randint(0, 256, (3, 100, 151), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        batch, sizes, _ = model.preprocessor([image])
        assert sizes == [(64, 97)] and batch.shape[-2:] == (64, 112)  # padded to a multiple of 16
        expected = torch.nn.functional.interpolate(
            ((image.float() - model.preprocessor.pixel_mean) / model.preprocessor.pixel_std)[None],
            size=(64, 97), mode="bilinear", align_corners=False)[0]
        assert torch.allclose(batch[0, :, :64, :97], expected, atol=1e-5)
        assert (batch[0, :, 64:] == 0).all() and (batch[0, :, :, 97:] == 0).all()
        feature = model.backbone(batch)
        proposals, _ = model.rpn(feature, sizes)
        inner, _ = model.roi_heads(feature, proposals, sizes)
        out = model([image])[0]
    assert len(out["boxes"]) >= 5
    scale = torch.tensor([151 / 97, 100 / 64, 151 / 97, 100 / 64])
    assert torch.allclose(out["boxes"], inner[0]["boxes"] * scale, rtol=1e-6, atol=1e-4)
    assert (out["boxes"][:, 2] <= 151 + 1e-3).all() and (out["boxes"][:, 3] <= 100 + 1e-3).all()
    _, sizes, _ = model.preprocessor([torch.zeros(3, 40, 400, dtype=torch.uint8)])
    assert sizes == [(10, 100)]


# --- global context: the whole-image box of each image

def test_global_context_pools_each_images_own_whole_box():
    heads = heads_from_config("model.roi_heads.global_context=true").eval()
    feature = torch.randn(2, 8, 6, 8, generator=torch.Generator().manual_seed(0))  # padded batch 96 x 128
    sizes = [(96, 128), (64, 48)]  # (h, w): a landscape and a portrait image of different sizes
    boxes = [torch.tensor([[0.0, 0.0, 30.0, 30.0], [10.0, 20.0, 90.0, 60.0]]),
             torch.tensor([[5.0, 5.0, 40.0, 50.0], [0.0, 0.0, 16.0, 16.0], [8.0, 30.0, 40.0, 60.0]])]
    with torch.no_grad():
        joined = heads.box_features(feature, boxes, sizes)  # (5, 32)
        regions = heads.box_head(heads.pooler(feature, boxes))
        expected_context = []
        for i, (h, w) in enumerate(sizes):
            whole = torch.tensor([[0.0, 0.0, float(w), float(h)]])
            pooler = heads.context_pooler or heads.pooler
            head = heads.context_head or heads.box_head
            ctx = head(pooler(feature[i : i + 1], [whole]))
            expected_context.append(ctx.expand(len(boxes[i]), -1))
    assert joined.shape == (5, 32)
    assert torch.allclose(joined[:, :16], regions, atol=1e-6)
    assert torch.allclose(joined[:, 16:], torch.cat(expected_context), atol=1e-6)
    assert not torch.allclose(expected_context[0][0], expected_context[1][0])  # the two contexts differ


# --- iterative localization with a regressor that moves boxes

def heads_with_fixed_predictor(*overrides) -> RoIHeads:
    """Predictor ignoring its input: class 0 at probability e^3 / (e^3 + 3) = 0.87, classes 1 and 2 at 0.043
    (under the 0.05 score threshold); class 0's deltas shift a box right by 10% of its width
    (dx = 1 with bbox_reg_weights 10)."""
    heads = heads_from_config(*overrides).eval()
    p = heads.predictor
    for layer in (p.cls_score, p.bbox_pred):
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    p.cls_score.bias.data[0] = 3.0
    p.bbox_pred.bias.data[0] = 1.0
    return heads


def run_heads(heads, proposal):
    feature = torch.randn(1, 8, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        dets, _ = heads(feature, [proposal], [(64, 64)])
    return dets[0]


def test_class_specific_regression_at_inference():
    heads = heads_with_fixed_predictor()
    heads.predictor.cls_score.bias.data[1] = 2.5  # class 1 scores too, and its deltas move boxes down by 10%
    heads.predictor.bbox_pred.bias.data[5] = 1.0
    dets = run_heads(heads, torch.tensor([[10.0, 10.0, 30.0, 30.0]]))
    probs = torch.softmax(torch.tensor([3.0, 2.5, 0, 0]), 0)
    assert dets["labels"].tolist() == [0, 1]
    assert torch.allclose(dets["boxes"], torch.tensor([[12.0, 10.0, 32.0, 30.0], [10.0, 12.0, 30.0, 32.0]]), atol=1e-4)
    assert torch.allclose(dets["scores"], probs[:2], rtol=1e-5)


def test_refinement_rescores_the_regressed_box_and_votes():
    """Pass 1: [10, 10, 30, 30] -> [12, 10, 32, 30]; pass 2 on that box -> [14, 10, 34, 30]. Both score 0.87,
    NMS at 0.3 keeps one, and voting (IoU 18/22 = 0.82 >= 0.8) averages them: [13, 10, 33, 30]."""
    heads = heads_with_fixed_predictor("model.roi_heads.box_refinement=true")
    dets = run_heads(heads, torch.tensor([[10.0, 10.0, 30.0, 30.0]]))
    assert dets["labels"].tolist() == [0]
    assert torch.allclose(dets["boxes"], torch.tensor([[13.0, 10.0, 33.0, 30.0]]), atol=1e-4)


def test_voting_only_above_its_iou_threshold():
    heads = heads_with_fixed_predictor("model.roi_heads.box_refinement=true", "model.roi_heads.vote_iou_thresh=0.85")
    dets = run_heads(heads, torch.tensor([[10.0, 10.0, 30.0, 30.0]]))
    # IoU 0.82 < 0.85: the kept box (either pass, equal scores) is not averaged with the other one
    assert len(dets["boxes"]) == 1
    box = dets["boxes"][0]
    assert any(torch.allclose(box, torch.tensor(b), atol=1e-4) for b in ([12.0, 10.0, 32.0, 30.0], [14.0, 10.0, 34.0, 30.0]))


def test_refinement_nms_threshold_from_the_config():
    """With refine_nms_thresh 0.9 both passes' boxes (IoU 0.82) survive NMS; each is voted with the other."""
    heads = heads_with_fixed_predictor("model.roi_heads.box_refinement=true", "model.roi_heads.refine_nms_thresh=0.9")
    dets = run_heads(heads, torch.tensor([[10.0, 10.0, 30.0, 30.0]]))
    assert len(dets["boxes"]) == 2
    assert torch.allclose(dets["boxes"], torch.tensor([[13.0, 10.0, 33.0, 30.0]]).expand(2, 4), atol=1e-4)


# --- maxout: which two scales pool each region

def test_adjacent_scales_bracket_the_canonical_area():
    """Scale factors x2, x4, x6; the region's area times factor^2 is compared with 224^2 = 50176."""
    factors = [2.0, 4.0, 6.0]
    areas = torch.tensor([
        112.0 * 112.0,  # 50176 at x2 exactly: best x2, not too small -> other x1 is out of range -> (0, 1)
        60.0 * 60.0,  # 14400, 57600, 129600: best x4 (index 1), too large -> (0, 1)
        50.0 * 50.0,  # 10000, 40000, 90000: best x4, too small -> one up -> (1, 2)
        10.0 * 10.0,  # tiny: best x6, too small, no larger scale -> (1, 2)
        300.0 * 300.0,  # huge: best x2, too large, no smaller scale -> (0, 1)
        36.0 * 36.0,  # 5184, 20736, 46656: best x6 (46656 vs 20736), too small -> (1, 2)
    ])
    low, high = select_adjacent_scales(areas, factors)
    assert list(zip(low.tolist(), high.tolist())) == [(0, 1), (0, 1), (1, 2), (1, 2), (0, 1), (1, 2)]
    low, high = select_adjacent_scales(areas, [1.0])
    assert low.tolist() == [0] * 6 and high.tolist() == [0] * 6
    # four scales: a region closest at an inner scale takes the neighbour towards 224^2
    low, high = select_adjacent_scales(torch.tensor([60.0 * 60.0, 50.0 * 50.0]), [1.0, 2.0, 4.0, 6.0])
    assert list(zip(low.tolist(), high.tolist())) == [(1, 2), (2, 3)]
