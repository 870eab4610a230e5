"""Run the detector over a video or a camera, frame by frame.

    python demo/video.py INPUT [--config CFG] [--weights W] [--output OUT] [--json OUT.jsonl]
                         [--score-threshold S] [--device cpu|cuda] [--show] [KEY=VALUE ...]
    python demo/video.py INPUT --onnx model.onnx [--output OUT] [--json OUT.jsonl] [--score-threshold S]

INPUT is any file OpenCV's FFmpeg backend reads (mp4/H.264, avi, mkv, ...) or a camera index (all digits).
Writes OUT, the annotated video with the input's frame count, frame size and fps (default:
`<input stem>_detkit.mp4` beside the input), and with --json one line per frame:
{"frame": i, "time": i / fps, "detections": [{"box": [x0, y0, x1, y1], "score": s, "label": k, "name": str}]}.
A frame that fails to decode is replaced by the previous annotated frame (black before the first one) and
its JSON line carries "error": "decode failed", so frame numbers and times keep matching the input's.
See the README's Demo section for the codecs. With --onnx the detector is an exported file (tools/export.py)
run by onnxruntime (`detkit.OnnxPredictor`): torch is not imported, only onnxruntime, numpy and OpenCV.
"""

import itertools
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

# FFmpeg's own decoder messages would break through the progress bar; failures are reported below instead.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402
from tqdm.contrib.logging import logging_redirect_tqdm  # noqa: E402

from detkit import load_config  # noqa: E402
from detkit.engine.setup import ArgumentParser, default_output_dir, setup_logging, user_errors_exit  # noqa: E402
from detkit.errors import UserError  # noqa: E402
from detkit.visualize import class_name, draw_detections  # noqa: E402

logger = logging.getLogger("detkit")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = "configs/shapes_r18.yaml"  # the embedded default; found relative to the repo when not in the cwd
DEFAULT_SCORE_THRESHOLD = 0.5
# Output extension -> FourCC. opencv-python-headless ships FFmpeg without an H.264 encoder, so .mp4 gets
# MPEG-4 Part 2 ("mp4v"), which every common player reads; .avi gets Motion-JPEG (every frame a JPEG).
CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}
MAX_DECODE_FAILURES = 100  # consecutive failed frames after which a stream counts as ended
WINDOW = "detkit"


# ---- shared with demo/image.py -------------------------------------------------------------------


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


def detections_to_json(out: dict[str, np.ndarray], class_names: list[str], score_threshold: float) -> list[dict]:
    """Predictor output -> [{"box": [x0, y0, x1, y1], "score", "label", "name"}] for scores >= threshold."""
    return [
        {"box": [round(float(v), 2) for v in box], "score": round(float(score), 4), "label": int(label),
         "name": class_name(int(label), class_names)}
        for box, score, label in zip(out["boxes"], out["scores"], out["labels"])
        if score >= score_threshold
    ]


def ensure_writable(path: Path, what: str) -> None:
    """Create the parent folders and make sure `path` can be written, before any slow work starts."""
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder: give a file name")
    folder = next((p for p in path.absolute().parents if p.exists()), None)
    if folder is not None and not folder.is_dir():
        raise UserError(f"cannot write {what} {path}: {folder} is a file, not a folder")
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab"):
            pass
    except OSError as e:
        raise UserError(f"cannot write {what} {path}: {e.strerror or e}") from None
    if not existed:
        path.unlink()


# ---- video input and output ----------------------------------------------------------------------


def open_input(source: str) -> tuple[cv2.VideoCapture, str, bool]:
    """Open a file (FFmpeg backend) or a camera (all-digit source); returns (capture, name, is_camera)."""
    if source.isdigit():
        cap = cv2.VideoCapture(int(source))
        if not cap.isOpened():
            raise UserError(f"cannot open camera {source}: is it connected and not used by another program?")
        return cap, f"camera{source}", True
    path = Path(source)
    if not path.exists():
        raise UserError(f"input video not found: {path}")
    if path.is_dir():
        raise UserError(f"{path} is a folder: give a video file (for a folder of images use demo/image.py)")
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not cap.isOpened():
        raise UserError(
            f"cannot read {path} as a video: OpenCV's FFmpeg backend could not open it (corrupt or not a video?)"
        )
    return cap, path.name, False


