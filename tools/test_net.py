"""Evaluate a trained detector: python tools/test_net.py --config CFG --weights W [--output-dir DIR] [KEY=VALUE ...]"""

from pathlib import Path

from detkit.config import load_config
from detkit.engine.inference import test
from detkit.engine.setup import ArgumentParser, default_output_dir, setup_logging, user_errors_exit


@user_errors_exit
def main() -> None:
    parser = ArgumentParser(description="Run a trained detector over data.test and evaluate it.")
    parser.add_argument("--config", required=True, help="YAML config the model was trained with")
    parser.add_argument("--weights", required=True, help="checkpoint file (model_final.pth)")
    parser.add_argument("--output-dir", help="where detections.json and metrics.json go (default: output/<config stem>)")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides, e.g. test.scales=[400,600]")
    args = parser.parse_args()

    cfg = load_config(args.config, args.overrides)
    output_dir = Path(args.output_dir) if args.output_dir else default_output_dir(args.config)
    setup_logging(output_dir, filename="test_log.txt")
    test(cfg, weights=args.weights, output_dir=output_dir, config_path=args.config)


if __name__ == "__main__":
    main()
