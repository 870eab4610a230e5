"""MSRA's Caffe2 ImageNet ResNets (`R-50.pkl`, `R-101.pkl` of Detectron's ImageNetPretrained/MSRA) as
detkit ResNet state_dicts, through an explicit name table.

The file is a pickle of `{blob name: numpy array}` (Detectron-1 detection files wrap it as `{"blobs": ...}`),
written by Python 2. Its names, and what each becomes (detkit's ResNet keeps torchvision's names):

    conv1_w                    conv1.weight                       stem 7x7 conv (BGR input; reversed for RGB)
    res_conv1_bn_{s,b}         bn1.{weight,bias}
    res<S>_<B>_branch2a_w      layer<S-1>.<B>.conv1.weight        1x1 reduce
    res<S>_<B>_branch2a_bn_*   layer<S-1>.<B>.bn1.*
    res<S>_<B>_branch2b_*      layer<S-1>.<B>.conv2 / bn2         3x3
    res<S>_<B>_branch2c_*      layer<S-1>.<B>.conv3 / bn3         1x1 expand
    res<S>_0_branch1_w         layer<S-1>.0.downsample.0.weight   projection shortcut
    res<S>_0_branch1_bn_*      layer<S-1>.0.downsample.1.*
    conv1_b, fc1000_{w,b}      dropped: the stem bias detectron2 also ignores, and the ImageNet classifier
    <name>_momentum            dropped: Caffe2 optimiser state beside a blob of the table

`caffe2_resnet_table(depth)` spells out every row for one depth, with its shape; a file must hold exactly
those blobs (plus the dropped ones), each of that shape.

Batch norm: these files hold BN as the affine map it is at test time, `_bn_s` (scale) and `_bn_b`
(shift), without statistics. A BN layer computes (x - mean) / sqrt(var + eps) * weight + bias, so the
layer gets weight = s, bias = b, mean = 0 and var = 1 - eps, which makes var + eps exactly 1.0 in float32
for eps = 1e-5 (checked below): the same numbers detectron2's FrozenBatchNorm2d starts from and keeps
when it loads these files (detectron2/layers/batch_norm.py).

Input convention: MSRA trained on BGR images in 0-255 minus the per-channel mean [103.53, 116.28, 123.675],
unscaled (detectron2's PIXEL_MEAN / PIXEL_STD = [1, 1, 1] for these weights). A model fed RGB
(`model.input_format`) gets conv1's input channels reversed, so either order computes the same
function; the normalisation is the config's to match (see README, "Model zoo"). These ResNets also
stride the first 1x1 conv of a downsampling block, not the 3x3 (detectron2's RESNETS.STRIDE_IN_1X1 =
True for them): the model must be built that way (`model.backbone.stride_in_1x1`), which the loader checks.
"""

import numpy as np
import torch
from torch import Tensor

from detkit.errors import UserError

# Blocks in res2..res5 per depth (ResNet paper, Table 1); only bottleneck depths were released by MSRA.
CAFFE2_STAGE_BLOCKS: dict[int, tuple[int, int, int, int]] = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
WIDTH = 64  # conv1 / res2 channels of every released model
DROPPED = ("conv1_b", "fc1000_w", "fc1000_b")
BN_EPS = 1e-5  # torchvision's and detectron2's FrozenBatchNorm2d default, and nn.BatchNorm2d's


def caffe2_resnet_table(depth: int) -> list[tuple[str, str, tuple[int, ...]]]:
    """Every (Caffe2 blob name, detkit ResNet state_dict name, shape) of an MSRA ResNet-`depth`."""
    rows: list[tuple[str, str, tuple[int, ...]]] = [
        ("conv1_w", "conv1.weight", (WIDTH, 3, 7, 7)),
        ("res_conv1_bn_s", "bn1.weight", (WIDTH,)),
        ("res_conv1_bn_b", "bn1.bias", (WIDTH,)),
    ]

    def conv_bn(c2: str, conv: str, bn: str, shape: tuple[int, ...]) -> None:
        rows.append((f"{c2}_w", f"{conv}.weight", shape))
        rows.append((f"{c2}_bn_s", f"{bn}.weight", shape[:1]))
        rows.append((f"{c2}_bn_b", f"{bn}.bias", shape[:1]))

    in_channels = WIDTH
    for i, num_blocks in enumerate(CAFFE2_STAGE_BLOCKS[depth]):
        planes = WIDTH * 2**i
        for b in range(num_blocks):
            c2, dk = f"res{i + 2}_{b}", f"layer{i + 1}.{b}"
            conv_bn(f"{c2}_branch2a", f"{dk}.conv1", f"{dk}.bn1", (planes, in_channels, 1, 1))
            conv_bn(f"{c2}_branch2b", f"{dk}.conv2", f"{dk}.bn2", (planes, planes, 3, 3))
            conv_bn(f"{c2}_branch2c", f"{dk}.conv3", f"{dk}.bn3", (4 * planes, planes, 1, 1))
            if b == 0:
                conv_bn(f"{c2}_branch1", f"{dk}.downsample.0", f"{dk}.downsample.1", (4 * planes, in_channels, 1, 1))
            in_channels = 4 * planes
    return rows


