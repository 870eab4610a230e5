"""Benchmark inference (per stage) and training for a config, against a reference timed in the same run.

python tools/benchmark.py --config configs/coco_r101.yaml [--size 800] [--runs 3] [--train] [--quick] [KEY=VALUE ...]
"""

import json
import tempfile
from pathlib import Path

import torch

from detkit.config import load_config
from detkit.data.build import build_datasets
from detkit.data.loader import build_train_loader
from detkit.engine.benchmark import calibrated_resnet_weights, time_inference, time_torchvision_trunk, time_training
from detkit.engine.setup import ArgumentParser, seed_everything, user_errors_exit
from detkit.modeling.build import build_model
from detkit.modeling.fold_bn import fold_frozen_bn
from detkit.structures.boxes import box_iou


def same_detections(a: dict, b: dict, *, min_iou: float = 0.999, score_tol: float = 1e-3) -> tuple[bool, float]:
    """Whether two detection sets are the same up to order and float error: equal counts, and each box of `a`
    has a box of `b` with the same label, IoU >= `min_iou` and a score within `score_tol`. Also returns the
    worst IoU found (1.0 for two empty sets)."""
    if len(a["boxes"]) != len(b["boxes"]):
        return False, 0.0
    if len(a["boxes"]) == 0:
        return True, 1.0
    iou = box_iou(a["boxes"], b["boxes"])
    iou = iou * (a["labels"][:, None] == b["labels"][None, :])
    iou = iou * ((a["scores"][:, None] - b["scores"][None, :]).abs() <= score_tol)
    worst = iou.max(dim=1).values.min().item()
    return worst >= min_iou, worst


@user_errors_exit
def main() -> None:
    parser = ArgumentParser(description="Time detkit inference and training; compare with torchvision's trunk.")
    parser.add_argument("--config", required=True)
    parser.add_argument("--size", type=int, default=0, help="short side of the test image (default: input.min_size_test)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--train", action="store_true", help="also time training iterations on data.train")
    parser.add_argument("--fold-bn", action="store_true", help="also time the model with frozen BN folded into the "
                        "convolutions, in the same run, and check that the detections stay the same")
    parser.add_argument("--quick", action="store_true", help="one tiny run of everything (for tests)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    overrides = list(args.overrides)
    if args.quick:
        args.runs, args.warmup = 1, 0
    cfg = load_config(args.config, overrides)
    b = cfg.model.backbone
    standard = b.width == 64 and not b.preact and b.norm != "gn"  # the shapes torchvision's ResNets have
    if b.weights in ("imagenet", None) and standard:
        # the time depends on the number of proposals, which needs features of a sane scale, not on
        # the values of the weights: use random weights with calibrated BN statistics (no download)
        weights_file = Path(tempfile.mkdtemp()) / f"resnet{cfg.model.backbone.depth}_calibrated.pth"
        calibrated_resnet_weights(cfg.model.backbone.depth, weights_file)
        cfg.model.backbone.weights = str(weights_file)
    elif b.weights == "imagenet":
        b.weights = None
    seed_everything(cfg.seed)
    size = args.size or cfg.input.min_size_test
    cfg.input.min_size_test = size
    model = build_model(cfg, num_classes=cfg.model.num_classes or 80)
    # a 4:3 image whose short side is `size`
    image = torch.randint(0, 256, (3, size, size * 4 // 3), dtype=torch.uint8)
    with torch.inference_mode():
        num_proposals = len(model.eval().rpn(model.backbone(model.preprocessor([image])[0]), [tuple(image.shape[-2:])])[0][0])
    print(f"threads: {torch.get_num_threads()}, device: {model.device}, image {tuple(image.shape)}, "
          f"{num_proposals} proposals")

    results = {"config": args.config, "size": size, "threads": torch.get_num_threads(), "device": str(model.device)}
    results["inference"] = time_inference(model, image, warmup=args.warmup, runs=args.runs)
    results["torchvision_trunk"] = time_torchvision_trunk(
        cfg.model.backbone.depth, size, size * 4 // 3, device=model.device, warmup=args.warmup, runs=args.runs
    )
    ratio = results["inference"]["total"]["median_ms"] / results["torchvision_trunk"]["median_ms"]
    results["ratio_to_trunk"] = ratio
    print(f"{'stage':<12} {'median ms':>10} {'min':>9} {'max':>9}")
    for name, t in results["inference"].items():
        print(f"{name:<12} {t['median_ms']:>10.1f} {t['min_ms']:>9.1f} {t['max_ms']:>9.1f}")
    t = results["torchvision_trunk"]
    print(f"{'tv trunk':<12} {t['median_ms']:>10.1f} {t['min_ms']:>9.1f} {t['max_ms']:>9.1f}   "
          f"(torchvision resnet{cfg.model.backbone.depth} conv1..conv5, same input)")
    print(f"detector / torchvision trunk time: {ratio:.2f}")

    if args.fold_bn:
        with torch.inference_mode():
            batch = model.eval().preprocessor([image])[0]
            features_before = model.backbone(batch)
            before = model([image])[0]
        folded = fold_frozen_bn(model)
        results["inference_folded"] = time_inference(model, image, warmup=args.warmup, runs=args.runs)
        with torch.inference_mode():
            feature_diff = ((model.backbone(batch) - features_before).abs().max() / features_before.abs().max()).item()
            after = model([image])[0]
        # with untrained heads many scores are nearly tied, so float-level changes may reorder the top-100 cut:
        # the feature difference is the well-conditioned check, the detection comparison the end-to-end one
        same, worst_iou = same_detections(before, after)
        speedup = results["inference"]["total"]["median_ms"] / results["inference_folded"]["total"]["median_ms"]
        results["fold_bn"] = {"pairs": folded, "speedup": speedup, "same_detections": same, "worst_iou": worst_iou,
                             "feature_rel_diff": feature_diff}
        t = results["inference_folded"]
        print(f"folded BN ({folded} conv+BN pairs): total {t['total']['median_ms']:.1f} ms "
              f"(backbone {t['backbone']['median_ms']:.1f}, roi_heads {t['roi_heads']['median_ms']:.1f}); "
              f"speedup x{speedup:.2f}; conv4 features max relative difference {feature_diff:.1e}; "
              f"same detections: {same} (worst IoU with its counterpart {worst_iou:.5f})")

    if args.train:
        train_set = build_datasets(cfg.data.train, cfg=cfg, is_train=True)
        loader = build_train_loader(
            train_set,
            batch_size=cfg.solver.ims_per_batch,
            seed=cfg.seed,
            num_workers=cfg.dataloader.num_workers,
            aspect_ratio_grouping=cfg.dataloader.aspect_ratio_grouping,
        )
        train_model = build_model(cfg, num_classes=len(train_set.class_names))
        results["training"] = time_training(train_model, loader, warmup=args.warmup, runs=args.runs)
        tr = results["training"]
        print(f"training: {tr['iteration']['median_ms']:.0f} ms/iteration, {tr['images_per_s']:.2f} images/s, "
              f"data loading {100 * tr['data_share']:.1f}% of the time")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
