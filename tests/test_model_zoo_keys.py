"""The config keys detectron2's and MSRA's models need, each alone: the ResNet layout, the input convention,
exact anchors, the RPN box coder, empty-box handling, the test-time resize and the mapping back."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from detkit.config import load_config
from detkit.data.transforms import resize_pixels_pil, resize_shortest_edge_size, resize_shortest_edge_size_d2
from detkit.errors import UserError
from detkit.modeling.backbone.resnet import Bottleneck, ResNet, build_resnet_c4
from detkit.modeling.box_coder import BoxCoder
from detkit.modeling.build import build_model
from detkit.modeling.detector import ImagePreprocessor
from detkit.modeling.rpn import RPN, AnchorGenerator

# --------------------------------------------------------------------------------------------------
# ResNet: stride on the first 1x1 conv


def test_stride_in_1x1_moves_the_stride_and_keeps_the_shapes():
    v15 = Bottleneck(in_channels=64, planes=32, stride=2, norm="frozen_bn")
    msra = Bottleneck(in_channels=64, planes=32, stride=2, norm="frozen_bn", stride_in_1x1=True)
    assert (v15.conv1.stride, v15.conv2.stride) == ((1, 1), (2, 2))
    assert (msra.conv1.stride, msra.conv2.stride) == ((2, 2), (1, 1))
    assert msra.downsample[0].stride == (2, 2)
    msra.load_state_dict(v15.state_dict())  # same tensors, another function of them
    x = torch.randn(1, 64, 16, 16, generator=torch.Generator().manual_seed(0))
    a, b = v15(x), msra(x)
    assert a.shape == b.shape == (1, 128, 8, 8)
    assert not torch.allclose(a, b, atol=1e-3)


def test_stride_in_1x1_by_hand():
    """The MSRA block computes conv3(relu(conv2(relu(conv1 with stride 2)))) + shortcut: checked with F.conv2d."""
    torch.manual_seed(0)
    block = Bottleneck(in_channels=16, planes=8, stride=2, norm="frozen_bn", stride_in_1x1=True)
    x = torch.randn(1, 16, 10, 10)
    f = torch.nn.functional
    out = f.relu(f.conv2d(x, block.conv1.weight, stride=2))
    out = f.relu(f.conv2d(out, block.conv2.weight, padding=1))
    out = f.conv2d(out, block.conv3.weight)
    expected = f.relu(out + f.conv2d(x, block.downsample[0].weight, stride=2))
    torch.testing.assert_close(block(x), expected)


def test_every_downsampling_block_of_the_resnet_follows_the_key():
    net = ResNet(depth=50, width=8, stride_in_1x1=True)
    for stage in ("layer2", "layer3", "layer4"):
        first = getattr(net, stage)[0]
        assert first.conv1.stride == (2, 2) and first.conv2.stride == (1, 1)
    assert net.layer1[0].conv1.stride == (1, 1)  # res2 does not downsample
    assert all(b.conv1.stride == (1, 1) for b in net.layer3[1:])
    trunk, res5 = build_resnet_c4(depth=50, weights=None, width=8, stride_in_1x1=True)
    assert res5.layer4[0].conv1.stride == (2, 2)  # per region: 14x14 -> 7x7 on the 1x1
    assert trunk(torch.zeros(1, 3, 64, 64)).shape == (1, 128, 4, 4)
    assert res5(torch.zeros(2, 128, 14, 14)).shape == (2, 256, 7, 7)


def test_stride_in_1x1_is_refused_where_it_means_nothing():
    with pytest.raises(UserError, match="stride_in_1x1=true needs bottleneck blocks"):
        ResNet(depth=18, stride_in_1x1=True)
    net = ResNet(depth=50, width=64, stride_in_1x1=True)
    from detkit.modeling.backbone.resnet import load_resnet_weights

    with pytest.raises(UserError, match="torchvision's ImageNet weights stride the 3x3 conv.*stride_in_1x1=false"):
        load_resnet_weights(net, "imagenet", depth=50)


# --------------------------------------------------------------------------------------------------
# Input convention


def test_bgr_and_pixel_range_normalise_like_detectron2():
    pre = ImagePreprocessor(
        pixel_mean=[103.530, 116.280, 123.675], pixel_std=[1.0, 2.0, 4.0], min_size_test=0, max_size_test=0,
        input_format="BGR", pixel_range=255.0, size_divisibility=0,
    )
    rgb = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    batch, sizes, _ = pre.eval()([rgb])
    bgr = rgb.flip(0).float()
    expected = (bgr - torch.tensor([103.530, 116.280, 123.675]).view(3, 1, 1)) / torch.tensor([1.0, 2.0, 4.0]).view(3, 1, 1)
    assert torch.equal(batch[0], expected)
    assert sizes == [(5, 7)] and batch.shape == (1, 3, 5, 7)  # size_divisibility 0: no padding


def test_default_normalisation_is_unchanged():
    """pixel_range 1.0 keeps today's numbers bit for bit: mean * 255, std * 255, RGB."""
    pre = ImagePreprocessor(pixel_mean=[0.485, 0.456, 0.406], pixel_std=[0.229, 0.224, 0.225], min_size_test=0, max_size_test=0)
    assert torch.equal(pre.pixel_mean, torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1) * 255.0)
    assert torch.equal(pre.pixel_std, torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) * 255.0)
    batch, _, _ = pre.eval()([torch.zeros(3, 5, 7, dtype=torch.uint8)])
    assert batch.shape == (1, 3, 16, 16)  # padded to 16 as before


