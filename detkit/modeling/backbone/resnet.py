"""ResNet 18-152 (He et al., CVPR 2016), optional pre-activation units, weight loading, freezing, C4 split.

Shape legend:
    N        images in the batch
    H, W     height and width of the normalised input batch, in pixels
    C        channels; `width` (64 in the paper) is the channel count of conv1 and of the 3x3 convs of res2
    Ci       output channels of stage i: width*2^(i-2) for basic blocks, 4*width*2^(i-2) for bottlenecks
    stem     conv1 7x7/2 + max pool 3x3/2: (N, 3, H, W) -> (N, width, H/4, W/4)
    res2     layer1, stride 1:  -> (N, C2, H/4,  W/4)
    res3     layer2, stride 2:  -> (N, C3, H/8,  W/8)
    res4     layer3, stride 2:  -> (N, C4, H/16, W/16)   end of the C4 trunk
    res5     layer4, stride 2:  -> (N, C5, H/32, W/32)   run per region in the C4 detector

Parameter and buffer names follow torchvision's ResNet (`conv1`, `bn1`, `layer1.0.conv1`,
`layer1.0.downsample.0`, ...) so that a torchvision state_dict loads as it is; the `bn*` names are kept
whatever the normalisation (frozen BN, BN or GroupNorm).

Stride placement: the paper's bottleneck strides its first 1x1 conv (the MSRA Caffe models, and
detectron2's model zoo, which starts from them); torchvision strides the 3x3 conv instead ("ResNet v1.5").
`stride_in_1x1` picks one; the default (false) is torchvision's, because its ImageNet weights were trained
that way and the same weights in the other layout would compute something else.
"""

import os
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

from detkit.checkpoint.formats import file_kind, read_caffe2_backbone
from detkit.errors import UserError

# Blocks per stage (res2..res5) for each depth (ResNet paper, Table 1).
STAGE_BLOCKS: dict[int, list[int]] = {
    18: [2, 2, 2, 2],
    34: [3, 4, 6, 3],
    50: [3, 4, 6, 3],
    101: [3, 4, 23, 3],
    152: [3, 8, 36, 3],
}
NORMS = ("frozen_bn", "bn", "gn")
# Input pixels per position of the res4 map the C4 detector reads (stem 4, res3 2, res4 2): the anchors'
# spacing, the RoI poolers' 1/scale and the padding the batch needs for whole feature positions.
C4_STRIDE = 16
GN_GROUPS = 32

# torchvision's first ImageNet weights for every depth: trained with the simple paper-era recipe
# (90 epochs of SGD, step schedule, crop + flip), unlike IMAGENET1K_V2 (long schedule, mixup, cutmix,
# label smoothing, EMA), which exists only for depths 50-152 and is not the backbone the paper used.
IMAGENET_WEIGHTS = "IMAGENET1K_V1"