def unwrap_caffe2_blobs(data: dict) -> dict:
    """The `{name: array}` of a Caffe2 weights pickle: the file's dict, or its "blobs" entry (Detectron-1)."""
    return data["blobs"] if isinstance(data.get("blobs"), dict) else data


def looks_like_caffe2_resnet(blobs: dict) -> bool:
    """Whether a dict is named like an MSRA ImageNet ResNet (its stem and first block), not how well it fits."""
    return "conv1_w" in blobs and "res2_0_branch2a_w" in blobs


def caffe2_depth(blobs: dict) -> int | None:
    """The depth whose table the blob names fit (dropped blobs aside), or None."""
    return _depth_of({k for k in blobs if k not in DROPPED and not k.endswith("_momentum")})


def _depth_of(names: set[str]) -> int | None:
    """The depth whose table names exactly `names`, if any (to name the right depth in an error)."""
    for depth in CAFFE2_STAGE_BLOCKS:
        if {c2 for c2, _, _ in caffe2_resnet_table(depth)} == names:
            return depth
    return None


def caffe2_to_detkit(
    blobs: dict, *, depth: int, source: str, input_format: str = "BGR"
) -> tuple[dict[str, Tensor], list[tuple[str, str]]]:
    """Convert MSRA Caffe2 blobs to a detkit ResNet-`depth` state_dict for a model fed `input_format`
    ("BGR": conv1 as in the file, as detectron2 runs it; "RGB": conv1's input channels reversed).

    Returns (state_dict with float32 tensors, including BN running_mean/running_var; the (Caffe2 name,
    detkit name) pairs applied, dropped blobs as (name, "dropped")). Raises a one-line `UserError` naming
    `source` and the first offending blob for another depth, a missing or extra blob, a non-array value
    or a shape mismatch.
    """
    if depth not in CAFFE2_STAGE_BLOCKS:
        allowed = ", ".join(map(str, CAFFE2_STAGE_BLOCKS))
        raise UserError(
            f"{source} is an MSRA/Caffe2 ImageNet ResNet, released for depths {allowed} only; "
            f"model.backbone.depth is {depth}"
        )
    table = caffe2_resnet_table(depth)
    known = {c2 for c2, _, _ in table}
    dropped = [k for k in blobs if k in DROPPED or (k.endswith("_momentum") and k[: -len("_momentum")] in known)]
    present = {k for k in blobs if k not in dropped}
    if present != known:
        file_depth = _depth_of(present)
        if file_depth is not None:
            raise UserError(
                f"{source} holds an MSRA ResNet-{file_depth} but model.backbone.depth is {depth}: "
                f"set model.backbone.depth={file_depth}"
            )
        missing = [c2 for c2, _, _ in table if c2 not in present]
        extra = sorted(present - known)
        first = f"missing blob {missing[0]!r}" if missing else f"unexpected blob {extra[0]!r}"
        raise UserError(
            f"{source} is not an MSRA/Caffe2 ResNet-{depth}: {first} "
            f"({len(missing)} missing, {len(extra)} unexpected; see detkit/checkpoint/caffe2.py for the names)"
        )
    state: dict[str, Tensor] = {}
    for c2, name, shape in table:
        value = blobs[c2]
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu":
            raise UserError(f"{source}: blob {c2!r} is not a numeric array ({type(value).__name__})")
        if tuple(value.shape) != shape:
            raise UserError(f"{source}: blob {c2!r} has shape {tuple(value.shape)}, expected {shape} for {name}")
        tensor = torch.from_numpy(np.array(value, dtype=np.float32))  # a copy: writable, owned, float32
        if c2 == "conv1_w" and input_format == "RGB":
            tensor = tensor.flip(1).contiguous()  # (64, 3, 7, 7): input channels BGR -> RGB
        state[name] = tensor
        if c2.endswith("_bn_s"):
            module = name[: -len(".weight")]
            state[f"{module}.running_mean"] = torch.zeros(shape)
            state[f"{module}.running_var"] = _unit_var_minus_eps(shape)
    mapping = [(c2, name) for c2, name, _ in table] + [(k, "dropped") for k in dropped]
    return state, mapping


def _unit_var_minus_eps(shape: tuple[int, ...]) -> Tensor:
    var = torch.full(shape, 1.0) - BN_EPS  # float32
    assert bool(((var + BN_EPS) == 1.0).all()), "1 - eps + eps must be exactly 1 in float32"
    return var
