import torch
from torchvision.ops import FrozenBatchNorm2d

from detkit.modeling.backbone.resnet import ResNet
from detkit.modeling.fold_bn import fold_frozen_bn
from tests.conftest import randomise_frozen_bn, tiny_model


def test_folding_bn_keeps_outputs():
    for depth, head in [(18, "res5"), (50, "fc")]:
        model = tiny_model([f"model.backbone.depth={depth}", "model.backbone.norm=frozen_bn", f"model.roi_heads.head={head}",
                            "model.roi_heads.pooler_resolution=8"]).eval()
        randomise_frozen_bn(model)
        image = torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8)
        with torch.no_grad():
            batch, _, _ = model.preprocessor([image])
            features = model.backbone(batch)
            before = model([image])[0]
            folded = fold_frozen_bn(model)
            assert folded > 0 and not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
            after_features = model.backbone(batch)
            after = model([image])[0]
        # relative to the feature scale (random weights without normalisation give values in the 1e3s)
        assert (features - after_features).abs().max() <= 1e-4 * features.abs().max()
        assert torch.allclose(before["boxes"], after["boxes"], atol=1e-3)
        assert torch.allclose(before["scores"], after["scores"], atol=1e-4)
        assert torch.equal(before["labels"], after["labels"])


def test_preact_and_trainable_bn_are_not_folded():
    model = tiny_model(["model.backbone.preact=true", "model.backbone.norm=bn"]).eval()
    assert fold_frozen_bn(model) == 0


def test_fold_keeps_every_convolution_setting_and_its_bias():
    # a biased, strided, padded, dilated, grouped convolution: what a ResNet conv never is
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2, bias=True)
    bn = FrozenBatchNorm2d(6, eps=0.1)
    randomise_frozen_bn(torch.nn.Sequential(bn), seed=1)
    model = torch.nn.Sequential(conv, bn, torch.nn.ReLU())
    x = torch.randn(2, 4, 11, 13)
    with torch.no_grad():
        expected = model(x)
        assert fold_frozen_bn(model) == 1
        got = model(x)
    fused = model[0]
    assert isinstance(model[1], torch.nn.Identity) and fused.bias is not None
    assert (fused.stride, fused.padding, fused.dilation, fused.groups) == ((2, 2), (2, 2), (2, 2), 2)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    # a norm after a non-linearity, or a convolution followed by something else, is not a foldable pair
    after_relu = torch.nn.Sequential(torch.nn.Conv2d(4, 6, 1), torch.nn.ReLU(), FrozenBatchNorm2d(6))
    assert fold_frozen_bn(after_relu) == 0 and isinstance(after_relu[2], FrozenBatchNorm2d)


def test_fold_counts_every_pair_of_a_resnet():
    # ResNet-18: stem 1 + 8 blocks x 2 + 3 projection shortcuts; ResNet-50: 1 + 16 x 3 + 4
    assert fold_frozen_bn(ResNet(depth=18)) == 20
    assert fold_frozen_bn(ResNet(depth=50, width=8)) == 53


def test_preact_units_keep_their_frozen_bn_and_the_stem_folds():
    # in a pre-activation unit bn1 normalises conv1's input: folding it into conv1 would be wrong
    model = ResNet(depth=18, norm="frozen_bn", preact=True, width=8).eval()
    randomise_frozen_bn(model)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
        assert fold_frozen_bn(model) == 1  # conv1 -> bn1 of the stem only
        assert (model(x) - expected).abs().max() <= 1e-5 * expected.abs().max()  # un-normalised: values in the 100s
    assert isinstance(model.layer1[0].bn1, FrozenBatchNorm2d) and isinstance(model.post_norm, FrozenBatchNorm2d)