def read_frames(cap: cv2.VideoCapture, total: int | None) -> Iterator[tuple[int, np.ndarray | None]]:
    """Yield (frame index, BGR frame), with None for a frame that failed to decode.

    A failed grab before `total` frames (the container's count) is a damaged frame when a later grab
    succeeds; failures running into the end of the stream are not reported (the count is often an estimate).
    """
    index = failed = 0
    while True:
        if not cap.grab():
            if total and index + failed < total and failed < MAX_DECODE_FAILURES:
                failed += 1
                continue
            return
        for _ in range(failed):
            yield index, None
            index += 1
        failed = 0
        ok, frame = cap.retrieve()
        yield index, frame if ok and frame is not None and frame.size else None
        index += 1


def resolve_output(args, input_name: str, is_camera: bool, width: int, height: int) -> Path:
    """--output, or `<stem>_detkit.mp4` beside the input (.avi when the frame size is odd, see open_writer)."""
    odd = width % 2 or height % 2
    if args.output:
        output = Path(args.output)
        ext = output.suffix.lower()
        if ext not in CODECS:
            raise UserError(
                f"--output {output}: unsupported extension {ext or '(none)'!r}; use one of {', '.join(CODECS)}"
            )
        if odd and ext != ".avi":
            raise UserError(
                f"the input's frame size {width}x{height} is odd, and OpenCV's FFmpeg writer would crop {ext} "
                f"output to {width - width % 2}x{height - height % 2}: write an .avi instead (--output "
                f"{output.with_suffix('.avi')})"
            )
        return output
    ext = ".avi" if odd else ".mp4"
    stem = input_name if is_camera else Path(args.input).stem
    folder = Path(".") if is_camera else Path(args.input).parent
    output = folder / f"{stem}_detkit{ext}"
    if odd:
        logger.info(f"frame size {width}x{height} is odd: writing {output} (Motion-JPEG AVI keeps the exact size)")
    return output


def open_writer(path: Path, fps: float, width: int, height: int) -> cv2.VideoWriter:
    ext = path.suffix.lower()
    fourcc = cv2.VideoWriter_fourcc(*CODECS[ext])
    if width % 2 or height % 2:
        # OpenCV's FFmpeg writer drops the last row/column of odd sizes; its own MJPEG AVI writer keeps them
        # but stores the frame rate as an integer.
        if fps != round(fps):
            logger.warning(f"{path}: the MJPEG AVI writer stores {fps:g} fps as {round(fps)} fps")
        writer = cv2.VideoWriter(str(path), cv2.CAP_OPENCV_MJPEG, fourcc, fps, (width, height))
    else:
        writer = cv2.VideoWriter(str(path), cv2.CAP_FFMPEG, fourcc, fps, (width, height))
    if not writer.isOpened():
        raise UserError(f"cannot write video {path} ({CODECS[ext]}, {width}x{height}, {fps:g} fps) with OpenCV")
    return writer


