"""PyTorch eager against onnxruntime on the same image, taking turns in one run (tools/benchmark.py --onnx)."""

import tempfile
from pathlib import Path

import numpy as np
import torch

from detkit.benchmark.compare import compare_detections
from detkit.benchmark.timing import time_interleaved
from detkit.export.onnx_file import CHECK_BOX_TOL, export_model
from detkit.modeling.detector import FasterRCNN


def time_onnx(model: FasterRCNN, plain: FasterRCNN, image: torch.Tensor, *, warmup: int = 1, runs: int = 3) -> dict:
    """Export `plain` (the same weights as `model`, no speed-ups; CPU) to ONNX with its self-check, then time
    `model([image])` (the config's speed-ups) and onnxruntime on the same image (BGR uint8, as Predictor takes it)
    in turns, onnxruntime with as many threads as torch. Returns the export report, both times, the
    onnxruntime / PyTorch time ratio and whether both give the same detections on this image."""
    import onnxruntime

    num_classes = plain.roi_heads.num_classes
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        report = export_model(plain, path, class_names=[f"class_{i}" for i in range(num_classes)])
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    # (3, H, W) RGB -> (H, W, 3) BGR
    bgr = np.ascontiguousarray(image.cpu().numpy().transpose(1, 2, 0)[:, :, ::-1])
    with torch.inference_mode():
        ours = model([image])[0]
    boxes, scores, labels = session.run(["boxes", "scores", "labels"], {"image": bgr})
    theirs = {"boxes": torch.from_numpy(boxes), "scores": torch.from_numpy(scores), "labels": torch.from_numpy(labels)}
    ours = {k: v.float().cpu() if k != "labels" else v.cpu() for k, v in ours.items()}
    check = compare_detections(ours, theirs, box_tol=CHECK_BOX_TOL)
    times = time_interleaved(
        {"pytorch": lambda: model([image]), "onnxruntime": lambda: session.run(None, {"image": bgr})},
        device=model.device, warmup=warmup, runs=runs,
    )
    return {
        "export": report,
        "times": times,
        "ratio_onnxruntime_to_pytorch": times["onnxruntime"]["median_ms"] / times["pytorch"]["median_ms"],
        "same_detections": check,
        "onnxruntime_threads": options.intra_op_num_threads,
    }
