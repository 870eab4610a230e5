"""Convert model-zoo weights into a detkit checkpoint:

    python tools/convert_weights.py IN OUT.pth [--config CFG] [--verbose] [KEY=VALUE ...]

IN: a detectron2 model-zoo .pkl or detectron2 .pth (a C4 Faster R-CNN), or an MSRA/Caffe2 ImageNet
.pkl (R-50.pkl, R-101.pkl). OUT loads with torch.load(weights_only=True): a detector checkpoint with
class names and category ids (COCO's for an 80-class detectron2 model), or, for an MSRA file, a
ResNet state_dict (torchvision names, RGB conv1) for model.backbone.weights. A detectron2 file is
mapped onto --config, by default configs/detectron2/faster_rcnn_R_<depth>_C4_3x.yaml for the depth
its names spell. Prints what it mapped (every name with --verbose).
"""

from pathlib import Path

import torch

from detkit.checkpoint.formats import read_weights, to_checkpoint
from detkit.checkpoint.io import save_checkpoint
from detkit.config import load_config
from detkit.engine.setup import ArgumentParser, user_errors_exit
from detkit.errors import UserError

DETECTRON2_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "detectron2"
SHOWN = 6  # mapping lines printed without --verbose


@user_errors_exit
def main() -> None:
    parser = ArgumentParser(description="Convert detectron2 / MSRA model-zoo weights into a detkit checkpoint.")
    parser.add_argument("input", help="detectron2 .pkl/.pth, or MSRA/Caffe2 ImageNet R-50.pkl/R-101.pkl")
    parser.add_argument("output", help="the detkit checkpoint to write (.pth)")
    parser.add_argument("--config", help="model a detectron2 file holds (default: configs/detectron2/..._C4_3x.yaml)")
    parser.add_argument("--verbose", action="store_true", help="print every name mapped, not the first few")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides")
    args = parser.parse_intermixed_args()  # IN OUT, --config and KEY=VALUE in any order

    if args.config:
        cfg = load_config(args.config, args.overrides)
    else:
        def cfg(depth: int):
            return load_config(DETECTRON2_CONFIGS / f"faster_rcnn_R_{depth}_C4_3x.yaml", args.overrides)

    if Path(args.output).resolve() == Path(args.input).resolve():
        raise UserError(f"output {args.output} is the input file: give another path")
    weights = read_weights(args.input, cfg=cfg)
    if weights.format == "detkit":
        raise UserError(f"{args.input} is already a detkit checkpoint: nothing to convert")
    save_checkpoint(args.output, to_checkpoint(weights, source=args.input))
    torch.load(args.output, map_location="cpu", weights_only=True)  # what every reader of OUT will do

    mapped = [(a, b) for a, b in weights.mapping if b != "dropped"]
    dropped = [a for a, b in weights.mapping if b == "dropped"]
    described = {"caffe2": "MSRA/Caffe2 ImageNet ResNet", "detectron2": "detectron2 C4 Faster R-CNN"}[weights.format]
    print(f"{args.input}: {described}; {len(mapped)} tensors renamed, {len(dropped)} dropped"
          + (f" ({', '.join(dropped)})" if dropped else "")
          + f", {len(weights.model)} written")
    for a, b in mapped if args.verbose else mapped[:SHOWN]:
        print(f"  {a:<50} -> {b}")
    if not args.verbose and len(mapped) > SHOWN:
        print(f"  ... {len(mapped) - SHOWN} more (--verbose lists them all)")
    if weights.class_names:
        ids = f", category ids {weights.category_ids[0]}..{weights.category_ids[-1]}" if weights.category_ids else ""
        print(f"classes: {len(weights.class_names)} ({', '.join(weights.class_names[:3])}, ...{ids})")
    if weights.format == "caffe2":
        print("backbone only (torchvision names, RGB conv1): use it as model.backbone.weights with "
              "model.backbone.stride_in_1x1=true")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