def test_size_divisibility_pads_a_batch_only_to_its_largest_image():
    pre = ImagePreprocessor(pixel_mean=[0.0] * 3, pixel_std=[1.0] * 3, min_size_test=0, max_size_test=0, size_divisibility=0)
    batch, sizes, _ = pre.eval()([torch.ones(3, 5, 9), torch.ones(3, 7, 4)])
    assert batch.shape == (2, 3, 7, 9) and sizes == [(5, 9), (7, 4)]
    assert batch[0, :, 5:].abs().sum() == 0 and batch[1, :, :, 4:].abs().sum() == 0


# --------------------------------------------------------------------------------------------------
# Test-time resize


def test_pil_resize_is_pils_bilinear_on_uint8_and_differs_from_the_tensor_resize():
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    chw = torch.from_numpy(hwc.transpose(2, 0, 1).copy())
    ours = resize_pixels_pil(chw, 60, 80)
    want = np.asarray(Image.fromarray(hwc).resize((80, 60), Image.BILINEAR))
    assert ours.dtype == torch.uint8 and np.array_equal(ours.permute(1, 2, 0).numpy(), want)
    # the tensor path (no antialiasing when shrinking) is another image
    tensor = torch.nn.functional.interpolate(chw[None].float(), size=(60, 80), mode="bilinear", align_corners=False)[0]
    assert (tensor - ours.float()).abs().max() > 10
    # float input: torch bilinear on the raw values, as detectron2 does for non-uint8 arrays
    assert torch.equal(resize_pixels_pil(chw.float(), 60, 80), tensor)


def test_pil_resize_sizes_follow_detectron2s_arithmetic():
    # short side exact, long side scaled, rounded half up; then the cap rescales both
    assert resize_shortest_edge_size_d2(480, 640, 800, 1333) == (800, 1067)
    assert resize_shortest_edge_size_d2(640, 480, 800, 1333) == (1067, 800)
    assert resize_shortest_edge_size_d2(300, 1000, 800, 1333) == (400, 1333)
    assert resize_shortest_edge_size_d2(200, 301, 200, 1333) == (200, 301)
    for h, w in [(480, 640), (427, 640), (500, 333), (612, 612), (1, 5000)]:
        a = resize_shortest_edge_size_d2(h, w, 800, 1333)
        b = resize_shortest_edge_size(h, w, 800, 1333)
        assert max(abs(a[0] - b[0]), abs(a[1] - b[1])) <= 1


def test_preprocessor_resizes_pixels_first_with_pil():
    rng = np.random.default_rng(1)
    hwc = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    chw = torch.from_numpy(hwc.transpose(2, 0, 1).copy())
    pre = ImagePreprocessor(
        pixel_mean=[103.530, 116.280, 123.675], pixel_std=[1.0] * 3, min_size_test=40, max_size_test=1000,
        input_format="BGR", pixel_range=255.0, size_divisibility=0, resize="pil",
    ).eval()
    batch, sizes, _ = pre([chw])
    assert sizes == [(40, 60)]
    resized = np.asarray(Image.fromarray(hwc).resize((60, 40), Image.BILINEAR))  # (40, 60, 3) RGB
    expected = torch.from_numpy(resized[:, :, ::-1].transpose(2, 0, 1).astype(np.float32)) - torch.tensor(
        [103.530, 116.280, 123.675]
    ).view(3, 1, 1)
    assert torch.equal(batch[0], expected)


