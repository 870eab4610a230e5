"""A short train + evaluate run on a tiny VOC folder, and COCO -> VOC style fine-tuning initialisation."""

import json

import torch
import yaml

from detkit.config import load_config
from detkit.data.voc import VOC_CLASSES
from detkit.engine.inference import test as run_test
from detkit.engine.train import train
from detkit.modeling.build import build_model
from tests.conftest import make_voc, obj_xml, tiny_config_dict


def voc_config(tmp_path):
    root = make_voc(
        tmp_path / "VOCdevkit" / "VOC2007",
        {
            "000005": (60, 80, [obj_xml("dog", (5, 6, 40, 50)), obj_xml("person", (45, 10, 75, 55), difficult=1)]),
            "000007": (64, 64, [obj_xml("cat", (10, 10, 50, 60))]),
        },
    )
    spec = {"format": "voc", "root": str(root), "split": "test"}
    cfg = {
        **tiny_config_dict(),
        "data": {"train": [spec], "test": [spec]},
        "dataloader": {"num_workers": 0},
        "solver": {"ims_per_batch": 2, "max_iter": 2, "warmup_iters": 1, "checkpoint_period": 0, "base_lr": 0.01},
    }
    path = tmp_path / "voc.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_voc_train_and_evaluate(tmp_path, capsys):
    cfg_path = voc_config(tmp_path)
    out = tmp_path / "out"
    train(load_config(cfg_path), output_dir=out)
    assert torch.load(out / "model_final.pth", weights_only=True)["class_names"] == list(VOC_CLASSES)
    # a two-iteration model scores 21 classes near 1/21, under the default 0.05: keep every detection
    test_cfg = load_config(cfg_path, ["model.roi_heads.score_threshold=0.0"])
    metrics = run_test(test_cfg, weights=out / "model_final.pth", output_dir=tmp_path / "test")
    printed = capsys.readouterr().out
    assert "11-point (VOC2007)" in printed and "mAP@.5" in printed
    assert {"AP", "AP50", "per_class"} <= set(metrics)
    assert metrics["per_class"]["aeroplane"] is None  # no ground truth: absent, not zero
    detections = json.loads((tmp_path / "test" / "detections.json").read_text())
    assert {d["image_id"] for d in detections} == {"000005", "000007"}  # VOC ids stay strings
    assert all(1 <= d["category_id"] <= 20 for d in detections)
    assert len({d["category_id"] for d in detections}) > 1
    for name in ("dog", "cat"):  # classes with ground truth get an AP, a number in [0, 100]
        assert 0.0 <= metrics["per_class"][name] <= 100.0, metrics["per_class"]


def test_fine_tuning_init_keeps_matching_layers(tmp_path):
    base = ["model.backbone.depth=18", "model.backbone.weights=null", "model.backbone.width=32", "model.roi_heads.head=fc"]
    source = build_model(load_config(None, base + ["model.num_classes=80"]))
    ckpt = tmp_path / "coco.pth"
    torch.save({"model": source.state_dict()}, ckpt)
    target = build_model(load_config(None, base + ["model.num_classes=20", f"model.weights={ckpt}"]))
    assert torch.equal(target.backbone.state_dict()["conv1.weight"], source.backbone.state_dict()["conv1.weight"])
    assert torch.equal(target.roi_heads.box_head.fc1.weight, source.roi_heads.box_head.fc1.weight)
    assert target.roi_heads.predictor.cls_score.out_features == 21
