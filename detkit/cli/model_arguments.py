"""The model options of the demo scripts (demo/video.py, demo/image.py) and the predictor they choose: a config with
its weights run by `detkit.Predictor`, or an exported file run by `detkit.OnnxPredictor`. torch is imported only
for the former, so `--onnx` runs where only onnxruntime, numpy and OpenCV are installed."""

import logging
from pathlib import Path

from detkit.config import load_config
from detkit.engine.setup import ArgumentParser, default_output_dir
from detkit.errors import UserError

logger = logging.getLogger("detkit")

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = "configs/shapes_r18.yaml"  # the embedded default; found relative to the repo when not in the cwd
DEFAULT_SCORE_THRESHOLD = 0.5


def add_model_arguments(parser: ArgumentParser) -> None:
    """--config, --weights, --onnx, --json, --score-threshold, --device and KEY=VALUE overrides."""
    parser.add_argument("--config", metavar="CFG", help=f"model config (default: {DEFAULT_CONFIG})")
    parser.add_argument(
        "--weights", metavar="W",
        help="checkpoint (default: output/<config stem>/model_final.pth, what tools/train_net.py writes)",
    )
    parser.add_argument(
        "--onnx", metavar="MODEL.onnx",
        help="run this exported file (tools/export.py) with onnxruntime instead of the PyTorch model; its "
        "test settings are fixed in the file, so --config, --weights and KEY=VALUE do not apply",
    )
    parser.add_argument("--json", metavar="OUT.jsonl", help="also write the detections, one JSON line per frame/image")
    parser.add_argument(
        "--score-threshold", type=float, default=DEFAULT_SCORE_THRESHOLD, metavar="S",
        help=f"draw and write detections scoring at least S; also sets model.roi_heads.score_threshold "
        f"(default: {DEFAULT_SCORE_THRESHOLD})",
    )
    parser.add_argument("--device", help="cpu, cuda or cuda:N; sets model.device (default: the config's)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. input.min_size_test=320")


def check_model_arguments(parser: ArgumentParser, args) -> None:
    """Usage errors of the model options (exit 2 through the parser): the threshold's range, --onnx with options it ignores."""
    if not 0.0 <= args.score_threshold <= 1.0:
        parser.error(f"--score-threshold must lie in [0, 1], got {args.score_threshold}")
    if args.onnx:
        given = [flag for flag, value in [("--config", args.config), ("--weights", args.weights)] if value]
        given += ["KEY=VALUE overrides"] if args.overrides else []
        if given:
            parser.error(f"--onnx runs the exported file as it is: {', '.join(given)} cannot change it "
                         "(export again with tools/export.py to change the model or its test settings)")


def build_onnx_predictor(args):
    """`detkit.OnnxPredictor` on --onnx; --device cuda picks onnxruntime's CUDA provider."""
    from detkit.onnx_predictor import OnnxPredictor

    providers = None
    if args.device and args.device.startswith("cuda"):
        providers = ["CUDAExecutionProvider"]
    predictor = OnnxPredictor(args.onnx, providers=providers)
    logger.info(f"model: {args.onnx} on {predictor.device} (detections below the export's score threshold "
                f"{predictor.settings.get('model.roi_heads.score_threshold', '?')} are not in the file's output)")
    return predictor


def build_predictor(args):
    """Config (default: the embedded shapes config) + overrides, then the weights (default: what train_net writes);
    with --onnx, the exported file in onnxruntime instead."""
    if args.onnx:
        return build_onnx_predictor(args)
    from detkit.predictor import Predictor  # here: with --onnx, torch is never imported
    if args.config:
        config = Path(args.config)
    else:
        config = Path(DEFAULT_CONFIG) if Path(DEFAULT_CONFIG).is_file() else REPO_ROOT / DEFAULT_CONFIG
    overrides = [f"model.roi_heads.score_threshold={args.score_threshold}"]
    if args.device:
        overrides.append(f"model.device={args.device}")
    cfg = load_config(config, overrides + list(args.overrides))  # the user's KEY=VALUE come last and win
    if args.weights:
        weights = Path(args.weights)
        if not weights.is_file():
            raise UserError(f"weights not found: {weights}")
    else:
        weights = default_output_dir(str(config)) / "model_final.pth"
        if not weights.is_file():
            raise UserError(
                f"no trained weights at {weights} (the default for {config.name}): train first with "
                f"`python tools/train_net.py --config {args.config or DEFAULT_CONFIG}`, or pass --weights W"
            )
    predictor = Predictor(cfg, weights)
    logger.info(f"model: {config} with {weights} on {predictor.device}")
    return predictor
