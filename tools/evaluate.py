"""Evaluate a saved detections file without running a model:

    python tools/evaluate.py --config CFG --results output/x/detections.json [--dataset-index I] [KEY=VALUE ...]

Scores it against data.test[I] (default 0) of the config, prints the tables tools/test_net.py
prints, and writes metrics.json beside the results (detections_1.json -> metrics_1.json).
"""

from detkit.config import load_config
from detkit.engine.setup import ArgumentParser, setup_logging, user_errors_exit
from detkit.engine.saved_results import evaluate_saved_results
from detkit.evaluation.coco import COCO_BACKENDS


@user_errors_exit
def main() -> None:
    parser = ArgumentParser(description="Evaluate a saved detections file against data.test of a config.")
    parser.add_argument("--config", required=True, help="YAML config whose data.test holds the ground truth")
    parser.add_argument("--results", required=True, help="detections.json (COCO results format)")
    parser.add_argument("--dataset-index", type=int, default=0, help="which data.test entry (default: 0)")
    parser.add_argument("--metrics", help="where to write the metrics (default: metrics.json beside --results)")
    parser.add_argument(
        "--backend", choices=COCO_BACKENDS, default="pycocotools", help="COCOeval implementation for COCO-format sets"
    )
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides, e.g. data.test=[{...}]")
    args = parser.parse_args()

    setup_logging()
    cfg = load_config(args.config, args.overrides)
    metrics, metrics_path = evaluate_saved_results(
        cfg,
        args.results,
        dataset_index=args.dataset_index,
        backend=args.backend,
        metrics_path=args.metrics,
        config_path=args.config,
    )
    summary = "  ".join(f"{k} {v:.2f}" for k, v in metrics.items() if isinstance(v, float))
    print(f"{summary}\nwrote {metrics_path}")


if __name__ == "__main__":
    main()
