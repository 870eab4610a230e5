"""MSRA/Caffe2 ImageNet ResNets: the explicit name table on a generated file, BN as detectron2 loads it, bad files."""

import pickle

import numpy as np
import pytest
import torch

from detkit.checkpoint.caffe2 import BN_EPS, caffe2_resnet_table, caffe2_to_detkit
from detkit.checkpoint.formats import read_caffe2_backbone
from detkit.errors import UserError
from detkit.modeling.backbone.resnet import ResNet
from tests.conftest import python2_pickle


def msra_blobs(depth: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random blobs under every name of the table, plus what real files also hold (conv1_b, fc1000)."""
    rng = np.random.default_rng(seed)
    blobs = {c2: rng.standard_normal(shape, dtype=np.float32) for c2, _, shape in caffe2_resnet_table(depth)}
    blobs["conv1_b"] = np.zeros(64, np.float32)
    blobs["fc1000_w"] = rng.standard_normal((1000, 2048), dtype=np.float32)
    blobs["fc1000_b"] = np.zeros(1000, np.float32)
    return blobs


@pytest.fixture(scope="module")
def r50_file(tmp_path_factory):
    blobs = msra_blobs(50)
    path = tmp_path_factory.mktemp("msra") / "R-50.pkl"
    path.write_bytes(python2_pickle(blobs))  # as MSRA's Python 2 files are written
    return path, blobs


def test_table_rows_and_names_are_detkit_resnet_names():
    table = caffe2_resnet_table(50)
    # stem 3 rows; 16 blocks x 9 rows; 4 projection shortcuts x 3 rows (ResNet paper, Table 1: 3, 4, 6, 3)
    assert len(table) == 3 + 16 * 9 + 4 * 3
    assert len(caffe2_resnet_table(101)) == 3 + 33 * 9 + 4 * 3
    rows = {c2: (name, shape) for c2, name, shape in caffe2_resnet_table(101)}
    assert rows["conv1_w"] == ("conv1.weight", (64, 3, 7, 7))
    assert rows["res_conv1_bn_s"] == ("bn1.weight", (64,))
    assert rows["res2_0_branch2a_w"] == ("layer1.0.conv1.weight", (64, 64, 1, 1))
    assert rows["res3_0_branch1_w"] == ("layer2.0.downsample.0.weight", (512, 256, 1, 1))
    assert rows["res3_0_branch1_bn_b"] == ("layer2.0.downsample.1.bias", (512,))
    assert rows["res4_22_branch2b_w"] == ("layer3.22.conv2.weight", (256, 256, 3, 3))
    assert rows["res5_2_branch2c_bn_s"] == ("layer4.2.bn3.weight", (2048,))
    assert "res4_23_branch2a_w" not in rows and "res4_1_branch1_w" not in rows
    # the table's targets plus the BN statistics it adds are exactly detkit's ResNet state_dict, with its shapes
    for depth in (50, 101):
        own = {k: tuple(v.shape) for k, v in ResNet(depth=depth).state_dict().items()}
        blobs = {c2: np.zeros(shape, np.float32) for c2, _, shape in caffe2_resnet_table(depth)}
        state, _ = caffe2_to_detkit(blobs, depth=depth, source="gen")
        assert {k: tuple(v.shape) for k, v in state.items()} == own


def test_generated_file_converts_by_the_table(r50_file):
    path, blobs = r50_file
    weights = read_caffe2_backbone(path, depth=50, input_format="BGR")
    state = weights.model
    assert weights.format == "caffe2"
    assert torch.equal(state["layer3.5.conv2.weight"], torch.from_numpy(blobs["res4_5_branch2b_w"]))
    assert torch.equal(state["layer2.0.downsample.0.weight"], torch.from_numpy(blobs["res3_0_branch1_w"]))
    assert torch.equal(state["layer4.2.bn3.weight"], torch.from_numpy(blobs["res5_2_branch2c_bn_s"]))
    assert torch.equal(state["layer4.2.bn3.bias"], torch.from_numpy(blobs["res5_2_branch2c_bn_b"]))
    assert torch.equal(state["conv1.weight"], torch.from_numpy(blobs["conv1_w"]))  # BGR model: as in the file
    # BN without statistics: mean 0, var + eps exactly 1, so the layer is exactly x * s + b
    assert torch.equal(state["bn1.running_mean"], torch.zeros(64))
    assert torch.equal(state["bn1.running_var"] + BN_EPS, torch.ones(64))
    dropped = {a for a, b in weights.mapping if b == "dropped"}
    assert dropped == {"conv1_b", "fc1000_w", "fc1000_b"}
    rgb = read_caffe2_backbone(path, depth=50, input_format="RGB").model
    assert torch.equal(rgb["conv1.weight"], torch.from_numpy(blobs["conv1_w"][:, ::-1].copy()))


def test_frozen_bn_of_converted_weights_is_the_caffe2_affine_map(r50_file):
    from torchvision.ops import FrozenBatchNorm2d

    path, blobs = r50_file
    state = read_caffe2_backbone(path, depth=50).model
    bn = FrozenBatchNorm2d(256)
    bn.load_state_dict({k.removeprefix("layer1.0.bn3."): v for k, v in state.items() if k.startswith("layer1.0.bn3.")})
    x = torch.randn(2, 256, 3, 3)
    s = torch.from_numpy(blobs["res2_0_branch2c_bn_s"]).view(1, -1, 1, 1)
    b = torch.from_numpy(blobs["res2_0_branch2c_bn_b"]).view(1, -1, 1, 1)
    torch.testing.assert_close(bn(x), x * s + b, rtol=0, atol=1e-6)


def test_rgb_and_bgr_models_compute_the_same_stem(r50_file):
    """Reversing conv1's input channels for an RGB model is exact: same output for the same picture."""
    path, _ = r50_file
    bgr = read_caffe2_backbone(path, depth=50, input_format="BGR").model["conv1.weight"]
    rgb = read_caffe2_backbone(path, depth=50, input_format="RGB").model["conv1.weight"]
    image_bgr = torch.randn(1, 3, 16, 16)
    out_bgr = torch.nn.functional.conv2d(image_bgr, bgr)
    out_rgb = torch.nn.functional.conv2d(image_bgr.flip(1), rgb)
    torch.testing.assert_close(out_rgb, out_bgr)


def write(tmp_path, blobs, name="bad.pkl", protocol=2):
    path = tmp_path / name
    path.write_bytes(pickle.dumps(blobs, protocol=protocol))
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda b: b.pop("res3_2_branch2b_bn_s"), r"bad.pkl is not an MSRA/Caffe2 ResNet-50: missing blob 'res3_2_branch2b_bn_s'"),
        (lambda b: b.update(res6_0_branch2a_w=np.zeros(1, np.float32)), r"bad.pkl .*unexpected blob 'res6_0_branch2a_w'"),
        (lambda b: b.update(res2_1_branch2b_w=np.zeros((64, 64, 1, 1), np.float32)),
         r"bad.pkl: blob 'res2_1_branch2b_w' has shape \(64, 64, 1, 1\), expected \(64, 64, 3, 3\)"),
        (lambda b: b.update(res2_1_branch2b_w=[1.0, 2.0]), r"bad.pkl: blob 'res2_1_branch2b_w' is not a numeric array"),
    ],
)
def test_bad_files_name_the_file_and_first_offending_blob(tmp_path, edit, message):
    blobs = {c2: np.zeros(shape, np.float32) for c2, _, shape in caffe2_resnet_table(50)}
    edit(blobs)
    path = write(tmp_path, blobs)
    with pytest.raises(UserError, match=message) as info:
        read_caffe2_backbone(path, depth=50)
    assert "\n" not in str(info.value)


