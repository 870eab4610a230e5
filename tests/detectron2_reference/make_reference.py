"""Writes the detectron2 reference fixtures under tests/data/detectron2/ (see the README.md there).

A tiny (narrow-width) detectron2 Faster R-CNN R50-C4 with seeded random weights and non-trivial frozen-BN
statistics, run by detectron2 itself on three scikit-image photos at their own size (no resize):
    tiny_r50_c4.pkl       the weights, as a detectron2 model-zoo .pkl ({"model": {name: float32 array}})
    tiny_r50_c4_d2.yaml   the full detectron2 config that built it (provenance)
    <photo>.png           the photos, RGB uint8, short side 224
    reference.npz         res4 features, RPN proposals, final detections per photo

Run with a Python that imports detectron2 (never a detkit dependency), from the repository root:
    /work/d2ref/venv/bin/python tests/detectron2_reference/make_reference.py /work/d2ref/src/configs
Deterministic: a rerun writes byte-identical files. Not a test module (pytest collects only test_*.py).
"""

import io
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np
import skimage.data
import torch
from PIL import Image

from detectron2.config import get_cfg
from detectron2.modeling import build_model

OUT = Path(__file__).resolve().parents[1] / "data" / "detectron2"
PHOTOS = ("astronaut", "coffee", "chelsea")
SHORT_SIDE = 224
SEED = 0
# detectron2's COCO ids of the classes whose classifier bias is raised (contiguous index -> detections)
FAVOURED_CLASSES = (0, 2, 15, 16, 56)  # person, car, cat, dog, chair


def tiny_config(configs: Path):
    cfg = get_cfg()
    cfg.merge_from_file(str(configs / "COCO-Detection" / "faster_rcnn_R_50_C4_1x.yaml"))
    cfg.merge_from_list([
        "MODEL.RESNETS.STEM_OUT_CHANNELS", 8,
        "MODEL.RESNETS.RES2_OUT_CHANNELS", 32,
        "MODEL.RESNETS.WIDTH_PER_GROUP", 8,
        "MODEL.DEVICE", "cpu",
        "MODEL.WEIGHTS", "",
        "INPUT.MIN_SIZE_TEST", SHORT_SIDE,
        "SEED", SEED,
    ])
    cfg.freeze()
    return cfg


def random_weights(state: dict, rng: np.random.RandomState) -> dict:
    """Seeded random values for every tensor, scaled so that activations stay O(1) through the 50 layers."""
    weights = {}
    for name in sorted(state):
        shape = tuple(state[name].shape)
        if name.endswith("norm.running_var"):
            value = rng.uniform(0.5, 2.0, shape)
        elif name.endswith("norm.running_mean"):
            value = rng.normal(0.0, 0.2, shape)
        elif name.endswith("norm.weight"):
            # the last BN of a residual branch is damped so that the sum over blocks does not grow
            low, high = (0.1, 0.4) if ".conv3." in name else (0.6, 1.4)
            value = rng.uniform(low, high, shape)
        elif name.endswith("norm.bias"):
            value = rng.normal(0.0, 0.2, shape)
        elif name.endswith(".weight") and len(shape) == 4:  # convolutions: He initialisation
            fan_in = shape[1] * shape[2] * shape[3]
            std = np.sqrt(2.0 / fan_in)
            if name == "backbone.stem.conv1.weight":
                std /= 60.0  # inputs are 0-255 minus the mean (std ~60): the stem brings them to O(1)
            elif "objectness_logits" in name:
                std = 0.5 * np.sqrt(1.0 / fan_in)
            elif "anchor_deltas" in name:
                std = 0.1 * np.sqrt(1.0 / fan_in)
            value = rng.normal(0.0, std, shape)
        elif name.endswith(".weight"):  # fully connected: cls_score, bbox_pred
            std = (1.0 if "cls_score" in name else 0.1) / np.sqrt(shape[1])
            value = rng.normal(0.0, std, shape)
        elif name.endswith(".bias"):
            value = rng.normal(0.0, 0.1, shape)
        else:
            raise ValueError(f"no rule for {name} {shape}")
        weights[name] = value.astype(np.float32)
    cls_bias = weights["roi_heads.box_predictor.cls_score.bias"]
    # several detections above the 0.05 threshold, of several classes, fewer than the 100 kept per image
    cls_bias[list(FAVOURED_CLASSES)] += np.array([3.0, 2.5, 2.0, 1.5, 1.0], np.float32)
    cls_bias[-1] += 6.0  # background (detectron2's last index)
    weights["proposal_generator.rpn_head.objectness_logits.bias"] += 1.0
    return weights


