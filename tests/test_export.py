"""ONNX export (tools/export.py, detkit.export) and OnnxPredictor: onnxruntime gives PyTorch's detections.

Tiny random-weight ResNet-18 C4 models (classifier spread so there are detections, as tools/benchmark.py does);
"the same detections": same count, and each detection has a counterpart with the same label, IoU >= 0.99 and a
score within 1e-3 (`compare_detections`; boxes too thin for IoU to mean anything compared by their corners).
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml

from detkit import OnnxPredictor, Predictor, build_model, load_config
from detkit.benchmark.compare import compare_detections
from detkit.benchmark.random_weights import spread_class_scores
from detkit.errors import UserError
from detkit.export import onnx_file
from detkit.export.onnx_file import CHECK_BOX_TOL, export_from_config, export_model, synthetic_image
from detkit.modeling.test_time import Augmentation
from tests.conftest import TINY, read_video, tiny_config_dict, write_video

REPO = Path(__file__).resolve().parents[1]
NAMES = ["circle", "square", "triangle"]
CATEGORY_IDS = [3, 7, 90]
# (H, W): landscape, portrait, square, upscaled small, long side capped by max_size_test (100), larger than the cap
SIZES = [(60, 97), (110, 50), (64, 64), (20, 30), (30, 200), (300, 420)]


def tiny_cfg(extra=()):
    return load_config(None, TINY + ["model.device=cpu", *extra])


def spread_model(cfg):
    """Random weights whose classifier scores pass the threshold on a synthetic image."""
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    image = torch.from_numpy(synthetic_image(64, 90, seed=3)[:, :, ::-1].transpose(2, 0, 1).copy())
    spread_class_scores(model, image)
    return model


def as_torch(out: dict) -> dict:
    return {k: torch.from_numpy(np.asarray(v)) for k, v in out.items()}


def assert_same(onnx_out: dict, torch_out: dict, what: str) -> None:
    assert onnx_out["boxes"].dtype == np.float32 and onnx_out["scores"].dtype == np.float32
    assert onnx_out["labels"].dtype == np.int64 and onnx_out["boxes"].shape == (len(onnx_out["scores"]), 4)
    assert len(onnx_out["boxes"]) == len(torch_out["boxes"]), what
    c = compare_detections(as_torch(onnx_out), as_torch(torch_out), min_iou=0.99, score_tol=1e-3, box_tol=CHECK_BOX_TOL)
    assert c["same"], (what, c)
    np.testing.assert_array_equal(np.sort(onnx_out["labels"]), np.sort(torch_out["labels"]))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(config file, checkpoint, ONNX file) of the tiny model, exported by the library function tools/export.py calls."""
    root = tmp_path_factory.mktemp("export")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(res5=True, num_classes=3, device="cpu")))  # TINY + device
    model = spread_model(tiny_cfg())
    weights = root / "tiny.pth"
    torch.save({"model": model.state_dict(), "class_names": NAMES, "category_ids": CATEGORY_IDS}, weights)
    path = root / "tiny.onnx"
    report = export_from_config(load_config(config), weights, path)
    return config, weights, path, report


def test_onnx_gives_pytorchs_detections_at_every_size(exported):
    config, weights, path, report = exported
    assert [tuple(c["size"]) for c in report["checks"]] and all(c["counts"][0] > 0 for c in report["checks"])
    predictor = Predictor(load_config(config), weights)
    deployed = OnnxPredictor(path)
    total = 0
    for i, (h, w) in enumerate(SIZES):
        image = synthetic_image(h, w, seed=10 + i)
        ours, ref = deployed(image), predictor(image)
        assert_same(ours, ref, f"{h}x{w}")
        total += len(ours["boxes"])
    assert total > 0  # the comparison was not between empty sets only


def test_metadata_round_trip(exported):
    config, _, path, _ = exported
    deployed = OnnxPredictor(path)
    assert deployed.class_names == NAMES and deployed.category_ids == CATEGORY_IDS
    cfg = load_config(config)
    assert deployed.settings["input.min_size_test"] == cfg.input.min_size_test == 64
    assert deployed.settings["model.roi_heads.score_threshold"] == cfg.model.roi_heads.score_threshold
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(path)).metadata_props}
    assert meta["class_names"] == NAMES and meta["category_ids"] == CATEGORY_IDS and "detkit_version" in meta
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["image"] and [o.name for o in graph.output] == ["boxes", "scores", "labels"]
    dims = graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims[:2]] == ["height", "width"] and dims[2].dim_value == 3


