"""Run the detector on an image or on every image of a folder, and write annotated copies.

    python demo/image.py INPUT [--output DIR] [--config CFG] [--weights W] [--json OUT.jsonl]
                         [--score-threshold S] [--device cpu|cuda] [KEY=VALUE ...]
    python demo/image.py INPUT --onnx model.onnx [--output DIR] [--json OUT.jsonl] [--score-threshold S]

INPUT is an image file or a folder (its images, not its subfolders). Annotated images keep their file names
and go to DIR; the default is `<folder>_detkit/` beside a folder and `<stem>_detkit<ext>` beside a single
image. With --json, one line per image: {"image": path, "width", "height", "detections": [...]} (the
detections as in demo/video.py). The model options are those of demo/video.py.
"""

import json
import logging
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from detkit.cli.json_lines import detections_to_json
from detkit.cli.model_arguments import add_model_arguments, build_predictor, check_model_arguments
from detkit.cli.output_paths import ensure_writable
from detkit.engine.setup import ArgumentParser, setup_logging, user_errors_exit
from detkit.errors import UserError
from detkit.visualize import draw_detections

logger = logging.getLogger("detkit")

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def read_image(path: Path) -> np.ndarray | None:
    """BGR uint8 (H, W, 3), or None when the file is not a decodable image (np.fromfile: non-ASCII paths work)."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    return image if image is not None and image.size else None


def write_image(path: Path, image: np.ndarray) -> None:
    """Encode by the file's extension (.png when it has none); JPEG at quality 95. The quality flag goes to JPEG
    alone: given to another encoder, OpenCV prints an "unsupported key" warning through the progress bar."""
    suffix = path.suffix.lower() or ".png"
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if suffix in (".jpg", ".jpeg") else []
    ok, data = cv2.imencode(suffix, image, params)
    if not ok:
        raise UserError(f"cannot encode {path} as {path.suffix} with OpenCV")
    try:
        data.tofile(path)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None


def list_inputs(input_path: Path, output: str | None) -> list[tuple[Path, Path]]:
    """(image, annotated output) pairs, sorted by file name."""
    if not input_path.exists():
        raise UserError(f"input not found: {input_path}")
    if input_path.is_dir():
        images = sorted(p for p in input_path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not images:
            raise UserError(f"{input_path} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        out_dir = Path(output) if output else input_path.parent / f"{input_path.name}_detkit"
        pairs = [(p, out_dir / p.name) for p in images]
    elif output:
        pairs = [(input_path, Path(output) / input_path.name)]
    else:
        pairs = [(input_path, input_path.with_name(f"{input_path.stem}_detkit{input_path.suffix}"))]
    out_dir = pairs[0][1].parent
    if out_dir.resolve() == pairs[0][0].parent.resolve():
        if any(src.name == dst.name for src, dst in pairs):
            raise UserError(f"--output {out_dir} is the input's own folder: the input images would be overwritten")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--output {out_dir} is a file: give a folder")
    return pairs


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description="Detect objects in images and write annotated copies.")
    parser.add_argument("input", metavar="INPUT", help="an image file or a folder of images")
    parser.add_argument("--output", metavar="DIR", help="folder for the annotated images "
                        "(default: <folder>_detkit/ beside a folder, <stem>_detkit<ext> beside an image)")
    add_model_arguments(parser)
    args = parser.parse_intermixed_args(argv)
    check_model_arguments(parser, args)
    setup_logging()

    input_path = Path(args.input)
    pairs = list_inputs(input_path, args.output)
    if len(pairs) == 1 and read_image(pairs[0][0]) is None:
        raise UserError(f"cannot read {pairs[0][0]} as an image (corrupt, or not an image?)")
    out_dir = pairs[0][1].parent
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output folder {out_dir}: {e.strerror or e}") from None
    json_path = Path(args.json) if args.json else None
    if json_path is not None:
        ensure_writable(json_path, "JSON file")
    predictor = build_predictor(args)

    json_file = open(json_path, "w", buffering=1) if json_path else None
    written = unreadable = num_detections = 0
    start = time.perf_counter()
    try:
        with logging_redirect_tqdm(loggers=[logger]):
            for src, dst in tqdm(pairs, desc=input_path.name, unit="image", dynamic_ncols=True, file=sys.stderr):
                image = read_image(src)
                if image is None:
                    unreadable += 1
                    logger.warning(f"skipping {src}: not a readable image")
                    record = {"image": str(src), "detections": [], "error": "unreadable image"}
                else:
                    out = predictor(image)
                    detections = detections_to_json(out, predictor.class_names, args.score_threshold)
                    num_detections += len(detections)
                    write_image(dst, draw_detections(image, out["boxes"], out["scores"], out["labels"],
                                                     predictor.class_names, score_threshold=args.score_threshold))
                    written += 1
                    record = {"image": str(src), "width": image.shape[1], "height": image.shape[0],
                              "detections": detections}
                if json_file is not None:
                    json_file.write(json.dumps(record) + "\n")
    finally:
        if json_file is not None:
            json_file.close()

    elapsed = time.perf_counter() - start
    wrote = pairs[0][1] if len(pairs) == 1 else out_dir
    skipped = f", skipped {unreadable} unreadable" if unreadable else ""
    logger.info(
        f"{written} images{skipped} in {elapsed:.1f} s ({1000 * elapsed / max(written, 1):.0f} ms/image), "
        f"{num_detections} detections at score >= {args.score_threshold:g}; wrote {wrote}"
        + (f" and {json_path}" if json_path else "")
    )


if __name__ == "__main__":
    main()
