"""Multi-scale and flipped testing on a tiny model."""

import torch

from detkit.modeling.test_time import detect, flipped, merge_detections, select_adjacent_scales, unflip
from tests.conftest import tiny_model


def test_flip_maps_boxes_back_exactly():
    image = torch.randint(0, 256, (3, 40, 70), dtype=torch.uint8)
    assert torch.equal(flipped(flipped(image)), image)
    dets = {"boxes": torch.tensor([[10.0, 5.0, 30.5, 20.0]]), "scores": torch.ones(1), "labels": torch.zeros(1, dtype=torch.int64)}
    assert torch.equal(unflip(dets, 70)["boxes"], torch.tensor([[39.5, 5.0, 60.0, 20.0]]))
    assert torch.equal(unflip(unflip(dets, 70), 70)["boxes"], dets["boxes"])


def test_merge_keeps_best_of_duplicates():
    a = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}
    b = {"boxes": torch.tensor([[0.5, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]]), "scores": torch.tensor([0.8, 0.7]),
         "labels": torch.tensor([1, 1])}
    merged = merge_detections([a, b], nms_thresh=0.5, max_detections=100)
    assert merged["scores"].tolist() == [0.8999999761581421, 0.699999988079071]
    assert len(merge_detections([a, b], nms_thresh=0.5, max_detections=1)["boxes"]) == 1


def test_adjacent_scale_selection():
    # factors for short side 100 at scales 200, 400, 600: x2, x4, x6
    factors = [2.0, 4.0, 6.0]
    areas = torch.tensor([112.0 * 112.0 / 4, 56.0 * 56.0 / 4, 10.0 * 10.0, 224.0 * 224.0])
    low, high = select_adjacent_scales(areas, factors)
    # region 0 reaches 224^2 exactly at x2 -> pair (0, 1); region 1 at x4 -> neighbours (1, 2) or (0, 1)
    assert (low[0].item(), high[0].item()) == (0, 1)
    assert high[1] - low[1] == 1 and 1 in (low[1].item(), high[1].item())
    assert (low[2].item(), high[2].item()) == (1, 2)  # tiny: the two largest scales
    assert (low[3].item(), high[3].item()) == (0, 1)  # huge: the two smallest scales
    assert all(h - l == 1 for l, h in zip(low.tolist(), high.tolist()))


def test_multiscale_union_and_maxout_run_and_stay_in_image():
    model = tiny_model().eval()
    image = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8)
    single = detect(model, [image], scales=[], flip=False, mode="union")[0]
    same = detect(model, [image], scales=[64], flip=False, mode="union")[0]
    assert torch.allclose(single["boxes"], same["boxes"]) and torch.allclose(single["scores"], same["scores"])
    for mode in ["union", "maxout"]:
        out = detect(model, [image], scales=[48, 64, 96], flip=True, mode=mode)[0]
        assert set(out) == {"boxes", "scores", "labels"}
        assert len(out["boxes"]) <= model.roi_heads.detections_per_image
        if len(out["boxes"]):
            assert (out["boxes"][:, 2] <= 96 + 1e-3).all() and (out["boxes"][:, 3] <= 64 + 1e-3).all()


# --- box refinement under maxout (the paper's full system, appendix B)

def maxout(model, image, scales):
    with torch.no_grad():
        return detect(model, [image], scales=scales, flip=False, mode="maxout")[0]


def test_maxout_at_one_scale_with_refinement_is_the_single_scale_refined_detector():
    """One pyramid scale (the test scale): maxout pools every region at that scale only, so with refinement it
    must give what the single-scale detector's iterative localization gives (tested exactly in
    test_inference_geometry). The image is twice the test size, so the maxout path's mapping to original
    pixels and back is exercised (by exact factors)."""
    model = tiny_model(["model.roi_heads.box_refinement=true"]).eval()  # min_size_test 64, max_size_test 100
    image = torch.randint(0, 256, (3, 128, 192), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        single = model([image])[0]
    out = maxout(model, image, [64])
    assert len(single["boxes"]) >= 5
    assert torch.equal(out["labels"], single["labels"])
    assert torch.allclose(out["scores"], single["scores"], atol=1e-5)
    assert torch.allclose(out["boxes"], single["boxes"], atol=1e-3)


def test_refinement_changes_maxout_detections():
    model = tiny_model().eval()
    image = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    plain = maxout(model, image, [48, 64, 96])
    model.roi_heads.box_refinement = True
    refined = maxout(model, image, [48, 64, 96])
    assert len(plain["boxes"]) >= 5 and len(refined["boxes"]) >= 5
    assert len(plain["boxes"]) != len(refined["boxes"]) or not torch.allclose(plain["boxes"], refined["boxes"])


def test_maxout_refinement_with_an_identity_regressor_changes_nothing():
    """A zero regressor leaves every box where it is: the second pass pools the same boxes at the same two
    scales and scores them exactly as the first; with the same NMS threshold and voting only among identical
    boxes, refinement must return the first pass's detections."""
    model = tiny_model().eval()
    heads = model.roi_heads
    torch.nn.init.zeros_(heads.predictor.bbox_pred.weight)
    torch.nn.init.zeros_(heads.predictor.bbox_pred.bias)
    image = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    plain = maxout(model, image, [48, 64, 96])
    heads.box_refinement, heads.refine_nms_thresh, heads.vote_iou_thresh = True, heads.nms_thresh, 1.0
    refined = maxout(model, image, [48, 64, 96])
    assert len(plain["boxes"]) >= 5
    assert torch.equal(refined["labels"], plain["labels"])
    assert torch.allclose(refined["scores"], plain["scores"], atol=1e-6)
    assert torch.allclose(refined["boxes"], plain["boxes"], atol=1e-4)