def test_image_with_no_detections(tmp_path):
    """Empty outputs keep their shapes and dtypes (no score can pass a threshold of 1)."""
    cfg = tiny_cfg(["model.roi_heads.score_threshold=1.0"])
    model = spread_model(cfg)
    path = tmp_path / "none.onnx"
    export_model(model, path, class_names=NAMES)
    out = OnnxPredictor(path)(synthetic_image(70, 90, seed=1))
    assert out["boxes"].shape == (0, 4) and out["scores"].shape == (0,) and out["labels"].shape == (0,)
    assert out["boxes"].dtype == np.float32 and out["labels"].dtype == np.int64


@pytest.mark.parametrize(
    "extra",
    [
        # union test-time augmentation, iterative localization with voting, global context
        ["test.scales=[48,64]", "test.flip=true", "model.roi_heads.box_refinement=true", "model.roi_heads.global_context=true"],
        # detectron2-style preprocessing and heads: BGR 0-255 weights, no padding, clipped mapping, roi_pool + res5
        ["model.input_format=BGR", "model.pixel_mean=[103.53,116.28,123.675]", "model.pixel_std=[1.0,1.0,1.0]",
         "model.pixel_range=255.0", "model.size_divisibility=0", "model.clip_mapped_boxes=true",
         "model.roi_heads.drop_empty_before_nms=false", "model.roi_heads.pooler=roi_pool", "model.roi_heads.head=res5",
         "model.roi_heads.pooler_resolution=8", "input.min_size_test=80"],
    ],
    ids=["tta_refinement_context", "detectron2_style"],
)
def test_options_export_and_match(tmp_path, extra):
    cfg = tiny_cfg(extra)
    model = spread_model(cfg)
    path = tmp_path / "m.onnx"
    augmentation = Augmentation.from_config(cfg)
    export_model(model, path, class_names=NAMES, augmentation=augmentation)
    deployed = OnnxPredictor(path)
    total = 0
    for i, (h, w) in enumerate(SIZES[:3] + SIZES[4:5]):
        image = synthetic_image(h, w, seed=20 + i)
        rgb = torch.from_numpy(np.ascontiguousarray(image[:, :, ::-1].transpose(2, 0, 1)))
        with torch.inference_mode():
            ref = augmentation(model, [rgb])[0]
        ours = deployed(image)
        assert_same(ours, {k: v.numpy() for k, v in ref.items()}, f"{h}x{w}")
        total += len(ours["boxes"])
    assert total > 0


def test_self_check_refuses_to_write_a_disagreeing_file(tmp_path, monkeypatch):
    model = spread_model(tiny_cfg())
    real = onnx_file.reference_detections

    def shifted(*args, **kwargs):
        out = real(*args, **kwargs)
        return {**out, "boxes": out["boxes"] + 5.0}

    monkeypatch.setattr(onnx_file, "reference_detections", shifted)
    path = tmp_path / "bad.onnx"
    with pytest.raises(UserError, match="disagrees with PyTorch.*nothing written"):
        export_model(model, path, class_names=NAMES)
    assert not path.exists() and not list(tmp_path.iterdir())


def run_tool(*args, **kwargs):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=300, **kwargs)


def test_export_tool_refusals(exported, tmp_path):
    config, weights, _, _ = exported
    out = tmp_path / "x.onnx"
    for override, key in [("input.test_resize=pil", "input.test_resize=pil"),
                          ("test.multiscale_mode=maxout test.scales=[48,64]", "test.multiscale_mode=maxout")]:
        r = run_tool("tools/export.py", "--config", str(config), "--weights", str(weights), "--output", str(out),
                     *override.split())
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and key in lines[0] and "not" in lines[0], lines
        assert not out.exists()
    r = run_tool("tools/export.py", "--config", str(config), "--weights", str(weights), "--output", str(tmp_path))
    assert r.returncode == 2 and "is a folder" in r.stderr


