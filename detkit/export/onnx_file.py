"""Writes a detector as one ONNX file, after checking that onnxruntime gives PyTorch's detections.

The file: input `image` (H, W, 3) uint8 BGR with H and W dynamic; outputs `boxes` (D, 4) float32 xyxy in the
image's pixels, `scores` (D,) float32, `labels` (D,) int64 (see `detkit.export.graph`). Metadata (ONNX
metadata_props, JSON values): `class_names`, `category_ids` (when the weights know them), `detkit_version`,
`test_settings` (the test-time keys baked into the graph).

Before writing, onnxruntime runs the graph on two synthetic images of different sizes, neither the size the
graph was traced at, and the detections are compared with PyTorch's on the same model (same labels, IoU >= 0.99,
scores within 1e-3; corners within 0.05 px also count as the same box, which decides for boxes too thin for
IoU to mean anything; `detkit.benchmark.compare`). A file that disagrees is not written.
"""

import copy
import io
import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from detkit.atomic_write import write_atomically
from detkit.benchmark.compare import compare_detections
from detkit.checkpoint.formats import read_detector_weights
from detkit.errors import UserError
from detkit.export.graph import DeployGraph
from detkit.modeling.build import load_detector
from detkit.modeling.detector import FasterRCNN
from detkit.modeling.test_time import Augmentation
from detkit.version import __version__

logger = logging.getLogger("detkit")

OPSET = 17  # roi_align(aligned=True) needs 16 (ONNX RoiAlign's half_pixel mode)
OUTPUTS = ("boxes", "scores", "labels")
CHECK_MIN_IOU = 0.99
CHECK_SCORE_TOL = 1e-3
CHECK_BOX_TOL = 0.05  # pixels; decides for boxes too thin for IoU to mean anything (see compare_detections)


UNSUPPORTED = {
    "pil": "input.test_resize=pil is not supported by the ONNX export: PIL's antialiased uint8 resize has no exact "
    "ONNX equivalent; export with input.test_resize=tensor (the default; detections then move slightly)",
    "maxout": "test.multiscale_mode=maxout (with test.scales or test.flip) is not supported by the ONNX export; "
    "use test.multiscale_mode=union or single-scale testing",
}


def unsupported_settings(cfg) -> list[str]:
    """One line per config setting the exported graph cannot compute (empty: exportable)."""
    problems = []
    if cfg.input.test_resize == "pil":
        problems.append(UNSUPPORTED["pil"])
    if cfg.test.multiscale_mode == "maxout" and (cfg.test.scales or cfg.test.flip):
        problems.append(UNSUPPORTED["maxout"])
    return problems


def check_exportable(cfg) -> None:
    problems = unsupported_settings(cfg)
    if problems:
        raise UserError(problems[0])