def test_file_of_another_depth_says_which(tmp_path):
    blobs = {c2: np.zeros(shape, np.float32) for c2, _, shape in caffe2_resnet_table(101)}
    path = write(tmp_path, {"blobs": blobs}, name="R-101.pkl")  # Detectron-1's "blobs" wrapper too
    with pytest.raises(UserError, match=r"R-101.pkl holds an MSRA ResNet-101 but model.backbone.depth is 50"):
        read_caffe2_backbone(path, depth=50)
    with pytest.raises(UserError, match="released for depths 50, 101, 152 only"):
        read_caffe2_backbone(path, depth=34)
    assert read_caffe2_backbone(path, depth=101).model["layer3.22.conv3.weight"].shape == (1024, 256, 1, 1)


def test_other_layouts_are_refused_as_backbones(tmp_path):
    d2 = write(tmp_path, {"model": {"backbone.stem.conv1.weight": np.zeros((64, 3, 7, 7), np.float32)},
                          "__author__": "Detectron2 Model Zoo"}, name="d2.pkl")
    with pytest.raises(UserError, match="d2.pkl is a detectron2 detector, not an MSRA/Caffe2 ImageNet ResNet"):
        read_caffe2_backbone(d2, depth=50)
    other = write(tmp_path, {"weights": np.zeros(3, np.float32)}, name="other.pkl")
    with pytest.raises(UserError, match="other.pkl is a pickle of neither known layout"):
        read_caffe2_backbone(other, depth=50)
    text = tmp_path / "notes.pkl"
    text.write_text("hello")
    with pytest.raises(UserError, match="cannot unpickle weights file .*notes.pkl"):
        read_caffe2_backbone(text, depth=50)


def test_msra_weights_need_a_resnet_striding_its_1x1_convs(r50_file, tmp_path):
    from detkit.checkpoint.formats import read_weights, to_checkpoint
    from detkit.modeling.backbone.resnet import build_resnet_c4

    path, _ = r50_file
    with pytest.raises(UserError, match=r"R-50.pkl is an MSRA/Caffe2 ResNet.*set model.backbone.stride_in_1x1=true"):
        build_resnet_c4(depth=50, weights=str(path))
    converted = tmp_path / "R-50-msra.pth"
    torch.save(to_checkpoint(read_weights(path), source=path), converted)
    with pytest.raises(UserError, match=r"R-50-msra.pth was converted from an MSRA/Caffe2 ResNet.*stride_in_1x1=true"):
        build_resnet_c4(depth=50, weights=str(converted))