def test_export_tool_writes_a_checked_file(exported, tmp_path):
    config, weights, _, _ = exported
    out = tmp_path / "cli.onnx"
    r = run_tool("tools/export.py", "--config", str(config), "--weights", str(weights), "--output", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "onnxruntime agrees with PyTorch" in r.stderr and f"wrote {out}" in r.stderr
    assert OnnxPredictor(out).class_names == NAMES


def test_onnx_predictor_errors(exported, tmp_path):
    _, _, path, _ = exported
    with pytest.raises(UserError, match="not found"):
        OnnxPredictor(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(UserError, match="cannot load"):
        OnnxPredictor(tmp_path / "junk.onnx")
    deployed = OnnxPredictor(path)
    with pytest.raises(UserError, match="HxWx3"):
        deployed(np.zeros((10, 10), np.uint8))
    with pytest.raises(UserError, match="uint8"):
        deployed(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(UserError, match="no NoSuchExecutionProvider"):
        OnnxPredictor(path, providers=["NoSuchExecutionProvider"])


# Runs Python with `import torch` failing, as on a deployment machine without torch.
NO_TORCH = "import sys, runpy; sys.modules['torch'] = None; "


def test_onnx_predictor_and_image_demo_without_torch(exported, tmp_path):
    _, _, path, _ = exported
    images = tmp_path / "images"
    images.mkdir()
    import cv2

    for i, (h, w) in enumerate(SIZES[:2]):
        cv2.imwrite(str(images / f"{i}.png"), synthetic_image(h, w, seed=30 + i))
    code = NO_TORCH + (
        "import numpy as np; from detkit import OnnxPredictor; "
        f"out = OnnxPredictor({str(path)!r})(np.zeros((40, 50, 3), np.uint8)); "
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]; print(sorted(out))"
    )
    r = run_tool("-c", code)
    assert r.returncode == 0 and "['boxes', 'labels', 'scores']" in r.stdout, r.stderr[-2000:]
    jsonl = tmp_path / "out.jsonl"
    argv = ["demo/image.py", str(images), "--onnx", str(path), "--json", str(jsonl), "--score-threshold", "0.1"]
    r = run_tool("-c", NO_TORCH + f"sys.argv = {argv!r}; runpy.run_path('demo/image.py', run_name='__main__')")
    assert r.returncode == 0, r.stderr[-2000:]
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    deployed = OnnxPredictor(path)
    for record in records:
        out = deployed(cv2.imread(record["image"]))
        expected = int((out["scores"] >= 0.1).sum())
        assert len(record["detections"]) == expected and expected > 0
        assert {d["name"] for d in record["detections"]} <= set(NAMES)
    r = run_tool("demo/image.py", str(images), "--onnx", str(path), "--weights", "x.pth")
    assert r.returncode == 2 and "--onnx runs the exported file as it is" in r.stderr


def test_video_demo_with_onnx(exported, tmp_path):
    _, _, path, _ = exported
    video = write_video(tmp_path / "in.avi", 96, 64)
    out, jsonl = tmp_path / "out.avi", tmp_path / "out.jsonl"
    argv = ["demo/video.py", str(video), "--onnx", str(path), "--output", str(out), "--json", str(jsonl),
            "--score-threshold", "0.1"]
    r = run_tool("-c", NO_TORCH + f"sys.argv = {argv!r}; runpy.run_path('demo/video.py', run_name='__main__')")
    assert r.returncode == 0, r.stderr[-2000:]
    frames, _, size = read_video(out)
    assert frames == 12 and size == (96, 64)
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(lines) == 12 and any(line["detections"] for line in lines)


def test_converted_detectron2_model_exports_with_coco_ids(tmp_path):
    """The tiny detectron2 R50-C4 model-zoo file of tests/data/detectron2 through tools/export.py's path (BGR 0-255
    weights, frozen BN, stride in 1x1, roi_align + res5, clipped mapping): COCO's names and ids in the metadata,
    PyTorch's detections on the three photos at their own size and two others."""
    import cv2

    data = REPO / "tests" / "data" / "detectron2"
    cfg = load_config(REPO / "configs" / "detectron2" / "faster_rcnn_R_50_C4_1x.yaml",
                      ["model.backbone.width=8", "input.min_size_test=224", "model.device=cpu", "input.test_resize=tensor"])
    path = tmp_path / "d2.onnx"
    export_from_config(cfg, data / "tiny_r50_c4.pkl", path)
    deployed, predictor = OnnxPredictor(path), Predictor(cfg, data / "tiny_r50_c4.pkl")
    assert deployed.class_names[:2] == ["person", "bicycle"] and deployed.category_ids[-1] == 90
    for name in ["astronaut", "coffee", "chelsea"]:
        photo = cv2.imread(str(data / f"{name}.png"))
        for image in [photo, cv2.resize(photo, (300, 180)), np.ascontiguousarray(photo.transpose(1, 0, 2))]:
            ours = deployed(image)
            assert len(ours["boxes"]) > 0
            assert_same(ours, predictor(image), f"{name} {image.shape}")