def check_display() -> None:
    """--show needs a GUI build of OpenCV and a display; say so before any work starts."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise UserError("--show needs a display (DISPLAY is not set); drop --show and watch the output file")
    try:
        cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)
    except cv2.error:
        raise UserError(
            "--show needs OpenCV with GUI support, and this one is opencv-python-headless: drop --show, "
            "or install opencv-python in its place"
        ) from None


# ---- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None):
    parser = ArgumentParser(description="Detect objects in a video, frame by frame, and write an annotated copy.")
    parser.add_argument("input", metavar="INPUT", help="video file, or a camera index such as 0")
    parser.add_argument("--output", metavar="OUT", help="annotated video, .mp4 (mp4v), .avi (MJPG), .mkv or .mov "
                        "(default: <input stem>_detkit.mp4 beside the input)")
    parser.add_argument("--show", action="store_true", help="also show the annotated frames in a window (q/Esc stops)")
    add_model_arguments(parser)
    args = parser.parse_intermixed_args(argv)
    check_model_arguments(parser, args)
    return args


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging()
    try:  # OpenCV's own warnings (e.g. about a file it cannot open) would add lines to our one-line errors
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except AttributeError:  # OpenCV builds without the logging binding
        pass
    if args.show:
        check_display()

    cap, name, is_camera = open_input(args.input)
    try:
        fps = cap.get(cv2.CAP_PROP_FPS)
        if not math.isfinite(fps) or fps <= 0:
            fps = 30.0
            logger.warning(f"{name} does not state its frame rate: writing {fps:g} fps")
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        total = int(count) if not is_camera and math.isfinite(count) and count > 0 else None

        # The first decodable frame gives the size (it can differ from the container's, e.g. rotated phone video).
        frames = read_frames(cap, total)
        leading = 0
        for first_index, first in frames:
            if first is not None:
                break
            leading += 1
        else:
            raise UserError(f"{name} has no frames that decode" if leading else f"{name} has no frames")
        height, width = first.shape[:2]

        output = resolve_output(args, name, is_camera, width, height)
        if not is_camera and output.resolve() == Path(args.input).resolve():
            raise UserError(f"--output {output} is the input itself: choose another file name")
        ensure_writable(output, "output video")
        json_path = Path(args.json) if args.json else None
        if json_path is not None:
            if json_path.resolve() == output.resolve():
                raise UserError(f"--json {json_path} is the output video itself: choose another file name")
            ensure_writable(json_path, "JSON file")

        predictor = build_predictor(args)
        stream = itertools.chain(((i, None) for i in range(leading)), [(first_index, first)], frames)
        run(predictor, stream, args, name=name, output=output, json_path=json_path, fps=fps, total=total,
            size=(width, height))
    finally:
        cap.release()


def run(predictor, stream, args, *, name: str, output: Path, json_path: Path | None, fps: float,
        total: int | None, size: tuple[int, int]) -> None:
    """Detect, draw, write: one output frame and one JSON line per input frame index."""
    width, height = size
    writer = open_writer(output, fps, width, height)
    json_file = open(json_path, "w", buffering=1) if json_path else None  # line-buffered: complete lines on Ctrl-C
    written = num_detections = decode_failures = 0
    resized_warned = False
    detector_time = 0.0
    previous = np.zeros((height, width, 3), np.uint8)  # stands in for frames that fail to decode
    start = time.perf_counter()
    try:
        with logging_redirect_tqdm(loggers=[logger]), tqdm(
            total=total, desc=name, unit="frame", dynamic_ncols=True, file=sys.stderr
        ) as bar:
            for index, frame in stream:
                record = {"frame": index, "time": round(index / fps, 6), "detections": []}
                if frame is None:
                    decode_failures += 1
                    if decode_failures == 1:
                        logger.warning(
                            f"{name}: frame {index} failed to decode; the previous annotated frame stands in for it "
                            "(JSON: \"error\": \"decode failed\"); later failures are only counted"
                        )
                    record["error"] = "decode failed"
                    annotated = previous
                else:
                    if frame.shape[:2] != (height, width):
                        if not resized_warned:
                            logger.warning(f"{name}: frame {index} is {frame.shape[1]}x{frame.shape[0]}, "
                                           f"resized to the first frame's {width}x{height}")
                            resized_warned = True
                        frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
                    t0 = time.perf_counter()
                    out = predictor(frame)
                    detector_time += time.perf_counter() - t0
                    record["detections"] = detections_to_json(out, predictor.class_names, args.score_threshold)
                    num_detections += len(record["detections"])
                    annotated = draw_detections(frame, out["boxes"], out["scores"], out["labels"],
                                                predictor.class_names, score_threshold=args.score_threshold)
                writer.write(annotated)
                if json_file is not None:
                    json_file.write(json.dumps(record) + "\n")
                written += 1
                previous = annotated
                bar.update(1)
                if args.show:
                    cv2.imshow(WINDOW, annotated)
                    if (cv2.waitKey(1) & 0xFF) in (27, ord("q")):
                        logger.info("stopped from the window")
                        break
    except KeyboardInterrupt:
        logger.warning(f"interrupted: {output} holds the {written} frames written so far")
        raise
    finally:
        writer.release()  # writes the container's index, so the file plays even after an error
        if json_file is not None:
            json_file.close()
        if args.show:
            cv2.destroyAllWindows()

    elapsed = time.perf_counter() - start
    decoded = written - decode_failures
    per_frame = 1000 * elapsed / max(written, 1)
    rate = written / elapsed if elapsed > 0 else 0.0
    detector_ms = 1000 * detector_time / max(decoded, 1)
    failures = f", {decode_failures} failed to decode" if decode_failures else ""
    logger.info(
        f"{written} frames{failures} in {elapsed:.1f} s: {per_frame:.1f} ms/frame ({rate:.1f} frames/s; "
        f"detector {detector_ms:.1f} ms/frame), {num_detections} detections at score >= {args.score_threshold:g}; "
        f"wrote {output}" + (f" and {json_path}" if json_path else "")
    )


if __name__ == "__main__":
    main()
