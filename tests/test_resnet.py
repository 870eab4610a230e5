"""ResNet backbone: torchvision as the independent reference for sizes, names and outputs."""

import math
import random
import urllib.error

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models._api import WeightsEnum
from torch.nn import functional as F
from torchvision.ops import FrozenBatchNorm2d

from detkit.errors import UserError
from tests.conftest import randomise_frozen_bn
from detkit.modeling.backbone.resnet import (
    PreActBasicBlock,
    PreActBottleneck,
    ResNet,
    build_resnet_c4,
    freeze,
    imagenet_weights_path,
    load_resnet_weights,
)


def _torchvision_resnet(depth: int, seed: int = 0) -> nn.Module:
    """A torchvision ResNet in eval mode with random, non-trivial BN statistics and affine parameters."""
    torch.manual_seed(seed)
    model = torchvision.models.get_model(f"resnet{depth}", weights=None)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.0)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(7)
    return model.eval()


def _torchvision_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(after layer3, after layer4) of a torchvision ResNet."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    c4 = model.layer3(model.layer2(model.layer1(x)))
    return c4, model.layer4(c4)


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_sizes_and_names_match_torchvision(depth):
    reference = torchvision.models.get_model(f"resnet{depth}", weights=None)
    expected = sum(p.numel() for n, p in reference.named_parameters() if not n.startswith("fc."))
    model = ResNet(depth=depth, norm="bn")  # bn: the affine parameters are nn.Parameters, as in torchvision
    assert _num_params(model) == expected
    assert set(model.state_dict()) == {k for k in reference.state_dict() if not k.startswith("fc.")}


def test_stage_channels_and_width():
    assert ResNet(depth=18).stage_channels == [64, 128, 256, 512]
    assert ResNet(depth=50).stage_channels == [256, 512, 1024, 2048]
    assert ResNet(depth=50, width=32).stage_channels == [128, 256, 512, 1024]


def test_bad_arguments_are_user_errors():
    with pytest.raises(UserError, match="18, 34, 50, 101, 152"):
        ResNet(depth=42)
    with pytest.raises(UserError, match="frozen_bn, bn, gn"):
        ResNet(depth=18, norm="syncbn")
    with pytest.raises(UserError, match="width"):
        ResNet(depth=18, norm="gn", width=48)
    with pytest.raises(UserError, match="freeze_at"):
        freeze(ResNet(depth=18), 6)


@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_file_gives_torchvision_features(depth, tmp_path):
    reference = _torchvision_resnet(depth)
    path = tmp_path / f"r{depth}.pth"
    torch.save(reference.state_dict(), path)
    trunk, res5 = build_resnet_c4(depth=depth, weights=str(path), norm="frozen_bn", freeze_at=0)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        c4_ref, c5_ref = _torchvision_features(reference, x)
        c4 = trunk(x)
        torch.testing.assert_close(c4, c4_ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(res5(c4), c5_ref, atol=1e-5, rtol=0)


def test_wrapped_state_dicts_and_bn_statistics(tmp_path):
    reference = _torchvision_resnet(18)
    for key in ("model", "state_dict"):
        path = tmp_path / f"{key}.pth"
        torch.save({key: reference.state_dict(), "iteration": torch.tensor(3)}, path)
        model = ResNet(depth=18, norm="bn")
        load_resnet_weights(model, str(path), depth=18)
        assert torch.equal(model.layer2[0].bn1.running_var, reference.layer2[0].bn1.running_var)
        assert int(model.layer2[0].bn1.num_batches_tracked) == 7


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """An empty torch hub dir; any download attempt fails as if offline."""

    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    return tmp_path / "hub"


def test_imagenet_weights_come_from_the_hub_cache(hub_dir):
    path, url = imagenet_weights_path(18)
    # the file name torchvision's own download would use for IMAGENET1K_V1
    assert path == hub_dir / "checkpoints" / "resnet18-f37072fd.pth"
    assert url == torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    reference = _torchvision_resnet(18)
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    model = ResNet(depth=18).eval()
    load_resnet_weights(model, "imagenet", depth=18)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _torchvision_features(reference, x)[1], atol=1e-5, rtol=0)


