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

from detkit.checkpoint.caffe2 import caffe2_depth, caffe2_to_detkit, looks_like_caffe2_resnet, unwrap_caffe2_blobs
from detkit.checkpoint.coco_categories import COCO_CATEGORY_IDS, COCO_CLASS_NAMES
from detkit.checkpoint.detectron2 import detectron2_to_detkit, name_table
from detkit.checkpoint.safe_pickle import load_pickle
from detkit.errors import UserError

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
# torch.save's legacy format starts with this pickled magic number (torch/serialization.py, MAGIC_NUMBER)
LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
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
    input_format: str | None = None  # channel order conv1 reads (RGB | BGR), when known
    stride_in_1x1: bool | None = None  # the ResNet layout the tensors need, when known


def file_kind(path: str | Path) -> str:
    """"torch" (torch.save, zip or legacy format) or "pickle" (anything else), from the first bytes of `path`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"weights file not found: {path}"
            if not path.exists()
            else f"weights path {path} is a directory: give the checkpoint file in it, e.g. {path / 'model_final.pth'}"
            if path.is_dir()
            else f"weights path is not a file: {path}"
        )
    with open(path, "rb") as f:
        head = f.read(len(LEGACY_TORCH_MAGIC))
    if head.startswith(ZIP_MAGIC) or head == LEGACY_TORCH_MAGIC:
        return "torch"
    return "pickle"  # anything else: the safe unpickler reads it or says why not (any opcode may open protocol 0)

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
    if callable(cfg):  # a config per depth: the file says which
        depth = detectron2_depth(state)
        if depth is None:
            raise UserError(f"{source}: its detectron2 names are not those of a ResNet-50/101/152 C4 Faster R-CNN")
        cfg = cfg(depth)
    if cfg is None:
        raise UserError(f"{source} is a detectron2 detector: reading it needs the config of the model it holds")
    try:
        model = detectron2_to_detkit(state, cfg=cfg)
    except UserError as e:
        raise UserError(f"{source}: {e}") from None
    table = name_table(cfg.model.backbone.depth)
    num_classes = model["roi_heads.predictor.cls_score.weight"].shape[0] - 1
    coco = num_classes == len(COCO_CLASS_NAMES)
    return Weights(
        model=model,
        format="detectron2",
        class_names=list(COCO_CLASS_NAMES) if coco else None,
        category_ids=list(COCO_CATEGORY_IDS) if coco else None,
        mapping=[(d2, table.get(d2, "dropped")) for d2 in state],
        input_format=cfg.model.input_format,
        stride_in_1x1=True,
    )


def _open(path: Path) -> tuple[str, dict]:
    """(layout, contents) of a weights file: layout "detkit" or "detectron2" with contents
    {"model": {name: tensor}, ...}, or "caffe2" with contents {blob name: numpy array}."""
    source = str(path)
    if file_kind(path) == "torch":
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # corrupt, truncated, or holding objects that weights_only refuses
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"cannot read checkpoint {path}: {reason[:200]} (is the file complete?)") from None
        if not isinstance(data, dict):
            raise UserError(f"{source} holds a {type(data).__name__}, not a checkpoint dict with a 'model' state_dict")
        state = data if isinstance(data.get("model"), dict) else {"model": data}  # detectron2 accepts bare state_dicts
        _tensors_only(state["model"], source)
        return ("detectron2" if is_detectron2_state(state["model"]) else "detkit"), state
    data = load_pickle(path)
    if isinstance(data, dict) and isinstance(data.get("model"), dict) and "__author__" in data:
        return "detectron2", {**data, "model": _arrays_to_tensors(data["model"], source)}
    blobs = unwrap_caffe2_blobs(data) if isinstance(data, dict) else None
    if blobs is not None and looks_like_caffe2_resnet(blobs):
        return "caffe2", blobs
    raise UserError(
        f"{source} is a pickle of neither known layout: not a detectron2 model-zoo file (a dict with 'model' "
        f"and '__author__') nor an MSRA/Caffe2 ImageNet ResNet (conv1_w, res2_0_branch2a_w, ...)"
    )


def read_weights(path: str | Path, *, cfg=None, depth: int | None = None, input_format: str = "RGB") -> Weights:
    """Read any supported weights file into detkit names; the format comes from the content.

    cfg: the detector a detectron2 file is mapped onto (depth, anchors, classes); required for those.
        May be a function of the ResNet depth the file's names spell (tools/convert_weights.py).
    depth, input_format: for an MSRA/Caffe2 backbone, the ResNet depth expected (None: the depth its
    blob names spell) and the channel order the model is fed (conv1 is matched to it).
    """
    path = Path(path)
    layout, data = _open(path)
    if layout == "detectron2":
        return _from_detectron2(data["model"], cfg=cfg, source=str(path))
    if layout == "caffe2":
        return _from_caffe2(data, depth=depth, input_format=input_format, source=str(path))
    return _from_detkit(data)


def _from_detkit(state: dict) -> Weights:
    return Weights(
        model=state["model"],
        format="detkit",
        class_names=state.get("class_names"),
        category_ids=state.get("category_ids"),
        checkpoint=state,
        input_format=state.get("input_format"),
        stride_in_1x1=state.get("stride_in_1x1"),
    )


def _fit_detkit_detector(weights: Weights, *, cfg, source: str) -> Weights:
    """A converted detector (tools/convert_weights.py records conv1's channel order and the ResNet layout)
    made to fit `cfg`: conv1 reversed for the other channel order; the other stride layout refused."""
    if weights.stride_in_1x1 is not None and weights.stride_in_1x1 != cfg.model.backbone.stride_in_1x1:
        raise UserError(
            f"{source} holds a ResNet with stride_in_1x1={weights.stride_in_1x1}: set "
            f"model.backbone.stride_in_1x1={str(weights.stride_in_1x1).lower()}"
        )
    conv1 = weights.model.get("backbone.conv1.weight")
    if weights.input_format in ("RGB", "BGR") and weights.input_format != cfg.model.input_format and conv1 is not None:
        # (C, 3, 7, 7): RGB <-> BGR is a reversal of the input channels
        weights.model = {**weights.model, "backbone.conv1.weight": conv1.flip(1).contiguous()}
        weights.input_format = cfg.model.input_format
    return weights


def _from_caffe2(blobs: dict, *, depth: int | None, input_format: str, source: str) -> Weights:
    if depth is None:
        depth = caffe2_depth(blobs) or 50  # a file that fits no table: reported against ResNet-50's
    model, mapping = caffe2_to_detkit(blobs, depth=depth, source=source, input_format=input_format)
    return Weights(model=model, format="caffe2", mapping=mapping, input_format=input_format, stride_in_1x1=True)


def read_detector_weights(path: str | Path, *, cfg) -> Weights:
    """A whole detector's weights (`model.weights`, `--weights`, `Predictor(weights=)`) mapped onto `cfg`."""
    path = Path(path)
    layout, data = _open(path)
    if layout == "caffe2":
        raise UserError(f"{path} is an MSRA/Caffe2 ImageNet backbone, not a detector: give it to model.backbone.weights")
    if layout == "detectron2":
        return _from_detectron2(data["model"], cfg=cfg, source=str(path))
    return _fit_detkit_detector(_from_detkit(data), cfg=cfg, source=str(path))


def read_caffe2_backbone(path: str | Path, *, depth: int, input_format: str = "RGB") -> Weights:
    """An MSRA/Caffe2 ImageNet `.pkl` as a detkit ResNet-`depth` state_dict (names of
    `detkit.checkpoint.caffe2`) for a model fed `input_format` images (`model.backbone.weights`)."""
    path = Path(path)
    layout, data = _open(path)
    if layout != "caffe2":
        raise UserError(
            f"backbone weights file {path} is a {layout} detector, not an MSRA/Caffe2 ImageNet ResNet: "
            f"give it to model.weights"
        )
    return _from_caffe2(data, depth=depth, input_format=input_format, source=str(path))


def detectron2_depth(state) -> int | None:
    """The ResNet depth of a detectron2 C4 state, from its number of res4 blocks (6: 50, 23: 101, 36: 152)."""
    blocks = {name.split(".")[2] for name in state if name.startswith("backbone.res4.")}
    return {6: 50, 23: 101, 36: 152}.get(len(blocks))


def to_checkpoint(weights: Weights, *, source: str | Path) -> dict:
    """A detkit checkpoint dict of converted weights, for `torch.save` (and `torch.load(weights_only=True)`).

    Detectors: `model`, `class_names`, `category_ids` when known. MSRA backbones: `model` is a ResNet
    state_dict in torchvision's names, as `model.backbone.weights` reads it. Both record `stride_in_1x1`
    and `input_format` (conv1's channel order), which the readers match to the config."""
    state: dict = {"model": weights.model, "source_format": weights.format, "source": str(source)}
    if weights.stride_in_1x1 is not None:
        state["stride_in_1x1"] = weights.stride_in_1x1
    if weights.input_format is not None:
        state["input_format"] = weights.input_format
    if weights.class_names is not None:
        state["class_names"] = list(weights.class_names)
    if weights.category_ids is not None:
        state["category_ids"] = list(weights.category_ids)
    return state