def test_clip_mapped_boxes_clips_to_the_input_image_and_drops_empty_boxes():
    kw = dict(pixel_mean=[0.0] * 3, pixel_std=[1.0] * 3, min_size_test=0, max_size_test=0)
    det = {
        "boxes": torch.tensor([[10.0, 10.0, 100.0, 50.0], [-5.0, 0.0, 20.0, 60.0], [99.0, 5.0, 99.0, 20.0]]),
        "scores": torch.tensor([0.9, 0.8, 0.7]),
        "labels": torch.tensor([1, 2, 3]),
    }
    sizes, original = [(50, 100)], [(100, 150)]  # resized 50x100 -> input 100x150: x * 1.5, y * 2
    plain = ImagePreprocessor(**kw).postprocess([det], sizes, original)[0]
    assert plain["boxes"].tolist()[1] == [-7.5, 0.0, 30.0, 120.0] and len(plain["boxes"]) == 3
    clipped = ImagePreprocessor(**kw, clip_mapped_boxes=True).postprocess([det], sizes, original)[0]
    assert clipped["boxes"].tolist() == [[15.0, 20.0, 150.0, 100.0], [0.0, 0.0, 30.0, 100.0]]
    assert clipped["scores"].tolist() == pytest.approx([0.9, 0.8]) and clipped["labels"].tolist() == [1, 2]


# --------------------------------------------------------------------------------------------------
# Anchors and the RPN box coder


def test_exact_anchors_are_detectron2s_cell_anchors():
    sizes, ratios = [32, 64, 128, 256, 512], [0.5, 1.0, 2.0]
    gen = AnchorGenerator(sizes=sizes, ratios=ratios, stride=16, round_sizes=False)
    # ratio-major here; each anchor is (-w/2, -h/2, w/2, h/2) with w = sqrt(s^2 / r), h = r * w
    for i, (r, s) in enumerate((r, s) for r in ratios for s in sizes):
        w = math.sqrt(s * s / r)
        want = torch.tensor([-w / 2, -r * w / 2, w / 2, r * w / 2], dtype=torch.float64).float()
        assert torch.equal(gen.cell_anchors[i], want), (r, s)
    assert gen.cell_anchors[0, 0].item() != round(gen.cell_anchors[0, 0].item())  # not rounded: 22.627...
    rounded = AnchorGenerator(sizes=sizes, ratios=ratios, stride=16)
    assert torch.equal(rounded.cell_anchors, rounded.cell_anchors.round())
    assert (rounded.cell_anchors - gen.cell_anchors).abs().max() <= 0.5


def test_anchor_offset_moves_the_centres():
    feature = torch.zeros(1, 1, 2, 3)
    plain = AnchorGenerator(sizes=[32], ratios=[1.0], stride=16)(feature)
    half = AnchorGenerator(sizes=[32], ratios=[1.0], stride=16, offset=0.5)(feature)
    assert torch.equal(half - plain, torch.full_like(plain, 8.0))
    centres = (plain[:, :2] + plain[:, 2:]) / 2  # (H*W, 2): x*16, y*16
    assert centres.tolist() == [[0, 0], [16, 0], [32, 0], [0, 16], [16, 16], [32, 16]]


def test_rpn_keys_reach_the_modules():
    cfg = load_config(None, ["model.rpn.bbox_reg_weights=[2, 2, 1, 1]", "model.rpn.anchor_offset=0.5",
                             "model.rpn.anchor_round=false", "model.rpn.anchor_sizes=[45]", "model.rpn.anchor_ratios=[1.0]"])
    rpn = RPN.from_config(cfg, in_channels=8)
    assert rpn.box_coder.weights == (2.0, 2.0, 1.0, 1.0)
    assert rpn.anchor_generator.offset == 0.5
    assert rpn.anchor_generator.cell_anchors.tolist() == [[-22.5, -22.5, 22.5, 22.5]]  # 45 / 2, unrounded
    boxes = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    ref = torch.tensor([[2.0, 2.0, 12.0, 12.0]])
    assert torch.allclose(rpn.box_coder.encode(boxes, ref), BoxCoder(weights=(1, 1, 1, 1)).encode(boxes, ref) * torch.tensor([2.0, 2, 1, 1]))


# --------------------------------------------------------------------------------------------------
# Detection post-processing