def test_imagenet_weights_offline_names_path_and_url(hub_dir):
    path, url = imagenet_weights_path(50)
    with pytest.raises(UserError) as info:
        load_resnet_weights(ResNet(depth=50), "imagenet", depth=50)
    message = str(info.value)
    assert str(path) in message and url in message and "\n" not in message
    assert "(URLError: <urlopen error no network in tests>)" in message  # the reason, first line only


def test_imagenet_download_failure_without_text_names_its_type(hub_dir, monkeypatch):
    def reset(self, *args, **kwargs):
        raise ConnectionResetError()

    monkeypatch.setattr(WeightsEnum, "get_state_dict", reset)
    with pytest.raises(UserError, match=r"the download failed \(ConnectionResetError\): fetch"):
        load_resnet_weights(ResNet(depth=18), "imagenet", depth=18)


def test_freeze_at_is_checked_before_any_download(hub_dir):
    with pytest.raises(UserError, match="freeze_at"):
        build_resnet_c4(depth=18, weights="imagenet", freeze_at=6)


def test_imagenet_weights_need_the_standard_layout():
    for model in (ResNet(depth=18, preact=True), ResNet(depth=18, width=32), ResNet(depth=18, norm="gn")):
        with pytest.raises(UserError, match="null"):
            load_resnet_weights(model, "imagenet", depth=18)


def test_bad_weight_files_are_user_errors(tmp_path):
    model = ResNet(depth=18)
    with pytest.raises(UserError, match="not found"):
        load_resnet_weights(model, str(tmp_path / "nope.pth"), depth=18)

    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(bytes(random.Random(0).randrange(256) for _ in range(4096)))
    with pytest.raises(UserError, match="corrupt.pth"):
        load_resnet_weights(model, str(corrupt), depth=18)

    full = tmp_path / "full.pth"
    torch.save(_torchvision_resnet(18).state_dict(), full)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated.pth"):
        load_resnet_weights(model, str(truncated), depth=18)

    not_a_state_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_a_state_dict)
    with pytest.raises(UserError, match="does not hold a state_dict"):
        load_resnet_weights(model, str(not_a_state_dict), depth=18)

    with pytest.raises(UserError, match=r"full.pth is not a ResNet-50 .*missing: .*conv3") as info:
        load_resnet_weights(ResNet(depth=50), str(full), depth=50)
    assert "shape mismatch" in str(info.value)

    r34 = tmp_path / "r34.pth"
    torch.save(ResNet(depth=34).state_dict(), r34)
    with pytest.raises(UserError, match=r"unexpected: layer1.2"):
        load_resnet_weights(model, str(r34), depth=18)


def test_groupnorm_trains_and_rejects_batchnorm_weights(tmp_path):
    model = ResNet(depth=18, norm="gn", width=32)
    assert isinstance(model.layer3[1].bn2, nn.GroupNorm) and model.layer3[1].bn2.num_groups == 32
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert model.conv1.weight.grad is not None and model.bn1.weight.grad is not None

    own = tmp_path / "gn.pth"
    torch.save(model.state_dict(), own)
    load_resnet_weights(ResNet(depth=18, norm="gn", width=32), str(own), depth=18)

    bn = tmp_path / "bn.pth"
    torch.save(torchvision.models.resnet18().state_dict(), bn)
    with pytest.raises(UserError, match="BatchNorm weights"):
        load_resnet_weights(ResNet(depth=18, norm="gn"), str(bn), depth=18)


