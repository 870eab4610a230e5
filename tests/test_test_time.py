"""Multi-scale and flipped testing on a tiny model."""

import torch
from torchvision.ops import batched_nms

from detkit.config import load_config
from detkit.modeling.test_time import (
    Augmentation,
    FeaturePyramid,
    detect,
    flipped,
    maxout_features,
    merge_detections,
    resize_factor,
    scale_sizes,
    select_adjacent_scales,
    unflip,
)
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



# --- pyramid sizes, flip and maxout features checked against direct computations

def test_scale_sizes_keep_the_long_to_short_ratio_and_the_real_resize_factor():
    # test sizes (64, 100): the test scale keeps them, other scales keep the ratio 100 / 64
    assert scale_sizes(64, 64, 100) == (64, 100)
    assert scale_sizes(96, 64, 100) == (96, 150)
    assert scale_sizes(48, 64, 100) == (48, 75)
    # 50 x 100 to short side 100: x2; 50 x 200 capped at 300 on the long side: x1.5 (75 x 300)
    assert resize_factor(50, 100, 100, 1000) == 2.0
    assert resize_factor(50, 200, 100, 300) == 1.5
    assert resize_factor(100, 200, 1, 0) == 0.01  # short side 1: (1, 2)
    assert resize_factor(40, 70, 0, 0) == 1.0  # min_size 0: no resize


def test_flip_testing_is_the_nms_of_the_image_and_its_mirrored_detections():
    """Flip-only testing at the test scale: the detections of the image and those of its horizontal mirror
    (boxes mirrored back by hand, x -> W - x), merged by per-class NMS; the config's test keys reach it."""
    model = tiny_model().eval()
    cfg = load_config(None, ["test.flip=true"])
    augmentation = Augmentation.from_config(cfg)
    assert augmentation == Augmentation(scales=(), flip=True, mode="union")
    assert Augmentation.from_config(load_config(None, ["test.scales=[48,96]", "test.multiscale_mode=maxout"])) == (
        Augmentation(scales=(48, 96), flip=False, mode="maxout")
    )
    image = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    mirror = image[:, :, torch.arange(95, -1, -1)]
    with torch.no_grad():
        a = model([image])[0]
        b = model([mirror])[0]
        out = augmentation(model, [image])[0]
    x1, y1, x2, y2 = b["boxes"].unbind(1)
    b_back = torch.stack([96 - x2, y1, 96 - x1, y2], dim=1)
    boxes, scores = torch.cat([a["boxes"], b_back]), torch.cat([a["scores"], b["scores"]])
    labels = torch.cat([a["labels"], b["labels"]])
    keep = batched_nms(boxes, scores, labels, model.roi_heads.nms_thresh)[: model.roi_heads.detections_per_image]
    assert len(a["boxes"]) >= 5 and not torch.allclose(a["scores"][:5], b["scores"][:5])  # the mirror differs
    assert torch.equal(out["labels"], labels[keep])
    assert torch.allclose(out["scores"], scores[keep])
    assert torch.allclose(out["boxes"], boxes[keep], atol=1e-4)


def test_maxout_features_are_the_max_over_each_regions_two_scales():
    """Scales 128 (the test scale here), 256, 384 of a 128 x 192 image: factors 1, 2, 3. A 120 x 120 region
    (area 14400) is closest to 224^2 at x2 (57600, above it): scales (0, 1); a 40 x 40 region (1600) at x3
    (14400, still below): scales (1, 2). Each region's feature must be the element-wise max of its features
    computed directly at its two scales (preprocess, backbone, pooling of the scaled box, with the global
    context of that scale's image)."""
    model = tiny_model(["model.roi_heads.global_context=true"]).eval()
    pre = model.preprocessor
    pre.min_size_test, pre.max_size_test = 128, 200
    image = torch.randint(0, 256, (3, 128, 192), dtype=torch.uint8, generator=torch.Generator().manual_seed(6))
    boxes = torch.tensor([[30.0, 4.0, 150.0, 124.0], [100.0, 50.0, 140.0, 90.0]])
    scales = [128, 256, 384]
    direct = []
    with torch.no_grad():
        for scale, size in zip(scales, [(128, 192), (256, 384), (384, 576)]):
            batch, sizes, _ = pre([image], min_size=scale, max_size=scale * 200 // 128)
            assert sizes == [size]
            direct.append(model.roi_heads.box_features(model.backbone(batch), [boxes * scale / 128], sizes))
        pyramid = FeaturePyramid(model, image, scales)
        assert pyramid.factors == [1.0, 2.0, 3.0]
        # seeded with the test scale's map, as detect_maxout does with the RPN's
        batch, sizes, _ = pre([image])
        pyramid.seed(128, 200, model.backbone(batch), sizes[0])
        features = maxout_features(model, pyramid, boxes)
        for i, size in enumerate([(128, 192), (256, 384), (384, 576)]):
            assert pyramid.level(i)[1] == size
    low, high = select_adjacent_scales(boxes[:, 2:].sub(boxes[:, :2]).prod(1), [1.0, 2.0, 3.0])
    assert low.tolist() == [0, 1] and high.tolist() == [1, 2]
    expected = torch.stack([torch.maximum(direct[0][0], direct[1][0]), torch.maximum(direct[1][1], direct[2][1])])
    assert not torch.allclose(direct[0], direct[1]) and not torch.allclose(direct[1], direct[2])
    assert torch.allclose(features, expected, atol=1e-5)
