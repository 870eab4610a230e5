"""Full-size check of the model-zoo configs against detectron2 itself (not a test: minutes on a CPU).

For R50-C4 and R101-C4: detectron2's COCO-Detection/faster_rcnn_R_{50,101}_C4_3x.yaml with seeded random weights
(the rule of make_reference.py: non-trivial frozen-BN statistics, biases shifted so that there are detections),
saved as a model-zoo .pkl; detectron2's DefaultPredictor (ResizeShortestEdge 800/1333 with PIL, BGR, boxes
scaled back to the photo) and detkit's Predictor with configs/detectron2/faster_rcnn_R_{50,101}_C4_3x.yaml and
that .pkl, on scikit-image's photos at their own sizes. Prints the largest differences and both CPU times.

    /work/d2ref/venv/bin/python tests/detectron2_reference/compare_full_size.py /work/d2ref/src/configs [OUT_DIR]

(the venv of ../shared/tools/detectron2-reference.sh sees detkit's installed packages, detkit included).
"""

import pickle
import sys
import time
from pathlib import Path

import numpy as np
import skimage.data
import torch

from detectron2.config import get_cfg
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_reference import random_weights  # noqa: E402  (the same weight rule as the committed fixture)

from detkit.config import load_config  # noqa: E402
from detkit.predictor import Predictor  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def detectron2_predictor(configs: Path, depth: int, pkl: Path) -> DefaultPredictor:
    cfg = get_cfg()
    cfg.merge_from_file(str(configs / "COCO-Detection" / f"faster_rcnn_R_{depth}_C4_3x.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    weights = random_weights(model.state_dict(), np.random.RandomState(depth))
    with open(pkl, "wb") as f:
        pickle.dump({"model": weights, "__author__": "detkit compare_full_size"}, f, protocol=2)
    cfg.merge_from_list(["MODEL.WEIGHTS", str(pkl)])
    return DefaultPredictor(cfg)


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def compare(configs: Path, depth: int, out_dir: Path) -> None:
    pkl = out_dir / f"random_R_{depth}_C4.pkl"
    theirs_predictor = detectron2_predictor(configs, depth, pkl)
    cfg = load_config(ROOT / "configs" / "detectron2" / f"faster_rcnn_R_{depth}_C4_3x.yaml", ["model.device=cpu"])
    ours_predictor = Predictor(cfg, weights=pkl)
    worst = {"boxes": 0.0, "scores": 0.0}
    for name in PHOTOS:
        rgb = getattr(skimage.data, name)()
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        with torch.no_grad():
            instances, t_theirs = timed(lambda im: theirs_predictor(im)["instances"], bgr)
        ours, t_ours = timed(ours_predictor, bgr)
        theirs = {
            "boxes": instances.pred_boxes.tensor.numpy(),
            "scores": instances.scores.numpy(),
            "labels": instances.pred_classes.numpy(),
        }
        same_labels = len(ours["labels"]) == len(theirs["labels"]) and (ours["labels"] == theirs["labels"]).all()
        d_boxes = float(np.abs(ours["boxes"] - theirs["boxes"]).max()) if same_labels and len(ours["boxes"]) else float("nan")
        d_scores = float(np.abs(ours["scores"] - theirs["scores"]).max()) if same_labels and len(ours["scores"]) else float("nan")
        worst["boxes"], worst["scores"] = max(worst["boxes"], d_boxes), max(worst["scores"], d_scores)
        print(f"R{depth}-C4 {name} {rgb.shape[1]}x{rgb.shape[0]}: detkit {len(ours['scores'])} / detectron2 "
              f"{len(theirs['scores'])} detections, labels identical in order: {bool(same_labels)}, "
              f"classes {sorted(set(theirs['labels'].tolist()))}, max |box diff| {d_boxes:.2e} px, "
              f"max |score diff| {d_scores:.2e}; CPU s/image detkit {t_ours:.2f}, detectron2 {t_theirs:.2f}", flush=True)
    print(f"R{depth}-C4 largest differences: boxes {worst['boxes']:.2e} px, scores {worst['scores']:.2e}", flush=True)


def main() -> None:
    configs = Path(sys.argv[1])
    out_dir = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("/tmp/detkit_compare_full_size")
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    for depth in (50, 101):
        compare(configs, depth, out_dir)


if __name__ == "__main__":
    main()
