"""Benchmark inference (per stage) and training for a config, against references timed in the same run.

python tools/benchmark.py --config configs/coco_r101.yaml [--size 800] [--runs 3] [--compare torchvision]
                          [--train] [--onnx] [--quick] [--json FILE] [KEY=VALUE ...]

The detector is timed as the config runs it (the speed-ups of `detkit.modeling.optimize` that the config
switches on: test.fold_bn, model.channels_last, test.compile, test.amp). `--compare torchvision` also
builds the same detector with every speed-up off and torchvision's FasterRCNN class with the same
weights, times the three taking turns, and checks that all give the same detections. `--onnx` exports the
same detector (tools/export.py's path, with its self-check) and times PyTorch eager (with the config's
speed-ups) and onnxruntime on the CPU on the same image, taking turns; it reports the time ratio and the export time.
"""

import json
import tempfile
from pathlib import Path

import torch

from detkit.config import load_config
from detkit.data.build import build_datasets
from detkit.data.loader import build_train_loader
from detkit.benchmark.compare import compare_detections
from detkit.benchmark.onnx_timing import time_onnx
from detkit.benchmark.random_weights import calibrated_resnet_weights, normalised_input_std, spread_class_scores
from detkit.benchmark.timing import (
    count_flops,
    matmul_gflops,
    time_inference,
    time_interleaved,
    time_torchvision_trunk,
    time_training,
)
from detkit.benchmark.torchvision_reference import build_torchvision_equivalent, torchvision_detections
from detkit.engine.setup import ArgumentParser, seed_everything, user_errors_exit
from detkit.errors import UserError
from detkit.modeling.build import build_model
from detkit.modeling.optimize import optimize_for_inference

SPEEDUPS_OFF = ["model.channels_last=false", "test.fold_bn=false", "test.compile=false", "test.amp=false"]


def print_table(rows: list[tuple[str, dict]]) -> None:
    print(f"{'':<34} {'median ms':>10} {'min':>9} {'max':>9}")
    for name, t in rows:
        print(f"{name:<34} {t['median_ms']:>10.1f} {t['min_ms']:>9.1f} {t['max_ms']:>9.1f}")


