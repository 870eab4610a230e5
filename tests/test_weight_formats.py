"""One reader for every weights file: detkit checkpoints, detectron2 .pkl/.pth, MSRA .pkl; by content, with
COCO's names and ids attached to 80-class detectron2 files, and one-line errors naming the file."""

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from detkit.checkpoint.coco_categories import COCO_CATEGORY_IDS, COCO_CLASS_NAMES
from detkit.checkpoint.detectron2 import anchor_permutation, name_table
from detkit.checkpoint.formats import read_detector_weights, read_weights, to_checkpoint
from detkit.config import load_config
from detkit.errors import UserError
from detkit.modeling.build import build_model

ROOT = Path(__file__).resolve().parents[1]
# A small R-50 C4 detector with detectron2's anchors (5 sizes x 3 ratios), COCO's 80 classes, its ResNet
# layout (stride in the 1x1) and its BGR input.
OVERRIDES = [
    "model.backbone.depth=50",
    "model.backbone.width=8",
    "model.backbone.stride_in_1x1=true",
    "model.input_format=BGR",
    "model.backbone.weights=null",
    "model.num_classes=80",
    "model.rpn.anchor_sizes=[32,64,128,256,512]",
    "model.device=cpu",
]


@pytest.fixture(scope="module")
def cfg():
    return load_config(None, OVERRIDES)


@pytest.fixture(scope="module")
def detkit_state(cfg):
    torch.manual_seed(0)
    return {k: v.clone() for k, v in build_model(cfg).state_dict().items()}


def to_detectron2(state: dict, cfg) -> dict:
    """detkit state -> detectron2 names and anchor order: the inverse of the table, to build test files."""
    inverse = {dk: d2 for d2, dk in name_table(cfg.model.backbone.depth).items()}
    perm = torch.tensor(anchor_permutation(len(cfg.model.rpn.anchor_sizes), len(cfg.model.rpn.anchor_ratios)))
    back = torch.argsort(perm)
    out = {}
    for name, t in state.items():
        if name.startswith("rpn.head.objectness."):
            t = t[back]
        elif name.startswith("rpn.head.deltas."):
            t = t.view(-1, 4, *t.shape[1:])[back].reshape(t.shape)
        out[inverse[name]] = t.clone()
    return out


def assert_same_state(got: dict, want: dict):
    assert sorted(got) == sorted(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_detectron2_pkl_and_pth_map_back_to_the_detkit_state(tmp_path, cfg, detkit_state):
    d2 = to_detectron2(detkit_state, cfg)
    pkl = tmp_path / "model_final_abc.pkl"
    arrays = {k: v.numpy() for k, v in d2.items()}
    arrays["pixel_mean"] = np.array([103.53, 116.28, 123.675], np.float32).reshape(3, 1, 1)  # ignored by the table
    pkl.write_bytes(pickle.dumps({"model": arrays, "__author__": "Detectron2 Model Zoo"}, protocol=4))
    pth = tmp_path / "model_final.pth"
    torch.save({"model": d2, "iteration": 90000, "optimizer": {"state": {}, "param_groups": []}}, pth)
    bare = tmp_path / "bare.weights"  # neither extension says anything: the content does
    torch.save(d2, bare)
    for path in (pkl, pth, bare):
        weights = read_detector_weights(path, cfg=cfg)
        assert weights.format == "detectron2"
        assert_same_state(weights.model, detkit_state)
        assert weights.class_names == COCO_CLASS_NAMES and weights.category_ids == COCO_CATEGORY_IDS
    assert weights.category_ids[:12] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13]  # COCO's ids, not 1..80
    # and the result loads strictly into the model the config builds
    build_model(cfg).load_state_dict(weights.model)


def test_detkit_checkpoint_passes_through_with_its_names(tmp_path, cfg, detkit_state):
    path = tmp_path / "model_final.pth"
    names = [f"c{i}" for i in range(80)]
    torch.save({"model": detkit_state, "class_names": names, "iteration": 3}, path)
    weights = read_detector_weights(path, cfg=cfg)
    assert weights.format == "detkit" and weights.class_names == names and weights.category_ids is None
    assert_same_state(weights.model, detkit_state)


