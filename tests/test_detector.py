"""Whole-model checks on a tiny ResNet-18 C4 detector (CPU, seconds)."""

import pytest
import torch
import torchvision

from detkit.modeling.detector import ImagePreprocessor
from tests.conftest import tiny_model


def batch():
    images = [torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8), torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8)]
    targets = [
        {"boxes": torch.tensor([[5.0, 6.0, 40.0, 50.0], [30.0, 10.0, 70.0, 30.0]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # image without objects
    ]
    return images, targets


def test_train_step_reduces_loss_and_keeps_targets():
    for head in ["res5", "fc"]:
        model = tiny_model([f"model.roi_heads.head={head}", "model.roi_heads.pooler_resolution=8"]).train()
        images, targets = batch()
        before = [dict(t) for t in targets]
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
        totals = []
        for _ in range(4):
            torch.manual_seed(1)
            losses = model(images, targets)
            assert set(losses) == {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box"}
            total = sum(losses.values())
            assert torch.isfinite(total)
            opt.zero_grad()
            total.backward()
            opt.step()
            totals.append(total.item())
        assert totals[-1] < totals[0], (head, totals)
        for t, b in zip(targets, before):
            assert t["boxes"] is b["boxes"] and t["labels"] is b["labels"]
        assert torch.equal(targets[0]["boxes"], torch.tensor([[5.0, 6.0, 40.0, 50.0], [30.0, 10.0, 70.0, 30.0]]))


def test_eval_step_outputs_in_input_pixels():
    model = tiny_model().eval()
    torch.manual_seed(0)
    images, _ = batch()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for o, im in zip(out, images):
        assert set(o) == {"boxes", "scores", "labels"}
        h, w = im.shape[-2:]
        if len(o["boxes"]):
            assert (o["boxes"][:, 2] <= w + 1e-3).all() and (o["boxes"][:, 3] <= h + 1e-3).all()
        assert o["labels"].dtype == torch.int64


def test_test_time_resize_maps_boxes_back():
    """An image twice the test size must give the same detections at twice the coordinates."""
    model = tiny_model().eval()
    small = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    large = torch.nn.functional.interpolate(small[None].float(), scale_factor=2, mode="nearest")[0]
    with torch.no_grad():
        a = model([small])[0]
        b = model([large])[0]
    assert len(a["boxes"]) >= 5 and a["boxes"].shape == b["boxes"].shape
    # bilinear halving samples the centre of each 2 x 2 block of equal pixels: the small image exactly,
    # so the boxes are twice the small image's at float precision (a 3% scale error is pixels off)
    assert torch.allclose(b["boxes"], 2 * a["boxes"], rtol=1e-5, atol=1e-3)


def test_normalisation_matches_torchvision_convention():
    """The trunk must see (rgb/255 - mean)/std, the input torchvision's ImageNet weights were trained on."""
    model = tiny_model(["model.backbone.width=64"]).eval()
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    batch_t, sizes, _ = model.preprocessor([image])
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    expected = (image.float() / 255 - mean) / std
    assert sizes == [(64, 64)]
    assert torch.allclose(batch_t[0], expected, atol=1e-5)
    # and the trunk of a torchvision ResNet given the same weights sees the same features
    ref = torchvision.models.resnet18().eval()
    ours = model
    state = {k: v for k, v in ref.state_dict().items() if not k.startswith(("fc.", "layer4."))}
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    missing = ours.backbone.load_state_dict(state, strict=False).missing_keys
    assert missing == []
    with torch.no_grad():
        feats = ours.backbone(ours.preprocessor([image])[0])
        x = expected[None]
        r = ref.layer3(ref.layer2(ref.layer1(ref.maxpool(ref.relu(ref.bn1(ref.conv1(x)))))))
    assert torch.allclose(feats, r, atol=1e-4)


def test_padding_batches_different_sizes():
    model = tiny_model().train()
    images, _ = batch()
    batch_t, sizes, _ = model.preprocessor(images)
    assert batch_t.shape == (2, 3, 64, 80) and sizes == [(64, 80), (48, 64)]


def test_channels_last_gives_the_same_detections():
    image = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = tiny_model().eval()([image])[0]
        b = tiny_model(["model.channels_last=true"]).eval()([image])[0]
    assert len(a["boxes"]) >= 5
    assert torch.allclose(a["boxes"], b["boxes"], atol=1e-3) and torch.allclose(a["scores"], b["scores"], atol=1e-4)


def test_scale_override_is_the_detector_at_those_test_sizes():
    """`inference(min_size=, max_size=)` (multi-scale testing) must give what the detector gives with those
    test sizes: a 128 x 192 image at (128, 200) is not resized, at the configured (64, 100) it would be."""
    model = tiny_model().eval()  # min_size_test 64, max_size_test 100
    image = torch.randint(0, 256, (3, 128, 192), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        override = model.inference([image], min_size=128, max_size=200)[0]
        default = model([image])[0]
        model.preprocessor.min_size_test, model.preprocessor.max_size_test = 128, 200
        direct = model([image])[0]
        # the preprocessor's own override: short side 96 capped at long side 120 -> (80, 120)
        assert model.preprocessor([image], min_size=96, max_size=120)[1] == [(80, 120)]
    assert len(direct["boxes"]) >= 5 and not torch.allclose(direct["scores"][:5], default["scores"][:5])
    assert torch.equal(override["labels"], direct["labels"])
    assert torch.equal(override["scores"], direct["scores"]) and torch.equal(override["boxes"], direct["boxes"])


def test_test_size_zero_keeps_the_input_size_and_other_sizes_resize():
    model = tiny_model().eval()
    image = torch.randint(0, 256, (3, 50, 100), dtype=torch.uint8)
    assert model.preprocessor([image], min_size=0, max_size=0)[1] == [(50, 100)]
    assert model.preprocessor([image], min_size=1, max_size=0)[1] == [(1, 2)]
    assert model.train().preprocessor([image])[1] == [(50, 100)]  # training inputs come resized
    # a float64 image of the same pixels gives the same float32 batch
    as_double = model.preprocessor([image.double()])[0]
    assert as_double.dtype == torch.float32 and torch.equal(as_double, model.preprocessor([image])[0])


def test_bad_inputs_raise_clear_errors():
    model = tiny_model()
    for shape in [(1, 20, 30), (3, 20, 30, 1)]:
        with pytest.raises(ValueError, match=rf"^image 0 must be a \(3, H, W\) RGB tensor, got shape \({shape[0]}, 20, 30"):
            model.eval()([torch.zeros(shape, dtype=torch.uint8)])
    with pytest.raises(ValueError, match="^FasterRCNN needs targets in training mode$"):
        model.train()([torch.zeros(3, 20, 30, dtype=torch.uint8)])


def test_mapped_boxes_are_clipped_on_every_side():
    """`clip_mapped_boxes`: a 50 x 100 resized image of a 100 x 150 input (x * 1.5, y * 2); boxes past the right
    and bottom edges are cut there."""
    pre = ImagePreprocessor(pixel_mean=[0.0] * 3, pixel_std=[1.0] * 3, min_size_test=0, max_size_test=0,
                            clip_mapped_boxes=True)
    det = {"boxes": torch.tensor([[90.0, 10.0, 120.0, 40.0], [10.0, 30.0, 20.0, 70.0]]),
           "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([1, 2])}
    out = pre.postprocess([det], [(50, 100)], [(100, 150)])[0]
    assert out["boxes"].tolist() == [[135.0, 20.0, 150.0, 80.0], [15.0, 60.0, 30.0, 100.0]]