def test_empty_boxes_are_kept_through_nms_when_asked():
    from detkit.modeling.roi_heads import RoIHeads

    cfg = load_config("configs/shapes_r18.yaml")
    heads = {
        flag: RoIHeads.from_config(
            load_config("configs/shapes_r18.yaml", [f"model.roi_heads.drop_empty_before_nms={flag}"]),
            in_channels=16, res5=None, num_classes=2,
        )
        for flag in ("true", "false")
    }
    assert cfg.model.roi_heads.drop_empty_before_nms is True
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.02, 0.6, 0.38]])
    boxes = torch.tensor([[[5.0, 5.0, 5.0, 30.0], [0.0, 0.0, 1.0, 1.0]], [[0.0, 0.0, 1.0, 1.0], [10.0, 10.0, 20.0, 20.0]]])
    dropped = heads["true"].postprocess(probs, boxes, (40, 40), 0.5)
    kept = heads["false"].postprocess(probs, boxes, (40, 40), 0.5)
    assert dropped["scores"].tolist() == pytest.approx([0.6])  # the zero-width box of score 0.9 is gone
    assert kept["scores"].tolist() == pytest.approx([0.9, 0.6]) and kept["boxes"][0].tolist() == [5.0, 5.0, 5.0, 30.0]


def test_score_threshold_is_strict():
    from detkit.modeling.roi_heads import RoIHeads

    heads = RoIHeads.from_config(load_config("configs/shapes_r18.yaml", ["model.roi_heads.score_threshold=0.25"]),
                                 in_channels=16, res5=None, num_classes=2)
    probs = torch.tensor([[0.25, 0.5, 0.25], [0.2500001, 0.1, 0.6499999]])
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0]] * 2, [[20.0, 20.0, 30.0, 30.0]] * 2])
    out = heads.postprocess(probs, boxes, (40, 40), 0.5)
    assert sorted(out["scores"].tolist()) == pytest.approx([0.2500001, 0.5])  # 0.25 itself is not above 0.25


# --------------------------------------------------------------------------------------------------
# Config validation


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.input_format=rgb", "'model.input_format' .* must be one of RGB \\| BGR, got 'rgb'"),
        ("model.pixel_range=0", "'model.pixel_range' .* must be one of 1.0 \\| 255.0"),
        ("model.size_divisibility=-16", "'model.size_divisibility' .* must be a number >= 0"),
        ("model.rpn.anchor_offset=1.0", "'model.rpn.anchor_offset' .* must be a number in \\[0, 1\\)"),
        ("model.rpn.bbox_reg_weights=[1, 1, 1]", "'model.rpn.bbox_reg_weights' .* must be a list of 4 positive numbers"),
        ("model.rpn.bbox_reg_weights=[1, 1, 0, 1]", "must be a list of 4 positive numbers"),
        ("input.test_resize=cv2", "'input.test_resize' .* must be one of tensor \\| pil, got 'cv2'"),
        ("model.backbone.stride_in_1x1=yes please", "'model.backbone.stride_in_1x1' .* must be bool"),
    ],
)
def test_bad_values_stop_at_load(override, message):
    with pytest.raises(UserError, match=message) as info:
        load_config("configs/detectron2/faster_rcnn_R_50_C4_1x.yaml", [override])
    assert "\n" not in str(info.value)


def test_bad_values_in_a_file_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("_base_: " + str(__import__("pathlib").Path("configs/detectron2/base_rcnn_c4.yaml").resolve())
                   + "\nmodel: {input_format: YUV}\n")
    with pytest.raises(UserError, match=r"'model.input_format' in .*bad.yaml must be one of RGB \| BGR"):
        load_config(bad)


def test_new_keys_default_to_todays_model():
    cfg = load_config("configs/coco_r101.yaml", ["model.backbone.weights=null", "model.backbone.depth=50", "model.device=cpu"])
    model = build_model(cfg)
    pre = model.preprocessor
    assert (pre.input_format, pre.resize, pre.size_divisibility, pre.clip_mapped_boxes) == ("RGB", "tensor", 16, False)
    assert model.rpn.box_coder.weights == (1.0, 1.0, 1.0, 1.0) and model.rpn.anchor_generator.offset == 0.0
    assert torch.equal(model.rpn.anchor_generator.cell_anchors, model.rpn.anchor_generator.cell_anchors.round())
    assert model.roi_heads.drop_empty_before_nms is True
    assert model.backbone.layer2[0].conv2.stride == (2, 2)
