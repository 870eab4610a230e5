"""Reads any weights file detkit accepts and returns detkit-named tensors with what is known about them.

Accepted, told apart by content (the file extension is not trusted):
  - a detkit checkpoint: torch file, `{"model": detkit state_dict, "class_names": [...], ...}`;
  - a detectron2 `.pth` checkpoint: torch file, `{"model": detectron2 state_dict, ...}` (or the bare
    state_dict), recognised by detectron2's names (`proposal_generator.*`, `backbone.res2.*`, ...);
  - a detectron2 model-zoo `.pkl`: pickle of `{"model": {name: numpy array}, "__author__": ...}`;
  - an MSRA/Caffe2 ImageNet `.pkl` (`R-50.pkl`, `R-101.pkl`): pickle of `{blob name: numpy array}`, a
    backbone only (`model.backbone.weights`; see `detkit.checkpoint.caffe2`).
Torch files are read with `torch.load(weights_only=True)` and pickles with `detkit.checkpoint.safe_pickle`,
so no file can run code. Every problem is a one-line `UserError` naming the file.

detectron2 files hold no class names: a detector with COCO's 80 classes read from one gets COCO's
names and category ids (`detkit.checkpoint.coco_categories`), so detections.json carries COCO's own ids.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from detkit.checkpoint.caffe2 import caffe2_to_detkit, looks_like_caffe2_resnet, unwrap_caffe2_blobs
from detkit.checkpoint.safe_pickle import load_pickle
from detkit.checkpoint.coco_categories import COCO_CATEGORY_IDS, COCO_CLASS_NAMES
from detkit.errors import UserError

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
# torch.save's legacy format starts with this pickled magic number (torch/serialization.py, MAGIC_NUMBER)
LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
PICKLE_PROTOCOL_2_TO_5 = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
# Names only detectron2's GeneralizedRCNN uses; detkit's are `backbone.conv1`, `backbone.layer1`, `rpn.head`.
DETECTRON2_MARKERS = ("proposal_generator.", "backbone.stem.", "backbone.res2.")


@dataclass
class Weights:
    """Tensors of a weights file under detkit's names, and what the file says about them.

    format: "detkit", "detectron2" or "caffe2". mapping: (name in the file, detkit name or "dropped")
    for converted formats, empty for detkit files. checkpoint: the whole dict of a detkit checkpoint.
    """

    model: dict[str, Tensor]
    format: str
    class_names: list[str] | None = None
    category_ids: list[int] | None = None
    mapping: list[tuple[str, str]] = field(default_factory=list)
    checkpoint: dict | None = None


def file_kind(path: str | Path) -> str:
    """"torch" (torch.save, zip or legacy) or "pickle" (a plain pickle), from the first bytes of `path`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path}" if not path.exists() else f"weights path is not a file: {path}")
    with open(path, "rb") as f:
        head = f.read(len(LEGACY_TORCH_MAGIC))
    if head.startswith(ZIP_MAGIC) or head == LEGACY_TORCH_MAGIC:
        return "torch"
    if head[:2] in PICKLE_PROTOCOL_2_TO_5 or head[:1] in (b"(", b"}", b"]"):  # protocols 2-5, or 0/1 openings
        return "pickle"
    raise UserError(f"{path} is neither a torch checkpoint nor a pickle (first bytes {head[:8]!r}): not a weights file")


def is_detectron2_state(names) -> bool:
    return any(name.startswith(DETECTRON2_MARKERS) for name in names)


def _arrays_to_tensors(arrays: dict, source: str) -> dict[str, Tensor]:
    """{name: numpy array} from a pickle -> {name: tensor}; the first non-numeric value is an error."""
    tensors = {}
    for name, value in arrays.items():
        if not isinstance(name, str) or not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
            what = f"a {value.dtype} array" if isinstance(value, np.ndarray) else type(value).__name__
            raise UserError(f"{source}: entry {name!r} is {what}, not a numeric array: not a weights file")
        tensors[name] = torch.from_numpy(np.array(value))  # a copy: writable and owned by the tensor
    return tensors


def _tensors_only(state: dict, source: str) -> dict[str, Tensor]:
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, Tensor):
            raise UserError(f"{source}: entry {name!r} of its state_dict is a {type(value).__name__}, not a tensor")
    return state


def _from_detectron2(state: dict[str, Tensor], *, cfg, source: str) -> Weights:
    from detkit.checkpoint.detectron2 import detectron2_to_detkit  # the zoo helper's name table

    model = detectron2_to_detkit(state, cfg=cfg)
    num_classes = model["roi_heads.predictor.cls_score.weight"].shape[0] - 1
    coco = num_classes == len(COCO_CLASS_NAMES)
    return Weights(
        model=model,
        format="detectron2",
        class_names=list(COCO_CLASS_NAMES) if coco else None,
        category_ids=list(COCO_CATEGORY_IDS) if coco else None,
        mapping=list(getattr(model, "mapping", [])),
    )


def read_detector_weights(path: str | Path, *, cfg) -> Weights:
    """Read the weights of a whole detector (`model.weights`, `--weights`, `Predictor(weights=)`).

    `cfg` says which model the detectron2 names are mapped onto (depth, class count).
    """
    path = Path(path)
    source = str(path)
    if file_kind(path) == "torch":
        state = _load_torch(path)
        if not isinstance(state, dict):
            raise UserError(f"{source} holds a {type(state).__name__}, not a checkpoint dict with a 'model' state_dict")
        if not isinstance(state.get("model"), dict):  # detectron2 also accepts a bare state_dict
            state = {"model": state}
        model = _tensors_only(state["model"], source)
        if is_detectron2_state(model):
            return _from_detectron2(model, cfg=cfg, source=source)
        return Weights(
            model=model,
            format="detkit",
            class_names=state.get("class_names"),
            category_ids=state.get("category_ids"),
            checkpoint=state,
        )
    data = load_pickle(path)
    if isinstance(data, dict) and isinstance(data.get("model"), dict) and "__author__" in data:
        return _from_detectron2(_arrays_to_tensors(data["model"], source), cfg=cfg, source=source)
    if isinstance(data, dict) and looks_like_caffe2_resnet(unwrap_caffe2_blobs(data)):
        raise UserError(
            f"{source} is an MSRA/Caffe2 ImageNet backbone, not a detector: "
            f"give it to model.backbone.weights, not model.weights / --weights"
        )
    raise UserError(f"{source} is a pickle but not a detectron2 model-zoo file (a dict with 'model' and '__author__')")


def read_caffe2_backbone(path: str | Path, *, depth: int) -> Weights:
    """An MSRA/Caffe2 ImageNet `.pkl` as a detkit ResNet state_dict (names of `detkit.checkpoint.caffe2`)."""
    path = Path(path)
    data = load_pickle(path)
    blobs = unwrap_caffe2_blobs(data) if isinstance(data, dict) else None
    if blobs is None or not looks_like_caffe2_resnet(blobs):
        what = "a detectron2 model-zoo detector (give it to model.weights)" if isinstance(data, dict) and "__author__" in data else "not an MSRA/Caffe2 ImageNet ResNet (no conv1_w / res2_0_branch2a_w)"
        raise UserError(f"backbone weights file {path} is {what}")
    model, mapping = caffe2_to_detkit(blobs, depth=depth, source=str(path))
    return Weights(model=model, format="caffe2", mapping=mapping)


def _load_torch(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated, or holding objects that weights_only refuses
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot read checkpoint {path}: {reason[:200]} (is the file complete?)") from None

