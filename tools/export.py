"""Export a trained detector to one ONNX file, checked against PyTorch before it is written.

    python tools/export.py --config CFG --weights W --output model.onnx [KEY=VALUE ...]

The file takes `image`, a BGR uint8 (H, W, 3) array of any size, exactly as `detkit.Predictor` takes it, and
returns `boxes` (D, 4) float32 xyxy in that image's pixels, `scores` (D,), `labels` (D,) int64; class names
(and category ids when the weights know them) are in its metadata. `detkit.OnnxPredictor` runs it with
onnxruntime. See the README's Deploy section for what the graph holds and what it refuses.
"""

import logging
from pathlib import Path

from detkit.config import load_config
from detkit.engine.setup import ArgumentParser, setup_logging, user_errors_exit
from detkit.errors import UserError
from detkit.export.onnx_file import export_from_config

logger = logging.getLogger("detkit")


@user_errors_exit
def main() -> None:
    parser = ArgumentParser(description="Export a detector to ONNX (onnxruntime checked against PyTorch first).")
    parser.add_argument("--config", required=True, help="YAML config the model was trained with")
    parser.add_argument("--weights", help="checkpoint (detkit, or a detectron2 .pkl/.pth); omitted: untrained heads")
    parser.add_argument("--output", required=True, help="the .onnx file to write")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides, e.g. model.roi_heads.score_threshold=0.3")
    args = parser.parse_args()

    cfg = load_config(args.config, args.overrides)
    output = Path(args.output)
    if output.is_dir():
        raise UserError(f"--output {output} is a folder: give a file name such as {output / 'model.onnx'}")
    setup_logging()
    report = export_from_config(cfg, args.weights, output)
    checks = "; ".join(
        f"{h}x{w}: {n} detections, worst IoU {c['worst_iou']:.4f}, score diff {c['max_score_diff']:.1e}"
        for c in report["checks"] for (h, w), n in [(c["size"], c["counts"][0])]
    )
    logger.info(f"onnxruntime agrees with PyTorch ({checks})")
    logger.info(
        f"wrote {output} ({report['bytes'] / 2**20:.1f} MiB) in {report['export_s'] + report['check_s']:.1f} s "
        f"(trace and convert {report['export_s']:.1f} s, check {report['check_s']:.1f} s)"
    )


if __name__ == "__main__":
    main()
