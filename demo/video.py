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

from detkit.cli.json_lines import detections_to_json  # noqa: E402
from detkit.cli.model_arguments import add_model_arguments, build_predictor, check_model_arguments  # noqa: E402
from detkit.cli.output_paths import ensure_writable  # noqa: E402
from detkit.engine.setup import ArgumentParser, setup_logging, user_errors_exit  # noqa: E402
from detkit.errors import UserError  # noqa: E402
from detkit.visualize import draw_detections  # noqa: E402

logger = logging.getLogger("detkit")

# Output extension -> FourCC. opencv-python-headless ships FFmpeg without an H.264 encoder, so .mp4 gets
# MPEG-4 Part 2 ("mp4v"), which every common player reads; .avi gets Motion-JPEG (every frame a JPEG).
CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}
MAX_DECODE_FAILURES = 100  # consecutive failed frames after which a stream counts as ended
WINDOW = "detkit"


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


class FrameAnnotator:
    """Detects and draws one frame at a time, standing in the previous annotated frame for frames that failed to
    decode and resizing frames of another size to the first one's; counts what it saw for the summary line."""

    def __init__(self, predictor, *, name: str, fps: float, size: tuple[int, int], score_threshold: float):
        self.predictor, self.name, self.fps, self.score_threshold = predictor, name, fps, score_threshold
        self.width, self.height = size
        self.previous = np.zeros((self.height, self.width, 3), np.uint8)  # black until the first decoded frame
        self.detections = self.decode_failures = 0
        self.detector_time = 0.0
        self.resized_warned = False

    def __call__(self, index: int, frame: np.ndarray | None) -> tuple[dict, np.ndarray]:
        """(the frame's JSON record, the annotated BGR frame to write)."""
        record = {"frame": index, "time": round(index / self.fps, 6), "detections": []}
        if frame is None:
            self.decode_failures += 1
            if self.decode_failures == 1:
                logger.warning(
                    f"{self.name}: frame {index} failed to decode; the previous annotated frame stands in for it "
                    "(JSON: \"error\": \"decode failed\"); later failures are only counted"
                )
            record["error"] = "decode failed"
            return record, self.previous
        if frame.shape[:2] != (self.height, self.width):
            if not self.resized_warned:
                logger.warning(f"{self.name}: frame {index} is {frame.shape[1]}x{frame.shape[0]}, "
                               f"resized to the first frame's {self.width}x{self.height}")
                self.resized_warned = True
            frame = cv2.resize(frame, (self.width, self.height), interpolation=cv2.INTER_AREA)
        t0 = time.perf_counter()
        out = self.predictor(frame)
        self.detector_time += time.perf_counter() - t0
        record["detections"] = detections_to_json(out, self.predictor.class_names, self.score_threshold)
        self.detections += len(record["detections"])
        self.previous = draw_detections(frame, out["boxes"], out["scores"], out["labels"],
                                        self.predictor.class_names, score_threshold=self.score_threshold)
        return record, self.previous

    def summary(self, frames: int, elapsed: float) -> str:
        """The closing log line for `frames` written frames."""
        decoded = frames - self.decode_failures
        rate = frames / elapsed if elapsed > 0 else 0.0
        failures = f", {self.decode_failures} failed to decode" if self.decode_failures else ""
        return (
            f"{frames} frames{failures} in {elapsed:.1f} s: {1000 * elapsed / max(frames, 1):.1f} ms/frame "
            f"({rate:.1f} frames/s; detector {1000 * self.detector_time / max(decoded, 1):.1f} ms/frame), "
            f"{self.detections} detections at score >= {self.score_threshold:g}"
        )


def run(predictor, stream, args, *, name: str, output: Path, json_path: Path | None, fps: float,
        total: int | None, size: tuple[int, int]) -> None:
    """Detect, draw, write: one output frame and one JSON line per input frame index."""
    annotate = FrameAnnotator(predictor, name=name, fps=fps, size=size, score_threshold=args.score_threshold)
    writer = open_writer(output, fps, *size)
    json_file = open(json_path, "w", buffering=1) if json_path else None  # line-buffered: complete lines on Ctrl-C
    written = 0
    start = time.perf_counter()
    try:
        with logging_redirect_tqdm(loggers=[logger]), tqdm(
            total=total, desc=name, unit="frame", dynamic_ncols=True, file=sys.stderr
        ) as bar:
            for index, frame in stream:
                record, annotated = annotate(index, frame)
                writer.write(annotated)
                if json_file is not None:
                    json_file.write(json.dumps(record) + "\n")
                written += 1
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
    wrote = f"wrote {output}" + (f" and {json_path}" if json_path else "")
    logger.info(f"{annotate.summary(written, time.perf_counter() - start)}; {wrote}")


if __name__ == "__main__":
    main()
