"""Evaluate one trained model with each test-time improvement of the ResNet paper on and off.

python tools/ablation.py --config CFG --weights W [--output-dir DIR] [--scales 200 400 600 800 1000] [KEY=VALUE ...]

Rows follow the paper's appendix B table: the model as trained (with or without global context, a
training-time switch), + box refinement, + multi-scale testing (+ flip), for both multi-scale modes. The last
row is the paper's system: maxout multi-scale testing with box refinement and voting; the row before it runs
maxout without refinement, to show what refinement adds there.
Each row's metrics.json and detections.json go to DIR/ablation/<row>/; the table is printed at the end
and saved as DIR/ablation/table.txt.
"""

import copy
from pathlib import Path

from detkit.config import load_config
from detkit.engine.inference import load_for_testing, evaluate_datasets
from detkit.engine.setup import ArgumentParser, default_output_dir, setup_logging, user_errors_exit


@user_errors_exit
def main() -> None:
    parser = ArgumentParser(description="Ablation of the paper's test-time improvements on one model.")
    parser.add_argument("--config", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--output-dir")
    parser.add_argument("--scales", type=int, nargs="+", help="pyramid short sides (default: the paper's 200..1000 "
                        "scaled by input.min_size_test / 600)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    cfg = load_config(args.config, args.overrides)
    out = (Path(args.output_dir) if args.output_dir else default_output_dir(args.config)) / "ablation"
    setup_logging(out, filename="log.txt")
    model, datasets = load_for_testing(cfg, weights=args.weights)
    base = cfg.input.min_size_test
    scales = args.scales or [round(s * base / 600) for s in (200, 400, 600, 800, 1000)]
    context = "+ context" if cfg.model.roi_heads.global_context else "(no context)"
    rows = [  # (name, box refinement, scales, flip, multiscale mode)
        (f"baseline {context}", False, [], False, "union"),
        ("+ box refinement", True, [], False, "union"),
        ("+ multi-scale (union)", True, scales, False, "union"),
        ("+ multi-scale + flip (union)", True, scales, True, "union"),
        ("+ multi-scale (maxout, no refinement)", False, scales, False, "maxout"),
        ("+ multi-scale (maxout, the paper's)", True, scales, False, "maxout"),  # refinement + voting under maxout
    ]
    table = [f"{'system':<40} {'mAP@.5':>7} {'mAP@.5:.95':>11}", "-" * 60]
    for i, (name, refine, row_scales, flip, mode) in enumerate(rows):
        row_cfg = copy.deepcopy(cfg)
        row_cfg.test.scales, row_cfg.test.flip, row_cfg.test.multiscale_mode = row_scales, flip, mode
        model.roi_heads.box_refinement = refine
        slug = "".join(c for c in name.strip("+ ").replace(" ", "_") if c not in "(),'")
        row_dir = out / f"{i}_{slug}"
        row_dir.mkdir(parents=True, exist_ok=True)
        metrics = evaluate_datasets(row_cfg, model, datasets, output_dir=row_dir)[0]
        table.append(f"{name:<40} {metrics.get('AP50', float('nan')):>7.1f} {metrics.get('AP', float('nan')):>11.1f}")
        print("\n".join(table))
    text = "\n".join(table)
    (out / "table.txt").write_text(text + "\n")
    print(f"\nscales: {scales}\n{text}")


if __name__ == "__main__":
    main()