def load_photo(name: str) -> np.ndarray:
    """HxWx3 uint8 RGB, short side SHORT_SIDE (PIL bilinear)."""
    image = Image.fromarray(getattr(skimage.data, name)())
    w, h = image.size
    scale = SHORT_SIDE / min(h, w)
    size = (int(round(w * scale)), int(round(h * scale)))
    return np.asarray(image.resize(size, Image.BILINEAR))


def write_npz(path: Path, arrays: dict) -> None:
    """np.savez with a fixed zip timestamp, so that reruns are byte-identical."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in arrays:
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buffer.getvalue())


@torch.no_grad()
def run(model, rgb: np.ndarray) -> dict:
    """detectron2's outputs on one photo fed as detectron2 expects it (BGR, 0-255, CHW float)."""
    h, w = rgb.shape[:2]
    image = torch.as_tensor(np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1))).float()
    inputs = [{"image": image, "height": h, "width": w}]
    captured = {}
    hooks = [
        model.backbone.register_forward_hook(lambda m, i, o: captured.__setitem__("features", o)),
        model.proposal_generator.register_forward_hook(lambda m, i, o: captured.__setitem__("proposals", o[0])),
    ]
    instances = model(inputs)[0]["instances"]
    for hook in hooks:
        hook.remove()
    proposals = captured["proposals"][0]
    return {
        "res4": captured["features"]["res4"][0].numpy(),
        "proposal_boxes": proposals.proposal_boxes.tensor.numpy(),
        "proposal_logits": proposals.objectness_logits.numpy(),
        "boxes": instances.pred_boxes.tensor.numpy(),
        "scores": instances.scores.numpy(),
        "labels": instances.pred_classes.numpy().astype(np.int64),
    }


def main(configs: Path) -> None:
    torch.manual_seed(SEED)
    cfg = tiny_config(configs)
    model = build_model(cfg).eval()
    weights = random_weights(model.state_dict(), np.random.RandomState(SEED))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})

    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "tiny_r50_c4.pkl", "wb") as f:
        pickle.dump({"model": weights, "__author__": "detkit tests"}, f, protocol=2)
    (OUT / "tiny_r50_c4_d2.yaml").write_text(cfg.dump())

    arrays = {"images": np.array(PHOTOS)}
    for name in PHOTOS:
        rgb = load_photo(name)
        Image.fromarray(rgb).save(OUT / f"{name}.png")
        rgb = np.asarray(Image.open(OUT / f"{name}.png").convert("RGB"))  # exactly what the tests read
        outputs = run(model, rgb)
        for key, value in outputs.items():
            arrays[f"{name}_{key}"] = value.astype(np.int64 if key == "labels" else np.float32)
        res4 = outputs["res4"]
        print(f"{name}: {rgb.shape[1]}x{rgb.shape[0]}  res4 {tuple(res4.shape)} |mean| {np.abs(res4).mean():.3f} "
              f"max {np.abs(res4).max():.2f}  proposals {len(outputs['proposal_boxes'])}  "
              f"detections {len(outputs['scores'])} classes {sorted(set(outputs['labels'].tolist()))} "
              f"scores {outputs['scores'].max() if len(outputs['scores']) else 0:.3f}..{outputs['scores'].min() if len(outputs['scores']) else 0:.3f}")
    write_npz(OUT / "reference.npz", arrays)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