def synthetic_image(height: int, width: int, seed: int) -> np.ndarray:
    """(H, W, 3) uint8 BGR: a smooth background with noise and a few solid rectangles (something to detect)."""
    rng = np.random.RandomState(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = (60 + 80 * np.sin(xs / max(width, 1) * 3 + ys / max(height, 1) * 2))[..., None] * np.ones(3)
    image = base + rng.randint(0, 20, (height, width, 3))
    for _ in range(6):
        h, w = rng.randint(max(height // 8, 2), max(height // 2, 3)), rng.randint(max(width // 8, 2), max(width // 2, 3))
        y, x = rng.randint(0, height - h + 1), rng.randint(0, width - w + 1)
        image[y : y + h, x : x + w] = rng.randint(0, 256, 3)
    return np.clip(image, 0, 255).astype(np.uint8)


def check_sizes(min_size_test: int) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """(size the graph is traced at, [landscape, portrait] sizes it is checked at)."""
    s = min_size_test if min_size_test > 0 else 256
    return (s, s * 4 // 3 + 6), [(s * 3 // 4 + 1, s * 3 // 2 - 3), (s * 3 // 2 + 5, s - 7)]


def reference_detections(model: FasterRCNN, image_bgr: np.ndarray, augmentation: Augmentation) -> dict:
    """PyTorch's detections for a BGR image as `Predictor` computes them (its conversion, then the test-time
    system of test_net)."""
    rgb = torch.from_numpy(np.ascontiguousarray(image_bgr[:, :, ::-1].transpose(2, 0, 1)))
    with torch.inference_mode():
        out = augmentation(model, [rgb])[0]
    return {k: v.float().cpu() if k != "labels" else v.cpu() for k, v in out.items()}


def to_onnx_bytes(graph: DeployGraph, example: np.ndarray) -> bytes:
    """Trace `graph` on one image and convert it (TorchScript-based exporter: torchvision's nms and
    roi_align/roi_pool carry ONNX conversions there)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python values; sizes that matter are tensors
        torch.onnx.export(
            graph,
            (torch.from_numpy(example),),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=["image"],
            output_names=list(OUTPUTS),
            dynamic_axes={"image": {0: "height", 1: "width"}, **{name: {0: "detections"} for name in OUTPUTS}},
        )
    return buffer.getvalue()


def with_metadata(onnx_bytes: bytes, metadata: dict) -> bytes:
    import onnx

    proto = onnx.load_from_string(onnx_bytes)
    proto.doc_string = "detkit Faster R-CNN C4: image (H, W, 3) uint8 BGR -> boxes (D, 4) xyxy, scores (D,), labels (D,)"
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    return proto.SerializeToString()


def self_check(onnx_bytes: bytes, model: FasterRCNN, images: list[np.ndarray], augmentation: Augmentation) -> list[dict]:
    """onnxruntime vs PyTorch on each image; raises UserError at the first disagreement."""
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    results = []
    for image in images:
        boxes, scores, labels = session.run(list(OUTPUTS), {"image": image})
        ours = {"boxes": torch.from_numpy(boxes), "scores": torch.from_numpy(scores), "labels": torch.from_numpy(labels)}
        ref = reference_detections(model, image, augmentation)
        c = compare_detections(ours, ref, min_iou=CHECK_MIN_IOU, score_tol=CHECK_SCORE_TOL, box_tol=CHECK_BOX_TOL)
        c["size"] = image.shape[:2]
        results.append(c)
        if not c["same"]:
            raise UserError(
                f"the exported graph disagrees with PyTorch on a {image.shape[0]}x{image.shape[1]} check image "
                f"({c['counts'][0]} vs {c['counts'][1]} detections, worst IoU {c['worst_iou']:.4f}, largest score "
                f"difference {c['max_score_diff']:.2e}); nothing written (please report this as a bug)"
            )
    return results


def export_model(
    model: FasterRCNN,
    path: str | Path,
    *,
    class_names: list[str],
    category_ids: list[int] | None = None,
    augmentation: Augmentation = Augmentation(),
    settings: dict | None = None,
) -> dict:
    """Export an eval-mode CPU `model` with its test-time `augmentation` (union mode) to `path` after the
    self-check; returns timings and the check results."""
    if augmentation.mode != "union" and (augmentation.scales or augmentation.flip):
        raise UserError(UNSUPPORTED["maxout"])
    if model.preprocessor.resize == "pil":
        raise UserError(UNSUPPORTED["pil"])
    pre = model.preprocessor
    traced_size, sizes = check_sizes(pre.min_size_test)
    graph = DeployGraph(model, scales=list(augmentation.scales), flip=augmentation.flip)
    start = time.perf_counter()
    onnx_bytes = to_onnx_bytes(graph, synthetic_image(*traced_size, seed=0))
    metadata = {"class_names": list(class_names), "detkit_version": __version__, "test_settings": settings or {}}
    if category_ids is not None:
        metadata["category_ids"] = [int(i) for i in category_ids]
    onnx_bytes = with_metadata(onnx_bytes, metadata)
    exported = time.perf_counter()
    images = [synthetic_image(h, w, seed=i + 1) for i, (h, w) in enumerate(sizes)]
    checks = self_check(onnx_bytes, model, images, augmentation)
    checked = time.perf_counter()
    write_atomically(path, lambda f: f.write(onnx_bytes))
    return {
        "export_s": exported - start,
        "check_s": checked - exported,
        "bytes": len(onnx_bytes),
        "checks": [{"size": list(c["size"]), "counts": list(c["counts"]), "worst_iou": c["worst_iou"],
                    "max_score_diff": c["max_score_diff"]} for c in checks],
    }


def baked_settings(cfg) -> dict:
    """The config keys whose values the graph holds (recorded in the file's metadata)."""
    return {
        "input.min_size_test": cfg.input.min_size_test,
        "input.max_size_test": cfg.input.max_size_test,
        "model.roi_heads.score_threshold": cfg.model.roi_heads.score_threshold,
        "model.roi_heads.detections_per_image": cfg.model.roi_heads.detections_per_image,
        "model.roi_heads.box_refinement": cfg.model.roi_heads.box_refinement,
        "model.roi_heads.global_context": cfg.model.roi_heads.global_context,
        "test.scales": list(cfg.test.scales),
        "test.flip": cfg.test.flip,
    }


def export_from_config(cfg, weights: str | Path | None, path: str | Path) -> dict:
    """tools/export.py: refuse unsupported settings, load `weights` as Predictor does (on the CPU, without
    torch.compile and AMP, which are PyTorch-only speed-ups), export with the self-check."""
    check_exportable(cfg)
    cfg = copy.deepcopy(cfg)
    cfg.model.device = "cpu"
    cfg.test.compile = False
    cfg.test.amp = False
    model, class_names = load_detector(cfg, weights)
    category_ids = read_detector_weights(weights, cfg=cfg).category_ids if weights is not None else None
    return export_model(
        model, path, class_names=class_names, category_ids=category_ids,
        augmentation=Augmentation.from_config(cfg), settings=baked_settings(cfg),
    )