def test_msra_init_uses_fan_in():
    model = ResNet(depth=50, norm="bn")
    conv = model.layer4[0].conv1  # 1x1, 1024 -> 512: fan_in 1024, fan_out 512 (torchvision's choice)
    assert conv.weight.numel() == 512 * 1024
    std = conv.weight.std().item()
    assert std == pytest.approx(math.sqrt(2 / 1024), rel=0.02)
    assert abs(conv.weight.mean().item()) < 1e-3
    big = model.layer4[0].conv2  # 3x3, 512 -> 512
    assert big.weight.std().item() == pytest.approx(math.sqrt(2 / (512 * 9)), rel=0.02)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)  # no zero-init of the last norm


@pytest.mark.parametrize("freeze_at", [0, 1, 2, 3, 4, 5])
def test_freeze_at(freeze_at):
    model = ResNet(depth=18, norm="bn")
    freeze(model, freeze_at)
    frozen = (["conv1", "bn1"] if freeze_at >= 1 else []) + [f"layer{i}" for i in range(1, freeze_at)]
    for name in ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]:
        module = getattr(model, name)
        assert all(p.requires_grad == (name not in frozen) for p in module.parameters()), name
        norms = [m for m in module.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
        assert all(isinstance(m, FrozenBatchNorm2d) == (name in frozen) for m in norms), name


def test_frozen_stages_keep_bn_statistics_in_train_mode():
    torch.manual_seed(0)
    model = ResNet(depth=18, norm="bn")
    freeze(model, 2)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model(torch.randn(2, 3, 64, 64) * 3 + 1)
    after = model.state_dict()
    assert set(before) == set(after)
    for key in before:
        if key.endswith(("running_mean", "running_var")):
            changed = not torch.equal(before[key], after[key])
            assert changed == key.startswith(("layer2", "layer3", "layer4")), key
    assert isinstance(model.layer2[0].bn1, nn.BatchNorm2d) and model.layer2[0].bn1.training


def test_frozen_bn_ignores_train_mode():
    model = ResNet(depth=18)  # frozen_bn
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out_train = model.train()(x)
        out_eval = model.eval()(x)
    assert torch.equal(out_train, out_eval)
    assert not any(p for p in model.buffers() if p.requires_grad)


def test_loading_after_freeze_with_bn(tmp_path):
    path = tmp_path / "r18.pth"
    reference = _torchvision_resnet(18)
    torch.save(reference.state_dict(), path)
    model = ResNet(depth=18, norm="bn")
    freeze(model, 2)
    load_resnet_weights(model, str(path), depth=18)
    assert torch.equal(model.layer1[0].bn1.running_mean, reference.layer1[0].bn1.running_mean)


@pytest.mark.parametrize(("depth", "norm", "width"), [(18, "bn", 16), (50, "gn", 32)])
def test_preact_forward_and_backward(depth, norm, width):
    model = ResNet(depth=depth, norm=norm, preact=True, width=width).train()
    assert type(model.layer2[0]).__name__.startswith("PreAct")
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, model.stage_channels[3], 2, 2)
    assert model.stage_channels[3] == width * 8 * (1 if depth < 50 else 4)
    assert torch.all(out >= 0)  # ends with the final norm + ReLU
    out.mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_preact_c4_split():
    trunk, res5 = build_resnet_c4(depth=18, weights=None, norm="bn", freeze_at=0, preact=True, width=16)
    c4 = trunk(torch.randn(1, 3, 64, 64))
    assert c4.shape == (1, 64, 4, 4) and trunk.out_channels == 64
    assert res5(torch.randn(2, 64, 14, 14)).shape == (2, 128, 7, 7)
    assert any(k.startswith("post_norm.") for k in trunk.state_dict())