def _make_norm(norm: str, channels: int) -> nn.Module:
    """A normalisation layer over (N, channels, H, W), initialised to the identity (weight 1, bias 0)."""
    if norm == "frozen_bn":
        return FrozenBatchNorm2d(channels)  # buffers: weight 1, bias 0, running mean 0, running var 1
    if norm == "bn":
        return nn.BatchNorm2d(channels)
    return nn.GroupNorm(GN_GROUPS, channels)


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def _conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs (depths 18, 34): (N, Cin, H, W) -> (N, planes, H/stride, W/stride)."""

    expansion = 1

    def __init__(self, *, in_channels: int, planes: int, stride: int, norm: str) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = _conv3x3(in_channels, planes, stride)
        self.bn1 = _make_norm(norm, planes)
        self.conv2 = _conv3x3(planes, out_channels)
        self.bn2 = _make_norm(norm, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            # projection shortcut (option B of the paper)
            self.downsample = nn.Sequential(_conv1x1(in_channels, out_channels, stride), _make_norm(norm, out_channels))

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand x4 (depths 50+): (N, Cin, H, W) -> (N, 4*planes, H/s, W/s).

    The stride sits on the 3x3 conv, or on the first 1x1 with `stride_in_1x1` (see the module docstring).
    """

    expansion = 4

    def __init__(self, *, in_channels: int, planes: int, stride: int, norm: str, stride_in_1x1: bool = False) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = _conv1x1(in_channels, planes, stride_1x1)
        self.bn1 = _make_norm(norm, planes)
        self.conv2 = _conv3x3(planes, planes, stride_3x3)
        self.bn2 = _make_norm(norm, planes)
        self.conv3 = _conv1x1(planes, out_channels)
        self.bn3 = _make_norm(norm, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(_conv1x1(in_channels, out_channels, stride), _make_norm(norm, out_channels))

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


class PreActBasicBlock(nn.Module):
    """Pre-activation basic block (He et al., ECCV 2016): `bnK` normalises the input of `convK`.

    out = x + conv2(relu(bn2(conv1(relu(bn1(x)))))), nothing after the addition. A projection
    shortcut (`downsample.0`, a strided 1x1 conv without norm) reads the pre-activated input, as in the
    paper's code, so the stage's first block normalises once for both paths.
    """

    expansion = 1

    def __init__(self, *, in_channels: int, planes: int, stride: int, norm: str) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.bn1 = _make_norm(norm, in_channels)
        self.conv1 = _conv3x3(in_channels, planes, stride)
        self.bn2 = _make_norm(norm, planes)
        self.conv2 = _conv3x3(planes, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(_conv1x1(in_channels, out_channels, stride))

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu(self.bn1(x))
        shortcut = x if self.downsample is None else self.downsample(act)
        out = self.conv1(act)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + shortcut


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck (He et al., ECCV 2016): `bnK` normalises the input of `convK`.

    out = x + conv3(relu(bn3(conv2(relu(bn2(conv1(relu(bn1(x))))))))); shortcut as in PreActBasicBlock.
    """

    expansion = 4

    def __init__(self, *, in_channels: int, planes: int, stride: int, norm: str, stride_in_1x1: bool = False) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.bn1 = _make_norm(norm, in_channels)
        self.conv1 = _conv1x1(in_channels, planes, stride_1x1)
        self.bn2 = _make_norm(norm, planes)
        self.conv2 = _conv3x3(planes, planes, stride_3x3)
        self.bn3 = _make_norm(norm, planes)
        self.conv3 = _conv1x1(planes, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(_conv1x1(in_channels, out_channels, stride))

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu(self.bn1(x))
        shortcut = x if self.downsample is None else self.downsample(act)
        out = self.conv1(act)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + shortcut


class ResNet(nn.Module):
    """ResNet trunk without the classifier: (N, 3, H, W) normalised floats -> (N, C5, H/32, W/32).

    Args:
        depth: 18, 34 (basic blocks), 50, 101 or 152 (bottlenecks).
        norm: "frozen_bn" (torchvision.ops.FrozenBatchNorm2d: ImageNet statistics as a fixed affine map,
            for fine-tuning), "bn" (nn.BatchNorm2d: batch statistics in train mode, for training from
            scratch) or "gn" (nn.GroupNorm with 32 groups; `width` must then be a multiple of 32).
        preact: pre-activation units (He et al., ECCV 2016). The stem keeps conv1 -> bn1 -> relu; the
            blocks end at the addition, so a final norm + ReLU (`post_norm`) follows layer4. No
            torchvision weights exist for this layout: it is meant for training from scratch.
        width: channels of conv1 and of res2's 3x3 convs (64 in the paper); every stage scales with it.
        stride_in_1x1: bottlenecks that downsample stride their first 1x1 conv instead of the 3x3 (the
            paper's and MSRA's layout; needed by MSRA .pkl and detectron2 weights). Bottlenecks only.

    Layers are MSRA-initialised (conv weights ~ N(0, 2/fan_in), fan_in = in_channels*kh*kw, as in
    "Delving Deep into Rectifiers"; norm weight 1, bias 0). The last norm of each residual branch is not
    zero-initialised: the paper does not do it, and with frozen BN it would switch the branch off for good.
    """

    def __init__(
        self, *, depth: int, norm: str = "frozen_bn", preact: bool = False, width: int = 64, stride_in_1x1: bool = False
    ) -> None:
        super().__init__()
        if depth not in STAGE_BLOCKS:
            allowed = ", ".join(map(str, STAGE_BLOCKS))
            raise UserError(f"model.backbone.depth must be one of {allowed}, got {depth!r}")
        if norm not in NORMS:
            raise UserError(f"model.backbone.norm must be one of {', '.join(NORMS)}, got {norm!r}")
        if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
            raise UserError(f"model.backbone.width must be a positive integer, got {width!r}")
        if norm == "gn" and width % GN_GROUPS:
            raise UserError(
                f"model.backbone.width={width} does not split into {GN_GROUPS} GroupNorm groups: "
                f"use a multiple of {GN_GROUPS} or norm=bn"
            )
        if stride_in_1x1 and depth < 50:
            raise UserError(
                f"model.backbone.stride_in_1x1=true needs bottleneck blocks (depth 50, 101 or 152), got depth {depth}"
            )
        self.depth = depth
        self.norm = norm
        self.preact = preact
        self.width = width
        self.stride_in_1x1 = stride_in_1x1
        if preact:
            block: type[nn.Module] = PreActBasicBlock if depth < 50 else PreActBottleneck
        else:
            block = BasicBlock if depth < 50 else Bottleneck

        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = _make_norm(norm, width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        self.stage_channels: list[int] = []  # output channels of layer1..layer4
        in_channels = width
        for i, num_blocks in enumerate(STAGE_BLOCKS[depth]):
            planes = width * 2**i
            blocks = []
            for j in range(num_blocks):
                stride = 2 if i > 0 and j == 0 else 1  # res2 starts after the max pool, at stride 4 already
                extra = {"stride_in_1x1": stride_in_1x1} if depth >= 50 else {}
                blocks.append(block(in_channels=in_channels, planes=planes, stride=stride, norm=norm, **extra))
                in_channels = planes * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.stage_channels.append(in_channels)
        if preact:
            self.post_norm = _make_norm(norm, in_channels)  # the activation the last unit left out
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # fan_in keeps the forward signal's variance (the paper); torchvision uses fan_out
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, FrozenBatchNorm2d)):
                with torch.no_grad():
                    m.weight.fill_(1.0)
                    m.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, 3, H, W) -> (N, width, H/4, W/4)
        x = self.layer1(x)  # (N, C2, H/4, W/4)
        x = self.layer2(x)  # (N, C3, H/8, W/8)
        x = self.layer3(x)  # (N, C4, H/16, W/16)
        x = self.layer4(x)  # (N, C5, H/32, W/32)
        if self.preact:
            x = self.relu(self.post_norm(x))
        return x


# ---------------------------------------------------------------------------------------------------
# Weights


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _read_state_dict(
    path: Path, fix: str = "re-download or re-save it", *, model_strides_1x1: bool = False, input_format: str = "RGB"
) -> dict:
    """Read a checkpoint file; return its state_dict (plain, or under "model" / "state_dict").

    A file that records `stride_in_1x1: True` (tools/convert_weights.py on an MSRA .pkl) needs a model that
    does. A file that records the channel order its conv1 reads (`input_format`) gets conv1's input channels
    reversed when the model is fed the other order (`input_format` here)."""
    if not path.exists():
        raise UserError(
            f"backbone weights file not found: {path} "
            f"(model.backbone.weights takes 'imagenet', the path of a ResNet state_dict, or null)"
        )
    if not path.is_file():
        raise UserError(f"backbone weights path is not a file: {path} (check model.backbone.weights)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated, or not a tensors-only file: all the user's to fix
        raise UserError(
            f"cannot read backbone weights file {path}: corrupt, truncated, or not a tensors-only "
            f"checkpoint ({type(e).__name__}); {fix}"
        ) from None
    if isinstance(obj, dict) and obj.get("stride_in_1x1") is True and not model_strides_1x1:
        raise UserError(
            f"{path} was converted from an MSRA/Caffe2 ResNet, which strides the first 1x1 conv of each "
            f"downsampling block: set model.backbone.stride_in_1x1=true"
        )
    file_format = obj.get("input_format") if isinstance(obj, dict) else None
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        raise UserError(
            f"backbone weights file {path} does not hold a state_dict (a dict of tensors, "
            f'plain or under "model" or "state_dict")'
        )
    if file_format in ("RGB", "BGR") and file_format != input_format and "conv1.weight" in obj:
        # (C, 3, 7, 7): RGB <-> BGR is a reversal of the input channels
        obj = {**obj, "conv1.weight": obj["conv1.weight"].flip(1)}
    return obj


def _load_checked(model: ResNet, state_dict: dict, source: str) -> None:
    """Copy `state_dict` into `model`, or raise a UserError that lists what does not fit."""
    own = model.state_dict()
    # fc.*: the ImageNet classifier, not part of the trunk; num_batches_tracked: BN bookkeeping that
    # FrozenBatchNorm2d and GroupNorm lack and that BatchNorm2d can do without.
    incoming = {
        k: v for k, v in state_dict.items() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
    }
    required = [k for k in own if not k.endswith("num_batches_tracked")]
    what = f"ResNet-{model.depth}" + (" (pre-activation)" if model.preact else "") + f" width {model.width}"
    if model.norm == "gn" and any(k.endswith("running_mean") for k in incoming):
        raise UserError(
            f"{source} holds BatchNorm weights, which norm=gn cannot use: "
            f"set model.backbone.norm to frozen_bn or bn, or model.backbone.weights to null"
        )
    missing = [k for k in required if k not in incoming]
    unexpected = [k for k in incoming if k not in own]
    mismatched = [
        f"{k} {tuple(incoming[k].shape)} vs {tuple(own[k].shape)}"
        for k in required
        if k in incoming and incoming[k].shape != own[k].shape
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            problems.append(f"{len(items)} {label}: {', '.join(items[:3])}{more}")
    if problems:
        raise UserError(f"{source} is not a {what} state_dict: {'; '.join(problems)}")
    for k in own:
        if k.endswith("num_batches_tracked") and k in state_dict:
            incoming[k] = state_dict[k]
    model.load_state_dict(incoming, strict=False)  # strict: checked above; absent num_batches_tracked keep 0


def imagenet_weights_path(depth: int) -> tuple[Path, str]:
    """(where the torch hub cache keeps torchvision's IMAGENET_WEIGHTS file for `depth`, its URL)."""
    weights = torchvision.models.get_model_weights(f"resnet{depth}")[IMAGENET_WEIGHTS]
    file_name = os.path.basename(urlparse(weights.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name, weights.url


def load_resnet_weights(model: ResNet, weights: str | None, *, depth: int, input_format: str = "RGB") -> None:
    """Load backbone weights into `model` in place; fc.* keys of the file are ignored.

    weights: None keeps the MSRA init; "imagenet" takes torchvision's IMAGENET_WEIGHTS for `depth`
    from the torch hub cache (`<torch.hub.get_dir()>/checkpoints/<file>`) or downloads it there;
    any other string is the path of a torchvision-format ResNet state_dict (plain, or under "model"
    or "state_dict") or of an MSRA/Caffe2 ImageNet .pkl (told apart by content; see
    detkit.checkpoint.caffe2), whose conv1 is matched to `input_format` (the model's channel order).
    Problems with the weights raise a one-line UserError.
    Load before `freeze`, which turns BatchNorm2d layers of frozen stages into FrozenBatchNorm2d.
    """
    if depth != model.depth:
        raise ValueError(f"load_resnet_weights: depth={depth} but the model is a ResNet-{model.depth}")
    if weights is None:
        return
    if weights == "imagenet":
        if model.preact or model.width != 64 or model.norm == "gn":
            raise UserError(
                f"ImageNet weights exist only for the standard ResNet with BatchNorm "
                f"(got preact={model.preact}, width={model.width}, norm={model.norm}): "
                f"set model.backbone.weights to null to train from scratch"
            )
        if model.stride_in_1x1:
            raise UserError(
                "torchvision's ImageNet weights stride the 3x3 conv of each downsampling block: set "
                "model.backbone.stride_in_1x1=false, or give MSRA's R-50.pkl/R-101.pkl as model.backbone.weights"
            )
        path, url = imagenet_weights_path(depth)
        if path.is_file():
            state_dict = _read_state_dict(path, fix=f"delete it and fetch {url} again")
        else:
            try:
                weights_enum = torchvision.models.get_model_weights(f"resnet{depth}")[IMAGENET_WEIGHTS]
                state_dict = weights_enum.get_state_dict(progress=True)  # downloads into the hub cache
            except Exception as e:  # offline, proxy, disk full...: the fix is the same manual download
                raise UserError(
                    f"ImageNet weights for ResNet-{depth} are not in {path} and the download failed "
                    f"({_first_line(e)}): fetch {url} and save it as {path}"
                ) from None
        if input_format == "BGR":  # torchvision's weights read RGB: (C, 3, 7, 7) input channels reversed
            state_dict = {**state_dict, "conv1.weight": state_dict["conv1.weight"].flip(1)}
        _load_checked(model, state_dict, f"ImageNet weights file {path}")
        return
    path = Path(weights).expanduser()
    if path.is_file() and file_kind(path) == "pickle":  # by content: an MSRA/Caffe2 ImageNet .pkl
        if not model.stride_in_1x1:  # MSRA weights in torchvision's layout would compute something else
            raise UserError(
                f"{path} is an MSRA/Caffe2 ResNet, trained with the stride in the first 1x1 conv of each "
                f"downsampling block: set model.backbone.stride_in_1x1=true (README, Model zoo)"
            )
        caffe2 = read_caffe2_backbone(path, depth=depth, input_format=input_format)
        _load_checked(model, caffe2.model, f"MSRA/Caffe2 weights file {path}")
        return
    state_dict = _read_state_dict(path, model_strides_1x1=model.stride_in_1x1, input_format=input_format)
    _load_checked(model, state_dict, f"backbone weights file {path}")


# ---------------------------------------------------------------------------------------------------
# Freezing


def _to_frozen_bn(module: nn.Module) -> nn.Module:
    """Return `module` with every nn.BatchNorm2d in it (itself included) replaced by FrozenBatchNorm2d."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps).to(module.running_mean.device)
        frozen.running_mean.copy_(module.running_mean)
        frozen.running_var.copy_(module.running_var)
        if module.affine:
            frozen.weight.copy_(module.weight.detach())
            frozen.bias.copy_(module.bias.detach())
        return frozen
    for name, child in module.named_children():
        setattr(module, name, _to_frozen_bn(child))
    return module


def _check_freeze_at(freeze_at: int) -> None:
    if isinstance(freeze_at, bool) or not isinstance(freeze_at, int) or not 0 <= freeze_at <= 5:
        raise UserError(f"model.backbone.freeze_at must be an integer from 0 to 5, got {freeze_at!r}")


def freeze(model: ResNet, freeze_at: int) -> None:
    """Freeze the stem and the first stages, in place (detectron2's meaning of freeze_at).

    freeze_at: 0 nothing; 1 conv1 + bn1; k >= 2 conv1, bn1 and layer1..layer(k-1) (res2..res(k));
    5 freezes everything (with preact, post_norm too).
    Frozen parameters get requires_grad=False. BatchNorm2d layers in frozen parts (norm="bn") are
    replaced by FrozenBatchNorm2d holding their current statistics, so they stay fixed whatever
    train()/eval() is called on whatever module later owns them (the C4 trunk, the detector);
    their state_dict keys stay the same except for num_batches_tracked, which the loader treats as optional.
    """
    _check_freeze_at(freeze_at)
    names = []
    if freeze_at >= 1:
        names += ["conv1", "bn1"]
    names += [f"layer{i}" for i in range(1, min(freeze_at, 5))]
    if freeze_at == 5 and model.preact:
        names.append("post_norm")
    for name in names:
        setattr(model, name, _to_frozen_bn(getattr(model, name)))
        for p in getattr(model, name).parameters():
            p.requires_grad_(False)


# ---------------------------------------------------------------------------------------------------
# The C4 split (ResNet paper, appendix A): conv1..conv4_x shared, conv5_x per region


class ResNetC4Trunk(nn.Module):
    """Stem + res2..res4: (N, 3, H, W) normalised floats -> (N, out_channels, H/16, W/16).

    Shares its modules with the ResNet it is built from (same names, so checkpoints keep torchvision's
    keys). With pre-activation units it adds a fresh norm + ReLU (`post_norm`) after layer3, because the
    RPN and the RoI pooling read this map and the last unit leaves it un-activated.
    """

    def __init__(self, resnet: ResNet) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3 = resnet.layer1, resnet.layer2, resnet.layer3
        self.preact = resnet.preact
        self.out_channels: int = resnet.stage_channels[2]
        if self.preact:
            self.post_norm = _make_norm(resnet.norm, self.out_channels)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, 3, H, W) -> (N, width, H/4, W/4)
        x = self.layer3(self.layer2(self.layer1(x)))  # -> (N, C4, H/16, W/16)
        if self.preact:
            x = self.relu(self.post_norm(x))
        return x


class ResNetRes5(nn.Module):
    """res5 (layer4, first block stride 2), run per region: (R, C4, S, S) -> (R, out_channels, S/2, S/2)."""

    def __init__(self, resnet: ResNet) -> None:
        super().__init__()
        self.layer4 = resnet.layer4
        self.preact = resnet.preact
        self.out_channels: int = resnet.stage_channels[3]
        if self.preact:
            self.post_norm = resnet.post_norm
            self.relu = resnet.relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer4(x)  # (R, C4, S, S) -> (R, C5, S/2, S/2)
        if self.preact:
            x = self.relu(self.post_norm(x))
        return x


def build_resnet_c4(
    *,
    depth: int,
    weights: str | None,
    norm: str = "frozen_bn",
    freeze_at: int = 2,
    preact: bool = False,
    width: int = 64,
    stride_in_1x1: bool = False,
    input_format: str = "RGB",
) -> tuple[nn.Module, nn.Module]:
    """Build a ResNet, load `weights` into it whole, freeze, then split it into (trunk, res5).

    trunk: ResNetC4Trunk, (N, 3, H, W) -> (N, C4, H/16, W/16); `out_channels` C4 = 1024 for depth >= 50,
    256 for 18/34 (at width 64). res5: ResNetRes5, (R, C4, S, S) -> (R, C5, S/2, S/2); C5 = 2048 or 512.
    Arguments as in ResNet, load_resnet_weights (`input_format`: the channel order the model is fed) and freeze.
    """
    _check_freeze_at(freeze_at)  # before a possible download
    resnet = ResNet(depth=depth, norm=norm, preact=preact, width=width, stride_in_1x1=stride_in_1x1)
    load_resnet_weights(resnet, weights, depth=depth, input_format=input_format)
    freeze(resnet, freeze_at)
    return ResNetC4Trunk(resnet), ResNetRes5(resnet)
