"""detkit.modeling.build: where the class count and names come from, and which tensors a weights file sets."""

import logging

import pytest
import torch
from torchvision.ops import FrozenBatchNorm2d

from detkit import build_model, load_config
from detkit.errors import UserError
from detkit.modeling.build import load_detector, resolve_device
from detkit.modeling.detector import FasterRCNN
from tests.conftest import as_overrides, tiny_config_dict

# the tiny detector with the fc head, class count left unset
BASE = as_overrides(tiny_config_dict())


def _save(path, num_classes, **extra):
    torch.manual_seed(1)
    state = build_model(load_config(None, BASE), num_classes=num_classes).state_dict()
    torch.save({"model": state, **extra}, path)
    return state


@pytest.fixture
def detkit_log(caplog, monkeypatch):
    """caplog that sees the detkit logger also after a test in this process ran setup_logging, which stops
    the logger's propagation to the root handlers (caplog's among them)."""
    monkeypatch.setattr(logging.getLogger("detkit"), "propagate", True)
    return caplog


def test_load_detector_class_names_and_count(tmp_path, detkit_log):
    named = tmp_path / "named.pth"
    state = _save(named, 3, class_names=["a", "b", "c"])
    model, names = load_detector(load_config(None, BASE), named, class_names=["x", "y", "z"])
    assert names == ["a", "b", "c"]  # the file's names first
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert not model.training
    # no names in the file: the given ones; none given: the count from the classifier's rows (K + 1)
    bare = tmp_path / "bare.pth"
    _save(bare, 2)
    assert load_detector(load_config(None, BASE), bare, class_names=["x", "y"])[1] == ["x", "y"]
    model, names = load_detector(load_config(None, BASE), bare)
    assert names == ["class_0", "class_1"] and model.roi_heads.predictor.cls_score.out_features == 3
    # without weights: the count from the config, else from the names given
    with detkit_log.at_level(logging.WARNING, logger="detkit"):
        model, names = load_detector(load_config(None, BASE + ["model.num_classes=4"]), None)
    assert names == [f"class_{i}" for i in range(4)] and "no weights given" in detkit_log.text
    model, names = load_detector(load_config(None, BASE), None, class_names=["p", "q"])
    assert names == ["p", "q"] and model.roi_heads.predictor.cls_score.out_features == 3
    model, _ = load_detector(load_config(None, BASE + ["model.num_classes=4"]), None, class_names=["p", "q"])
    assert model.roi_heads.predictor.cls_score.out_features == 5  # model.num_classes before the names' count
    with pytest.raises(UserError, match="model.num_classes is not set and the weights do not name their classes"):
        load_detector(load_config(None, BASE), None)
    with pytest.raises(UserError, match=f"checkpoint {bare} does not fit this model"):
        load_detector(load_config(None, BASE + ["model.num_classes=5"]), bare)


def test_load_detector_reads_only_the_given_weights_and_applies_the_test_switches(tmp_path, monkeypatch):
    path = tmp_path / "frozen.pth"
    frozen = ["model.backbone.norm=frozen_bn", "model.backbone.freeze_at=2"]
    torch.manual_seed(1)
    torch.save({"model": build_model(load_config(None, BASE + frozen), num_classes=2).state_dict()}, path)
    # every tensor comes from `path`: the backbone's and model.weights' files are not read (absent here)
    absent = [f"model.backbone.weights={tmp_path / 'absent_r18.pth'}", f"model.weights={tmp_path / 'absent.pth'}"]
    cfg = load_config(None, BASE + frozen + absent + ["test.fold_bn=true", "test.compile=true", "test.amp=true"])
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: compiled.append(module) or module)
    monkeypatch.setattr(FasterRCNN, "device", property(lambda self: torch.device("cuda")))  # test.amp: CUDA only
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    model, _ = load_detector(cfg, path)
    assert cfg.model.backbone.weights == str(tmp_path / "absent_r18.pth")  # the caller's config is left alone
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())  # test.fold_bn
    assert compiled == [model.backbone, model.roi_heads.box_head]  # test.compile
    assert model.amp_dtype == torch.bfloat16  # test.amp


def test_model_weights_keep_the_tensors_whose_shapes_differ_fresh(tmp_path, detkit_log):
    path = tmp_path / "three.pth"
    state = _save(path, 3)
    cfg = load_config(None, BASE + ["model.num_classes=5", f"model.weights={path}"])
    torch.manual_seed(2)
    fresh = build_model(load_config(None, BASE), num_classes=5).state_dict()
    torch.manual_seed(2)
    with detkit_log.at_level(logging.INFO, logger="detkit"):
        tuned = build_model(cfg).state_dict()
    assert cfg.model.num_classes == 5  # the caller's config is left as it was
    predictor = sorted(k for k in tuned if k.startswith("roi_heads.predictor."))
    assert len(predictor) == 4
    for key in tuned:
        assert torch.equal(tuned[key], fresh[key] if key in predictor else state[key]), key
    assert f"initialised {len(tuned) - 4} tensors from {path}; new: {', '.join(predictor)}" in detkit_log.text
    detkit_log.clear()
    with detkit_log.at_level(logging.INFO, logger="detkit"):
        build_model(load_config(None, BASE + ["model.num_classes=3", f"model.weights={path}"]))
    assert f"tensors from {path}; new: none" in detkit_log.text
    other = tmp_path / "other.pth"
    torch.save({"model": {"head.weight": torch.zeros(2, 2)}}, other)
    with pytest.raises(UserError, match=f"model.weights={other}: no layer of the checkpoint fits this model"):
        build_model(load_config(None, BASE + ["model.num_classes=3", f"model.weights={other}"]))


def test_resolve_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(UserError, match=f"model.device={name} but CUDA is not available here; use model.device=cpu or auto"):
            resolve_device(name)
    with pytest.raises(UserError, match="model.device='gpu' is not a device; use cpu, cuda, cuda:N or auto"):
        resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cuda:1") == torch.device("cuda", 1)
