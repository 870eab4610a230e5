"""detkit computes what detectron2 computes: a detectron2 R50-C4 (narrow widths, seeded random weights with
non-trivial frozen-BN statistics) loaded from its model-zoo .pkl into `configs/detectron2/faster_rcnn_R_50_C4_1x.yaml`,
run on three real photographs, against detectron2's own res4 features, RPN proposals and final detections.

The fixtures (tests/data/detectron2/, made by tests/detectron2_reference/make_reference.py with detectron2 itself)
are described in tests/data/detectron2/README.md. The photos are fed at their own size (short side 224 =
`input.min_size_test`), as detectron2 was, so the comparison covers everything after the resize; the resize
itself is covered against PIL in tests/test_model_zoo_keys.py.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detkit.checkpoint.coco_categories import COCO_CATEGORIES, COCO_CATEGORY_IDS
from detkit.config import load_config
from detkit.modeling.build import load_detector
from detkit.predictor import Predictor

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "detectron2"
PHOTOS = ("astronaut", "coffee", "chelsea")
# The narrow widths of the fixture model (detectron2 STEM_OUT_CHANNELS=8, RES2_OUT_CHANNELS=32,
# WIDTH_PER_GROUP=8) are detkit's `model.backbone.width: 8`; everything else is the shipped config's.
TINY = ["model.backbone.width=8", "input.min_size_test=224", "model.device=cpu"]
CONFIG = ROOT / "configs" / "detectron2" / "faster_rcnn_R_50_C4_1x.yaml"


@pytest.fixture(scope="module")
def reference():
    with np.load(DATA / "reference.npz", allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


@pytest.fixture(scope="module")
def cfg():
    return load_config(CONFIG, TINY)


@pytest.fixture(scope="module")
def model_and_names(cfg):
    return load_detector(cfg, DATA / "tiny_r50_c4.pkl")


def photo(name: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB, exactly the bytes detectron2 was given."""
    return np.asarray(Image.open(DATA / f"{name}.png").convert("RGB"))


@torch.inference_mode()
def run_with_hooks(model, rgb: np.ndarray) -> dict:
    """detkit's res4 features, proposals and detections on one photo, given as detkit takes images (RGB CHW)."""
    captured = {}
    hooks = [
        model.backbone.register_forward_hook(lambda m, i, o: captured.__setitem__("res4", o)),
        model.rpn.register_forward_hook(lambda m, i, o: captured.__setitem__("proposals", o[0])),
    ]
    try:
        image = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))  # (3, H, W) uint8 RGB
        detections = model([image])[0]
    finally:
        for hook in hooks:
            hook.remove()
    return {
        "res4": captured["res4"][0].float().numpy(),
        "proposal_boxes": captured["proposals"][0].float().numpy(),
        "boxes": detections["boxes"].float().numpy(),
        "scores": detections["scores"].float().numpy(),
        "labels": detections["labels"].numpy(),
    }


@pytest.fixture(scope="module")
def outputs(model_and_names):
    model, _ = model_and_names
    return {name: run_with_hooks(model, photo(name)) for name in PHOTOS}


def test_fixture_is_not_trivial(reference):
    """The comparison means something only if detectron2 produced many proposals and detections of several classes."""
    for name in PHOTOS:
        assert len(reference[f"{name}_proposal_boxes"]) == 1000
        assert len(reference[f"{name}_scores"]) == 100
        assert len(set(reference[f"{name}_labels"].tolist())) >= 2
        assert np.abs(reference[f"{name}_res4"]).mean() > 0.1


@pytest.mark.parametrize("name", PHOTOS)
def test_res4_features_equal_detectron2s(outputs, reference, name):
    ours, theirs = outputs[name]["res4"], reference[f"{name}_res4"]
    assert ours.shape == theirs.shape  # (128, ceil(H/16), ceil(W/16)): no padding to a multiple of 32
    # float32 through 23 conv layers, summed in another order: measured 2.3e-7 to 3.1e-7 of the largest value
    assert np.abs(ours - theirs).max() <= 2e-6 * np.abs(theirs).max()


@pytest.mark.parametrize("name", PHOTOS)
def test_proposals_equal_detectron2s_in_order(outputs, reference, name):
    ours, theirs = outputs[name]["proposal_boxes"], reference[f"{name}_proposal_boxes"]
    assert ours.shape == theirs.shape == (1000, 4)
    assert np.abs(ours - theirs).max() < 2e-4  # pixels, same order (objectness descending, after NMS 0.7)


