"""configs/detectron2/*.yaml and configs/coco_r101_msra.yaml: what they set, and that the models they build take
detectron2's own state (names and shapes recorded from detectron2's models in tests/data/detectron2/)."""

import json
from pathlib import Path

import pytest
import torch

from detkit.checkpoint.detectron2 import detectron2_to_detkit
from detkit.config import load_config
from detkit.modeling.build import build_model

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "detectron2"
CONFIGS = {
    "faster_rcnn_R_50_C4_1x": (50, 90000, [60000, 80000]),
    "faster_rcnn_R_50_C4_3x": (50, 270000, [210000, 250000]),
    "faster_rcnn_R_101_C4_3x": (101, 270000, [210000, 250000]),
}


def detectron2_shapes(depth: int) -> dict[str, list[int]]:
    data = json.loads((DATA / f"state_shapes_R_{depth}_C4.json").read_text())
    return data.get("state", data)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_is_detectron2s_model(name):
    """The test-time values of detectron2's Base-RCNN-C4.yaml over its defaults.py (facts, cited in the file)."""
    depth, max_iter, steps = CONFIGS[name]
    cfg = load_config(ROOT / "configs" / "detectron2" / f"{name}.yaml")
    m = cfg.model
    assert m.backbone.depth == depth and m.num_classes == 80
    assert (m.input_format, m.pixel_range, m.pixel_mean, m.pixel_std) == ("BGR", 255.0, [103.530, 116.280, 123.675], [1.0, 1.0, 1.0])
    assert m.backbone.stride_in_1x1 and m.backbone.norm == "frozen_bn" and m.backbone.freeze_at == 2
    assert m.size_divisibility == 0 and m.clip_mapped_boxes
    assert (m.rpn.anchor_sizes, m.rpn.anchor_ratios, m.rpn.anchor_offset, m.rpn.anchor_round) == (
        [32, 64, 128, 256, 512], [0.5, 1.0, 2.0], 0.0, False)
    assert m.rpn.bbox_reg_weights == [1.0, 1.0, 1.0, 1.0] and m.rpn.nms_thresh == 0.7 and m.rpn.min_box_size == 0.0
    assert (m.rpn.pre_nms_topk_test, m.rpn.post_nms_topk_test, m.rpn.pre_nms_topk_train, m.rpn.post_nms_topk_train) == (
        6000, 1000, 12000, 2000)
    r = m.roi_heads
    assert (r.head, r.pooler, r.pooler_resolution, r.sampling_ratio) == ("res5", "roi_align", 14, 0)
    assert r.bbox_reg_weights == [10.0, 10.0, 5.0, 5.0]
    assert (r.score_threshold, r.nms_thresh, r.detections_per_image, r.drop_empty_before_nms) == (0.05, 0.5, 100, False)
    assert not (r.box_refinement or r.global_context)
    i = cfg.input
    assert (i.min_size_test, i.max_size_test, i.test_resize) == (800, 1333, "pil")
    assert (i.min_size_train, i.max_size_train) == ([640, 672, 704, 736, 768, 800], 1333)
    s = cfg.solver
    assert (s.ims_per_batch, s.base_lr, s.max_iter, s.steps, s.warmup_iters) == (16, 0.02, max_iter, steps, 1000)
    assert cfg.data.test[0]["annotations"].endswith("instances_val2017.json")
    assert m.backbone.weights == f"pretrained/R-{depth}.pkl"


@pytest.mark.parametrize("depth", [50, 101])
def test_detectron2s_state_names_and_shapes_load_into_the_configs_model(depth):
    """A random state with every name and shape of detectron2's full-size model maps onto the config's model,
    strictly, tensor for tensor."""
    name = "faster_rcnn_R_50_C4_1x" if depth == 50 else "faster_rcnn_R_101_C4_3x"
    cfg = load_config(ROOT / "configs" / "detectron2" / f"{name}.yaml", ["model.backbone.weights=null", "model.device=cpu"])
    shapes = detectron2_shapes(depth)
    assert len(shapes) == {50: 275, 101: 530}[depth]  # every tensor detectron2's model holds
    g = torch.Generator().manual_seed(depth)
    state = {k: torch.randn(v, generator=g) for k, v in shapes.items()}
    mapped = detectron2_to_detkit(state, cfg=cfg)
    model = build_model(cfg)
    model.load_state_dict(mapped)  # strict: every detkit tensor filled, none left over
    own = model.state_dict()
    assert len(mapped) == len(own) == len(shapes)
    # spot checks through the table: res4's last block, res5 per region, the classifier with background last
    last = {50: 5, 101: 22}[depth]
    assert torch.equal(own[f"backbone.layer3.{last}.conv3.weight"], state[f"backbone.res4.{last}.conv3.weight"])
    assert torch.equal(own["roi_heads.box_head.res5.layer4.0.downsample.1.running_var"],
                       state["roi_heads.res5.0.shortcut.norm.running_var"])
    assert own["roi_heads.predictor.cls_score.weight"].shape == (81, 2048)
    assert own["backbone.layer2.0.conv1.weight"].shape == (128, 256, 1, 1)


def test_msra_config_is_the_papers_system_on_msras_resnet():
    cfg = load_config(ROOT / "configs" / "coco_r101_msra.yaml")
    base = load_config(ROOT / "configs" / "coco_r101.yaml")
    m = cfg.model
    assert m.backbone.weights == "pretrained/R-101.pkl" and m.backbone.stride_in_1x1 and m.backbone.depth == 101
    assert (m.input_format, m.pixel_range, m.pixel_mean, m.pixel_std) == ("BGR", 255.0, [103.530, 116.280, 123.675], [1.0, 1.0, 1.0])
    # everything else is the paper's system of coco_r101.yaml
    for key in ("rpn", "roi_heads"):
        assert cfg.model[key] == base.model[key]
    assert cfg.input == base.input and cfg.solver == base.solver and cfg.data == base.data