def test_bad_detector_files_are_one_line_errors_naming_file_and_key(tmp_path, cfg, detkit_state):
    d2 = to_detectron2(detkit_state, cfg)
    cases = []
    missing = dict(d2)
    del missing["backbone.res3.1.conv2.norm.running_var"]
    cases.append((missing, r"missing.pkl: .*'backbone.res3.1.conv2.norm.running_var' is missing"))
    extra = {**d2, "roi_heads.mask_head.predictor.weight": torch.zeros(1)}
    cases.append((extra, r"extra.pkl: .*unexpected tensor 'roi_heads.mask_head.predictor.weight'"))
    wrong = {**d2, "backbone.res2.0.conv2.weight": torch.zeros(8, 8, 1, 1)}
    cases.append((wrong, r"wrong.pkl: .*'backbone.res2.0.conv2.weight' has shape \(8, 8, 1, 1\)"))
    for state, message in cases:
        name = message.split(":")[0]
        path = tmp_path / name
        path.write_bytes(pickle.dumps({"model": {k: v.numpy() for k, v in state.items()}, "__author__": "x"}))
        with pytest.raises(UserError, match=message) as info:
            read_detector_weights(path, cfg=cfg)
        assert "\n" not in str(info.value)
    strings = tmp_path / "strings.pkl"
    strings.write_bytes(pickle.dumps({"model": {"backbone.stem.conv1.weight": "not an array"}, "__author__": "x"}))
    with pytest.raises(UserError, match=r"strings.pkl: entry 'backbone.stem.conv1.weight' is str, not a numeric array"):
        read_detector_weights(strings, cfg=cfg)
    msra = tmp_path / "R-50.pkl"
    msra.write_bytes(pickle.dumps({"conv1_w": np.zeros((64, 3, 7, 7), np.float32), "res2_0_branch2a_w": np.zeros(1)}))
    with pytest.raises(UserError, match="R-50.pkl is an MSRA/Caffe2 ImageNet backbone, not a detector: give it to model.backbone.weights"):
        read_detector_weights(msra, cfg=cfg)
    not_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_dict)
    with pytest.raises(UserError, match="list.pth holds a list, not a checkpoint dict"):
        read_detector_weights(not_dict, cfg=cfg)
    with pytest.raises(UserError, match="weights file not found"):
        read_detector_weights(tmp_path / "absent.pkl", cfg=cfg)


def test_hostile_pickle_as_weights_runs_nothing(tmp_path, cfg):
    marker = tmp_path / "ran"
    path = tmp_path / "model_final.pkl"
    payload = {"model": {}, "__author__": "x", "evil": _Evil(marker)}
    path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(UserError, match=r"refusing to load (posix|os|nt)\.system from .*model_final.pkl"):
        read_weights(path, cfg=cfg)
    assert not marker.exists()


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def run_tool(*args):
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / "convert_weights.py"), *map(str, args)],
        capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )


def test_convert_weights_writes_a_weights_only_checkpoint(tmp_path, cfg, detkit_state):
    d2 = to_detectron2(detkit_state, cfg)
    src = tmp_path / "model_final_f10217.pkl"
    src.write_bytes(pickle.dumps({"model": {k: v.numpy() for k, v in d2.items()}, "__author__": "Detectron2 Model Zoo"}))
    config = tmp_path / "small.yaml"
    config.write_text("seed: 0\n")
    out = tmp_path / "converted.pth"
    result = run_tool(src, out, "--config", config, *OVERRIDES)
    assert result.returncode == 0, result.stderr
    assert "detectron2 C4 Faster R-CNN" in result.stdout and "wrote" in result.stdout
    assert "backbone.stem.conv1.weight" in result.stdout and "-> backbone.conv1.weight" in result.stdout
    state = torch.load(out, map_location="cpu", weights_only=True)
    assert state["class_names"] == COCO_CLASS_NAMES and state["category_ids"] == COCO_CATEGORY_IDS
    assert_same_state(state["model"], detkit_state)
    # the written checkpoint is a detkit checkpoint: read as such, and refused as input to another conversion
    assert read_detector_weights(out, cfg=cfg).format == "detkit"
    again = run_tool(out, tmp_path / "again.pth")
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "already a detkit checkpoint" in again.stderr


def test_convert_weights_bad_input_exits_2_with_one_line(tmp_path):
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(b"cos\nsystem\n(S'true'\ntR.")
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"\x00\x01garbage")
    for src, message in [(evil, "refusing to load os.system"), (garbage, "cannot unpickle weights file"),
                         (tmp_path / "absent.pkl", "not found")]:
        result = run_tool(src, tmp_path / "out.pth")
        assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.stderr
        assert not (tmp_path / "out.pth").exists()



