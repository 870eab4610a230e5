"""Explain what a detector gets wrong, from a saved results file:

    python tools/analyze.py --config CFG --results DIR/detections.json [--output REPORT_DIR] [KEY=VALUE ...]

Against data.test[I] of the config (default 0, COCO-format or VOC), writes a folder that opens in a
browser without a server (default: <results stem>_report/ beside the results): index.html, PNG figures
(per-class AP, precision-recall curves, the COCO error breakdown, confusion matrix, AP by object size),
a gallery of the images with the most errors, analysis.json (every number shown) and metrics.json.
"""

import time

from detkit.config import load_config
from detkit.engine.analyze import analyze_saved_results
from detkit.engine.setup import ArgumentParser, setup_logging, user_errors_exit
from detkit.evaluation.coco import COCO_BACKENDS


@user_errors_exit
def main() -> None:
    parser = ArgumentParser(description="Write an evaluation report (HTML + figures) of a saved detections file.")
    parser.add_argument("--config", required=True, help="YAML config whose data.test holds the ground truth")
    parser.add_argument("--results", required=True, help="detections.json (COCO results format)")
    parser.add_argument("--output", help="report folder (default: <results stem>_report beside the results)")
    parser.add_argument("--dataset-index", type=int, default=0, help="which data.test entry (default: 0)")
    parser.add_argument(
        "--score-threshold", type=float, default=0.5,
        help="score of the operating point, the confusion matrix and the gallery (default: 0.5)",
    )  # fmt: skip
    parser.add_argument("--gallery", type=int, default=12, help="images in the gallery (default: 12)")
    parser.add_argument(
        "--backend", choices=COCO_BACKENDS, default="pycocotools", help="COCOeval implementation (default: pycocotools)"
    )
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides, e.g. data.test=[{...}]")
    args = parser.parse_args()

    setup_logging()
    start = time.perf_counter()
    cfg = load_config(args.config, args.overrides)
    output, metrics = analyze_saved_results(
        cfg,
        args.results,
        output_dir=args.output,
        dataset_index=args.dataset_index,
        score_threshold=args.score_threshold,
        gallery_size=args.gallery,
        backend=args.backend,
        config_path=args.config,
    )
    summary = "  ".join(f"{k} {v:.2f}" for k, v in metrics.items() if isinstance(v, float))
    print(f"{summary}\nwrote {output / 'index.html'} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
