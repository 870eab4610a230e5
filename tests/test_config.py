import pytest

from detkit.config import load_config
from detkit.errors import UserError


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_and_attribute_access():
    cfg = load_config()
    assert cfg.model.backbone.depth == 101
    assert cfg.model.rpn.post_nms_topk_test == 300


def test_base_inheritance_and_overrides(tmp_path):
    write(tmp_path, "base.yaml", "model:\n  backbone:\n    depth: 50\nsolver:\n  base_lr: 0.01\n")
    child = write(tmp_path, "child.yaml", "_base_: base.yaml\nsolver:\n  max_iter: 10\n")
    cfg = load_config(child, ["solver.base_lr=1", "test.scales=[400,600]", "model.backbone.weights=null"])
    assert cfg.model.backbone.depth == 50
    assert cfg.solver.max_iter == 10
    assert cfg.solver.base_lr == 1.0 and isinstance(cfg.solver.base_lr, float)
    assert cfg.test.scales == [400, 600]
    assert cfg.model.backbone.weights is None


def test_dataset_list_override():
    cfg = load_config(None, ["data.train=[{format: coco, images: d, annotations: a.json}]"])
    assert cfg.data.train == [{"format": "coco", "images": "d", "annotations": "a.json"}]


@pytest.mark.parametrize(
    "override, message",
    [
        ("solver.max_itr=5", "unknown config key 'solver.max_itr'"),
        ("solver.max_iter=abc", "'solver.max_iter'"),
        ("model.roi_heads.box_refinement=3", "'model.roi_heads.box_refinement'"),
        ("solver.max_iter", "KEY=VALUE"),
        ("model.num_classes=two", "'model.num_classes'"),
        ("model.backbone=5", "'model.backbone'"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config(None, [override])


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = write(tmp_path, "bad.yaml", "model: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)
    unknown = write(tmp_path, "unknown.yaml", "model:\n  backbone:\n    deepth: 50\n")
    with pytest.raises(UserError, match=r"model\.backbone\.deepth.*unknown\.yaml"):
        load_config(unknown)


def test_dump_round_trip(tmp_path):
    cfg = load_config(None, ["solver.max_iter=7"])
    p = write(tmp_path, "dumped.yaml", cfg.dump())
    assert load_config(p) == cfg


def test_base_chain_and_loop(tmp_path):
    write(tmp_path, "a.yaml", "solver:\n  max_iter: 1\n  base_lr: 0.5\n")
    write(tmp_path, "b.yaml", "_base_: a.yaml\nsolver:\n  max_iter: 2\n")
    c = write(tmp_path, "c.yaml", "_base_: b.yaml\nseed: 3\n")
    cfg = load_config(c)
    assert (cfg.solver.max_iter, cfg.solver.base_lr, cfg.seed) == (2, 0.5, 3)
    write(tmp_path, "x.yaml", "_base_: y.yaml\n")
    write(tmp_path, "y.yaml", "_base_: x.yaml\n")
    with pytest.raises(UserError, match="loops"):
        load_config(tmp_path / "x.yaml")


def test_shipped_configs_load():
    from pathlib import Path

    for path in sorted(Path(__file__).resolve().parents[1].glob("configs/*.yaml")):
        load_config(path)
