"""From the `data.train` / `data.test` entries of the config to datasets.

Each entry is a mapping with a `format` and that format's keys (detkit.config.DATASET_FORMATS):
    {format: coco, images: IMAGE_DIR, annotations: JSON}             optional: filter_empty
    {format: voc, root: .../VOC2007, split: trainval}                optional: keep_difficult
    {format: shapes, split: train|test}                              optional: num_images, seed, variant
Training datasets get `TrainTransform` from `input.*`; test datasets no transform at all
(the model resizes test images itself).
"""

import os
from pathlib import Path
from typing import Any

import torch

from detkit.config import dataset_problem
from detkit.data.coco import COCODataset
from detkit.data.shapes import SPLITS, ensure_shapes
from detkit.data.transforms import TrainTransform
from detkit.errors import UserError


def cache_dir(cfg: Any) -> Path:
    """Where generated data lives: data.cache_dir, else $DETKIT_CACHE, else ~/.cache/detkit."""
    configured = cfg.data.cache_dir
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("DETKIT_CACHE") or "~/.cache/detkit").expanduser()


def _check_spec(spec: Any, name: str) -> str:
    """Validate one entry (the rules live with the config's defaults); return its format."""
    problem = dataset_problem(spec)
    if problem is not None:
        raise UserError(f"{name}: {problem}")
    return spec["format"]


def build_dataset(spec: dict, *, cfg: Any, is_train: bool, name: str = "dataset") -> torch.utils.data.Dataset:
    """One dataset from one config entry; `name` (e.g. "data.train[0]") prefixes every error."""
    fmt = _check_spec(spec, name)
    transform = None
    if is_train:
        inp = cfg.input
        transform = TrainTransform(
            min_sizes=list(inp.min_size_train),
            max_size=inp.max_size_train,
            hflip_prob=inp.hflip_prob,
            color_jitter=inp.color_jitter,
            crop_size=inp.crop_size,
            crop_min_visible=inp.crop_min_visible,
        )
    try:
        if fmt == "coco":
            return COCODataset(
                images=spec["images"],
                annotations=spec["annotations"],
                transform=transform,
                filter_empty=spec.get("filter_empty", False),
            )
        if fmt == "voc":
            from detkit.data.voc import VOCDataset  # imported here: VOC support is its own module

            # Test sets keep difficult objects: the VOC evaluator needs them to ignore their matches.
            keep_difficult = spec.get("keep_difficult", cfg.data.keep_difficult if is_train else True)
            return VOCDataset(
                root=spec["root"], split=spec["split"], keep_difficult=keep_difficult, transform=transform
            )
        # shapes
        if spec["split"] not in SPLITS:
            raise UserError(f"split must be one of {', '.join(SPLITS)}, got {spec['split']!r}")
        image_dir, json_path = ensure_shapes(
            cache_dir(cfg), spec["split"], spec.get("num_images"), spec.get("seed"), spec.get("variant")
        )
        return COCODataset(images=str(image_dir), annotations=str(json_path), transform=transform, kind="shapes")
    except UserError as e:
        raise UserError(f"{name} ({fmt}): {e}") from None


class ConcatDataset(torch.utils.data.ConcatDataset):
    """Several datasets with the same classes, indexed one after the other.

    Keeps `class_names`, `category_ids` (of the first part) and `image_sizes` (concatenated; None if a
    part lacks them); `datasets` lists the parts and `locate(index)` says which part an index is in.
    Its `kind` is "concat": a concatenation has no evaluator of its own (test sets are evaluated one by one).
    """

    kind = "concat"

    def __init__(self, datasets: list):
        super().__init__(datasets)
        self.class_names = list(datasets[0].class_names)
        self.category_ids = getattr(datasets[0], "category_ids", None)
        parts = [getattr(d, "image_sizes", None) for d in datasets]
        self.image_sizes = None if any(p is None for p in parts) else [s for p in parts for s in p]

    def locate(self, index: int) -> tuple[int, int]:
        """(part index, index inside that part) of a global index."""
        if index < 0:
            index += len(self)
        part = next(i for i, end in enumerate(self.cumulative_sizes) if index < end)
        return part, index - (self.cumulative_sizes[part - 1] if part > 0 else 0)


def build_datasets(specs: list, *, cfg: Any, is_train: bool) -> torch.utils.data.Dataset:
    """All entries of `data.train` (is_train) or `data.test`: the dataset itself when there is one,
    else a ConcatDataset (all entries must have the same class names)."""
    key = "data.train" if is_train else "data.test"
    if not isinstance(specs, list) or not specs:
        example = "[{format: shapes, split: " + ("train" if is_train else "test") + "}]"
        raise UserError(f"{key} is empty: list at least one dataset, e.g. {key}={example}")
    datasets = [build_dataset(s, cfg=cfg, is_train=is_train, name=f"{key}[{i}]") for i, s in enumerate(specs)]
    for i, d in enumerate(datasets[1:], start=1):
        if list(d.class_names) != list(datasets[0].class_names):
            raise UserError(
                f"{key}[{i}] has classes {_short(d.class_names)} but {key}[0] has {_short(datasets[0].class_names)};"
                " datasets trained or evaluated together must share their class list"
            )
    return datasets[0] if len(datasets) == 1 else ConcatDataset(datasets)


def _short(names: list[str]) -> str:
    return "[" + ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "") + "]"