@user_errors_exit
def main() -> None:
    parser = ArgumentParser(description="Time detkit inference and training; compare with torchvision.")
    parser.add_argument("--config", required=True)
    parser.add_argument("--size", type=int, default=0, help="short side of the test image (default: input.min_size_test)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--compare", choices=["torchvision"], help="also time torchvision's FasterRCNN built as the "
                        "same detector with the same weights, and detkit with its speed-ups off; check detections")
    parser.add_argument("--train", action="store_true", help="also time training iterations on data.train")
    parser.add_argument("--onnx", action="store_true", help="also export to ONNX and time onnxruntime against "
                        "PyTorch eager on the same image, taking turns (CPU)")
    parser.add_argument("--quick", action="store_true", help="one tiny run of everything (for tests)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    if args.quick:
        args.runs, args.warmup = 1, 0
    cfg = load_config(args.config, args.overrides)
    b = cfg.model.backbone
    standard = b.width == 64 and not b.preact and b.norm != "gn"  # the shapes torchvision's ResNets have
    weights_override = []
    if b.weights in ("imagenet", None) and standard:
        # the time depends on the number of proposals, which needs features of a sane scale, not on
        # the values of the weights: use random weights with calibrated BN statistics (no download)
        weights_file = Path(tempfile.mkdtemp()) / f"resnet{b.depth}_calibrated.pth"
        calibrated_resnet_weights(b.depth, weights_file, normalised_input_std(cfg.model.pixel_range, cfg.model.pixel_std))
        weights_override = [f"model.backbone.weights={weights_file}"]
    elif b.weights == "imagenet":
        weights_override = ["model.backbone.weights=null"]
    size = args.size or cfg.input.min_size_test
    size_override = [f"input.min_size_test={size}"]
    cfg = load_config(args.config, args.overrides + weights_override + size_override)
    plain_cfg = load_config(args.config, args.overrides + weights_override + size_override + SPEEDUPS_OFF)
    num_classes = cfg.model.num_classes or 80

    seed_everything(cfg.seed)
    plain = build_model(plain_cfg, num_classes=num_classes).eval()
    # a 4:3 image whose short side is `size` (no resize inside either detector)
    image = torch.randint(0, 256, (3, size, size * 4 // 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    spread_class_scores(plain, image)
    reference = build_torchvision_equivalent(plain, cfg) if args.compare else None
    model = build_model(cfg, num_classes=num_classes)
    model.load_state_dict(plain.state_dict())
    optimize_for_inference(model, fold_bn=cfg.test.fold_bn, torch_compile=cfg.test.compile, amp=cfg.test.amp)
    with torch.inference_mode():
        num_proposals = len(model.rpn(model.backbone(model.preprocessor([image])[0]), [tuple(image.shape[-2:])])[0][0])
    speedups = [k for k, on in [("fold_bn", cfg.test.fold_bn), ("channels_last", cfg.model.channels_last),
                                ("compile", cfg.test.compile), ("amp", cfg.test.amp)] if on]
    print(f"threads: {torch.get_num_threads()}, device: {model.device}, image {tuple(image.shape)}, "
          f"{num_proposals} proposals, speed-ups on: {', '.join(speedups) or 'none'}")

    results = {"config": args.config, "size": size, "threads": torch.get_num_threads(), "device": str(model.device),
               "speedups": speedups}
    results["inference"] = time_inference(model, image, warmup=args.warmup, runs=args.runs)
    results["torchvision_trunk"] = time_torchvision_trunk(
        b.depth, size, size * 4 // 3, device=model.device, warmup=args.warmup, runs=args.runs
    )
    results["ratio_to_trunk"] = results["inference"]["total"]["median_ms"] / results["torchvision_trunk"]["median_ms"]
    results["images_per_s"] = 1000.0 / results["inference"]["total"]["median_ms"]
    print_table([(f"detkit {name}", t) for name, t in results["inference"].items()]
                + [(f"torchvision resnet{b.depth} conv1..conv5", results["torchvision_trunk"])])

    print(f"inference: {results['images_per_s']:.2f} images/s (one image per call)")
    flops = count_flops(lambda: model([image]))
    rate = matmul_gflops(device=model.device)
    achieved = flops / (results["inference"]["total"]["median_ms"] / 1000) / 1e9
    results["flops"] = {"gflop": flops / 1e9, "gflop_per_s": achieved, "matmul_gflop_per_s": rate,
                        "share_of_matmul_rate": achieved / rate}
    print(f"{flops / 1e9:.1f} GFLOP per image (convolutions and matrix products): {achieved:.1f} GFLOP/s, "
          f"{100 * achieved / rate:.0f}% of this machine's measured float32 matmul rate ({rate:.1f} GFLOP/s)")

    if args.compare:
        with torch.inference_mode():
            ours, ours_plain, theirs = model([image])[0], plain([image])[0], torchvision_detections(reference, image)
        times = time_interleaved(
            {
                "detkit": lambda: model([image]),
                "detkit_no_speedups": lambda: plain([image]),
                "torchvision": lambda: reference([image.float() / 255.0]),
            },
            device=model.device, warmup=args.warmup, runs=args.runs,
        )
        checks = {name: compare_detections(dets, theirs) for name, dets in [("detkit", ours), ("detkit_no_speedups", ours_plain)]}
        ratio = times["detkit"]["median_ms"] / times["torchvision"]["median_ms"]
        results["compare_torchvision"] = {"times": times, "ratio": ratio, "checks": checks,
                                          "torchvision_count": len(theirs["boxes"])}
        print(f"\nwhole detector, taking turns, {args.runs} runs after {args.warmup} warm-up:")
        print_table([(name, t) for name, t in times.items()])
        for name, c in checks.items():
            print(f"{name} vs torchvision: same detections: {c['same']} ({c['counts'][0]} vs {c['counts'][1]}; "
                  f"worst IoU with its counterpart {c['worst_iou']:.4f}, largest score difference "
                  f"{c['max_score_diff']:.1e})")
        print(f"detkit / torchvision time: {ratio:.2f}  (no speed-ups: "
              f"{times['detkit_no_speedups']['median_ms'] / times['torchvision']['median_ms']:.2f})")

    if args.onnx:
        if model.device.type != "cpu":
            raise UserError("--onnx times onnxruntime's CPU provider against PyTorch on the CPU: add model.device=cpu")
        onnx = results["onnx"] = time_onnx(model, plain, image, warmup=args.warmup, runs=args.runs)
        print(f"\nPyTorch eager vs onnxruntime (CPU, {onnx['onnxruntime_threads']} threads each), taking turns, "
              f"{args.runs} runs after {args.warmup} warm-up:")
        print_table([(name, t) for name, t in onnx["times"].items()])
        c = onnx["same_detections"]
        print(f"onnxruntime / PyTorch time: {onnx['ratio_onnxruntime_to_pytorch']:.2f}; export "
              f"{onnx['export']['export_s']:.1f} s + self-check {onnx['export']['check_s']:.1f} s; same detections on "
              f"this image: {c['same']} ({c['counts'][0]} vs {c['counts'][1]}, worst IoU {c['worst_iou']:.4f})")

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
              f"data loading {100 * tr['data_share']:.1f}% of the time, peak memory {tr['peak_memory_mb']:.0f} MB "
              f"({'CUDA tensors' if model.device.type == 'cuda' else 'process resident size'})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
