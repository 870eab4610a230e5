"""Train a detector: python tools/train_net.py --config CFG [--output-dir DIR] [--resume] [KEY=VALUE ...]"""

from pathlib import Path

from detkit.config import load_config
from detkit.engine.setup import ArgumentParser, default_output_dir, user_errors_exit
from detkit.engine.train import train


@user_errors_exit
def main() -> None:
    parser = ArgumentParser(description="Train Faster R-CNN (ResNet C4) from a config.")
    parser.add_argument("--config", required=True, help="YAML config, e.g. configs/shapes_r18.yaml")
    parser.add_argument("--output-dir", help="where checkpoints, logs and metrics go (default: output/<config stem>)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the output dir")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides, e.g. solver.max_iter=200")
    args = parser.parse_args()

    cfg = load_config(args.config, args.overrides)
    output_dir = Path(args.output_dir) if args.output_dir else default_output_dir(args.config)
    train(cfg, output_dir=output_dir, resume=args.resume)


if __name__ == "__main__":
    main()