@pytest.mark.parametrize(("depth", "c4", "c5"), [(18, 256, 512), (50, 1024, 2048)])
def test_c4_split_strides_and_channels(depth, c4, c5):
    trunk, res5 = build_resnet_c4(depth=depth, weights=None, norm="frozen_bn", freeze_at=2, preact=False, width=64)
    assert trunk.out_channels == c4 and res5.out_channels == c5
    with torch.no_grad():
        assert trunk(torch.randn(1, 3, 64, 64)).shape == (1, c4, 4, 4)  # stride 16
        assert res5(torch.randn(2, c4, 14, 14)).shape == (2, c5, 7, 7)  # per-region, first block stride 2
    assert not any(p.requires_grad for p in trunk.layer1.parameters())
    assert all(p.requires_grad for p in trunk.layer2.parameters())
    assert any(k.startswith("layer3.") for k in trunk.state_dict())
    assert all(k.startswith("layer4.") for k in res5.state_dict())


def _preact_by_hand(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """He et al. (ECCV 2016): x' = x + F(relu(bn(x))) with each conv preceded by bn + relu; a projection
    shortcut reads the pre-activated input. Written with F.conv2d and the FrozenBN affine map."""

    def bn_relu(bn, t):
        scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
        return F.relu(t * scale[:, None, None] + (bn.bias - bn.running_mean * scale)[:, None, None])

    convs = [block.conv1, block.conv2] + ([block.conv3] if hasattr(block, "conv3") else [])
    norms = [block.bn1, block.bn2] + ([block.bn3] if hasattr(block, "bn3") else [])
    act = bn_relu(norms[0], x)
    out = act
    for i, (conv, bn) in enumerate(zip(convs, norms)):
        out = F.conv2d(out if i == 0 else bn_relu(bn, out), conv.weight, stride=conv.stride, padding=conv.padding)
    if block.downsample is None:
        return out + x
    return out + F.conv2d(act, block.downsample[0].weight, stride=block.downsample[0].stride)


@pytest.mark.parametrize(
    ("block", "in_channels", "planes", "stride", "projected"),
    [
        (PreActBasicBlock, 8, 8, 1, False),
        (PreActBasicBlock, 8, 16, 1, True),  # a channel change alone needs the projection too
        (PreActBasicBlock, 8, 16, 2, True),
        (PreActBottleneck, 32, 8, 1, False),
        (PreActBottleneck, 8, 8, 1, True),
        (PreActBottleneck, 16, 8, 2, True),
    ],
)
def test_preact_blocks_by_hand(block, in_channels, planes, stride, projected):
    torch.manual_seed(0)
    unit = block(in_channels=in_channels, planes=planes, stride=stride, norm="frozen_bn").eval()
    randomise_frozen_bn(unit)
    assert all(isinstance(m, FrozenBatchNorm2d) for m in (unit.bn1, unit.bn2, getattr(unit, "bn3", unit.bn1)))
    assert (unit.downsample is not None) == projected
    x = torch.randn(2, in_channels, 10, 10)
    with torch.no_grad():
        out = unit(x)
        assert out.shape == (2, planes * block.expansion, 10 // stride, 10 // stride)
        torch.testing.assert_close(out, _preact_by_hand(unit, x), rtol=1e-5, atol=1e-5)
    if block is PreActBottleneck and stride == 2:  # torchvision's layout by default: the 3x3 strides
        assert (unit.conv1.stride, unit.conv2.stride) == ((1, 1), (2, 2))


def test_preact_resnet_strides_and_projections():
    for stride_in_1x1 in (False, True):
        net = ResNet(depth=50, width=8, preact=True, stride_in_1x1=stride_in_1x1)
        for stage in ("layer2", "layer3", "layer4"):
            first = getattr(net, stage)[0]
            assert (first.conv1.stride, first.conv2.stride) == (((2, 2), (1, 1)) if stride_in_1x1 else ((1, 1), (2, 2)))
            assert all(b.conv1.stride == b.conv2.stride == (1, 1) for b in getattr(net, stage)[1:])
        # a projection (a bare 1x1 conv) in the first unit of each stage only
        assert sorted(k for k in net.state_dict() if ".downsample." in k) == [
            f"layer{i}.0.downsample.0.weight" for i in range(1, 5)
        ]
        assert net(torch.zeros(1, 3, 64, 64)).shape == (1, 256, 2, 2)