def test_predictor_and_fine_tuning_take_detectron2_files(tmp_path, cfg, detkit_state):
    from detkit.modeling.build import load_detector

    d2 = to_detectron2(detkit_state, cfg)
    path = tmp_path / "model_final_zoo.pkl"
    path.write_bytes(pickle.dumps({"model": {k: v.numpy() for k, v in d2.items()}, "__author__": "Detectron2 Model Zoo"}))
    model, names = load_detector(cfg, path)
    assert names == COCO_CLASS_NAMES
    assert torch.equal(model.state_dict()["roi_heads.predictor.cls_score.weight"], detkit_state["roi_heads.predictor.cls_score.weight"])
    # model.weights: fine-tuning to 20 classes keeps everything but the class-specific predictor
    voc = load_config(None, [o for o in OVERRIDES if not o.startswith("model.num_classes")]
                      + ["model.num_classes=20", f"model.weights={path}"])
    tuned = build_model(voc).state_dict()
    assert torch.equal(tuned["backbone.layer3.5.conv3.weight"], detkit_state["backbone.layer3.5.conv3.weight"])
    assert torch.equal(tuned["rpn.head.objectness.weight"], detkit_state["rpn.head.objectness.weight"])
    assert tuned["roi_heads.predictor.cls_score.weight"].shape[0] == 21


def test_detectron2_files_need_the_1x1_stride_and_fit_rgb_configs_by_reversing_conv1(tmp_path, cfg, detkit_state):
    d2 = to_detectron2(detkit_state, cfg)
    path = tmp_path / "model_final_zoo.pkl"
    path.write_bytes(pickle.dumps({"model": {k: v.numpy() for k, v in d2.items()}, "__author__": "Detectron2 Model Zoo"}))
    torchvision_layout = load_config(None, OVERRIDES + ["model.backbone.stride_in_1x1=false"])
    with pytest.raises(UserError, match=r"model_final_zoo.pkl: detectron2's C4 models stride the first 1x1 conv.*stride_in_1x1=true"):
        read_detector_weights(path, cfg=torchvision_layout)
    rgb = load_config(None, OVERRIDES + ["model.input_format=RGB"])
    got = read_detector_weights(path, cfg=rgb).model
    conv1 = detkit_state["backbone.conv1.weight"]  # (C, 3, 7, 7), BGR input channels in the file
    assert torch.equal(got["backbone.conv1.weight"][:, 0], conv1[:, 2])
    assert torch.equal(got["backbone.conv1.weight"][:, 2], conv1[:, 0])
    assert torch.equal(got["backbone.conv1.weight"][:, 1], conv1[:, 1])
    # a converted checkpoint records conv1's order and the layout; readers with another config adapt or refuse
    converted = tmp_path / "converted.pth"
    torch.save(to_checkpoint(read_weights(path, cfg=cfg), source=path), converted)
    state = torch.load(converted, weights_only=True)
    assert state["input_format"] == "BGR" and state["stride_in_1x1"] is True
    assert torch.equal(read_detector_weights(converted, cfg=rgb).model["backbone.conv1.weight"], got["backbone.conv1.weight"])
    assert torch.equal(read_detector_weights(converted, cfg=cfg).model["backbone.conv1.weight"], conv1)
    with pytest.raises(UserError, match=r"converted.pth holds a ResNet with stride_in_1x1=True: set model.backbone.stride_in_1x1=true"):
        read_detector_weights(converted, cfg=torchvision_layout)


def test_rgb_and_bgr_models_with_matching_weights_compute_the_same_features(tmp_path, cfg, detkit_state):
    """The same detectron2 file read into a BGR config and into an RGB config (normalisation reordered too)
    gives the same conv4 features on the same RGB image (up to float summation order)."""
    from detkit.modeling.build import load_detector

    d2 = to_detectron2(detkit_state, cfg)
    path = tmp_path / "model_final_zoo.pkl"
    path.write_bytes(pickle.dumps({"model": {k: v.numpy() for k, v in d2.items()}, "__author__": "Detectron2 Model Zoo"}))
    common = ["model.pixel_range=255.0", "model.pixel_std=[57.0,57.0,58.0]", "input.min_size_test=96", "input.max_size_test=160"]
    bgr = load_config(None, OVERRIDES + common + ["model.pixel_mean=[103.53,116.28,123.675]"])
    rgb = load_config(None, OVERRIDES + common + ["model.input_format=RGB", "model.pixel_mean=[123.675,116.28,103.53]",
                                                   "model.pixel_std=[58.0,57.0,57.0]"])
    image = torch.randint(0, 256, (3, 96, 128), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    outputs = []
    for c in (bgr, rgb):
        model, _ = load_detector(c, path)
        with torch.no_grad():
            feature = model.backbone(model.preprocessor([image])[0])
        outputs.append(feature)
    scale = outputs[0].abs().max().item()
    assert scale > 0
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=1e-5 * scale)