@pytest.mark.parametrize("name", PHOTOS)
def test_detections_equal_detectron2s(outputs, reference, name):
    ours, ref = outputs[name], {k: reference[f"{name}_{k}"] for k in ("boxes", "scores", "labels")}
    assert len(ours["scores"]) == len(ref["scores"]) == 100
    np.testing.assert_array_equal(ours["labels"], ref["labels"])
    assert np.abs(ours["scores"] - ref["scores"]).max() < 1e-5
    assert np.abs(ours["boxes"] - ref["boxes"]).max() < 1e-4  # pixels


def test_labels_name_cocos_classes(model_and_names):
    """detectron2's contiguous index i is COCO's i-th category: the names come with the .pkl (80 classes)."""
    _, names = model_and_names
    assert len(names) == 80 and names[0] == "person" and names[2] == "car" and names[79] == "toothbrush"


def test_predictor_gives_the_same_detections_from_bgr(cfg, reference):
    """The application entry point (BGR numpy in) gives detectron2's detections too."""
    predictor = Predictor(cfg, weights=DATA / "tiny_r50_c4.pkl")
    rgb = photo("coffee")
    out = predictor(np.ascontiguousarray(rgb[:, :, ::-1]))
    np.testing.assert_array_equal(out["labels"], reference["coffee_labels"])
    assert np.abs(out["boxes"] - reference["coffee_boxes"]).max() < 1e-4
    assert np.abs(out["scores"] - reference["coffee_scores"]).max() < 1e-5


@pytest.fixture(scope="module")
def photo_set(tmp_path_factory, reference):
    """A COCO-format set of the three photos whose ground truth is detectron2's own detections (COCO's 80
    categories and ids): detkit's detections of the .pkl, evaluated with COCO's ids, must score AP 100."""
    root = tmp_path_factory.mktemp("photos")
    images, annotations = [], []
    for image_id, name in enumerate(PHOTOS, start=1):
        rgb = photo(name)
        Image.fromarray(rgb).save(root / f"{name}.png")
        images.append({"id": image_id, "file_name": f"{name}.png", "height": rgb.shape[0], "width": rgb.shape[1]})
        for box, label in zip(reference[f"{name}_boxes"].tolist(), reference[f"{name}_labels"].tolist()):
            x1, y1, x2, y2 = box
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": COCO_CATEGORY_IDS[label],
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    categories = [{"id": cid, "name": name} for cid, name in COCO_CATEGORIES]
    (root / "gt.json").write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return root


def run_tool(tool: str, photo_set: Path, output_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    """`tool` with the tiny config, the fixture's .pkl and `photo_set` as data.test, writing into `output_dir`."""
    data = f"data.test=[{{format: coco, images: {photo_set}, annotations: {photo_set / 'gt.json'}}}]"
    args = [tool, "--config", str(CONFIG), "--weights", str(DATA / "tiny_r50_c4.pkl"), "--output-dir", str(output_dir),
            *TINY, data, *extra]
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=1800)


def test_test_net_on_the_pkl_writes_cocos_ids_and_reproduces_detectron2(photo_set, tmp_path):
    r = run_tool("tools/test_net.py", photo_set, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    detections = json.loads((tmp_path / "detections.json").read_text())
    assert len(detections) == 300 and {d["category_id"] for d in detections} <= set(COCO_CATEGORY_IDS)
    assert {d["category_id"] for d in detections} >= {1, 3}  # person, car: COCO's ids, not class indices
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["AP"] == pytest.approx(100.0, abs=0.05) and metrics["AP50"] == pytest.approx(100.0, abs=0.05)


@pytest.mark.slow
def test_ablation_runs_on_the_pkl_and_knows_it_has_no_context(photo_set, tmp_path):
    """tools/ablation.py takes a detectron2 file; its baseline row is detectron2's detections (AP 100 here)."""
    r = run_tool("tools/ablation.py", photo_set, tmp_path, "--scales", "168", "224", "280")
    assert r.returncode == 0, r.stderr[-2000:]
    table = (tmp_path / "ablation" / "table.txt").read_text()
    assert "(no context)" in table
    baseline = sorted(p for p in (tmp_path / "ablation").iterdir() if p.is_dir())[0]
    assert json.loads((baseline / "metrics.json").read_text())["AP"] == pytest.approx(100.0, abs=0.05)
