"""COCO-format detection datasets (COCO itself, the shapes set, any instances json) via pycocotools.

Item: `(image, target)`, see docs/conventions.md:
    image   uint8 tensor (3, H, W), RGB, after the transform
    target  boxes float32 (N, 4) xyxy in the returned image's pixels, labels int64 (N,) in 0..K-1,
            image_id (the json's int id), orig_size (h, w) of the file, file_name (full path, str)
An image that cannot be read gives a warning and the item `None`; `detkit.data.loader.collate` drops it.

Training targets leave out crowd annotations (they stay in `self.coco` for the evaluator) and boxes
that are empty once clipped to the image; `box_stats` counts what was clipped and dropped.
"""

import contextlib
import io
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO

from detkit.data.image_io import image_to_tensor, read_image_rgb
from detkit.errors import UserError
from detkit.json_file import read_json

Transform = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


def _load_json(path: Path) -> dict:
    data = read_json(path, "COCO annotation file")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise UserError(f"COCO annotation file {path} has no 'images' list; is it a COCO instances json?")
    if not isinstance(data.get("categories"), list) or not data["categories"]:
        raise UserError(f"COCO annotation file {path} has no 'categories' list")
    if "annotations" in data and not isinstance(data["annotations"], list):
        raise UserError(f"COCO annotation file {path}: 'annotations' must be a list")
    for key in ("images", "annotations"):
        seen = set()
        for entry in data.get(key, []):
            entry_id = entry.get("id") if isinstance(entry, dict) else None
            if entry_id in seen:
                # pycocotools would keep only the last one: an image or box would silently disappear
                raise UserError(f"COCO annotation file {path}: '{key}' repeats id {entry_id!r}; ids must be unique")
            seen.add(entry_id)
    return data


class COCODataset(torch.utils.data.Dataset):
    """Images of `images` with the boxes of the COCO json `annotations`.

    Attributes:
        coco            pycocotools COCO over the whole json (crowd boxes included), for evaluators
        class_names     list[str], index = contiguous label
        category_ids    list[int], contiguous label -> the json's category id (sorted ascending)
        image_ids       list[int], item index -> the json's image id (ascending)
        image_sizes     list[(h, w)] from the json, item index -> size (for aspect-ratio grouping)
        has_annotations False for an `image_info` json (test-dev): items then have empty targets
        box_stats       {"total", "crowd", "clipped", "degenerate", "kept"} annotation counts over the
                        whole json ("clipped": boxes that reached outside their image)
        kind            "coco" (any instances json) or "shapes" (the embedded set), given by the builder;
                        `detkit.evaluation.build.build_evaluator` picks the evaluator by it
    """

    def __init__(
        self,
        *,
        images: str,
        annotations: str,
        transform: Transform | None = None,
        filter_empty: bool = False,
        kind: str = "coco",
    ):
        self.kind = kind
        self.image_dir = Path(images).expanduser()
        ann_path = Path(annotations).expanduser()
        data = _load_json(ann_path)  # checked first: the json is the more common mistake
        if not self.image_dir.is_dir():
            raise UserError(f"COCO image folder not found: {self.image_dir}")
        self.transform = transform
        self.has_annotations = "annotations" in data

        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            self.coco.createIndex()

        self.category_ids = sorted(int(c["id"]) for c in data["categories"])
        id_to_label = {cid: k for k, cid in enumerate(self.category_ids)}
        self.class_names = [str(self.coco.cats[cid]["name"]) for cid in self.category_ids]

        try:
            all_ids = sorted(self.coco.imgs)
            sizes = {i: (int(self.coco.imgs[i]["height"]), int(self.coco.imgs[i]["width"])) for i in all_ids}
            file_names = {i: str(self.coco.imgs[i]["file_name"]) for i in all_ids}
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(
                f"COCO annotation file {ann_path}: every image needs id, file_name, height and width ({e!r})"
            ) from None

        stats = {"total": 0, "crowd": 0, "clipped": 0, "degenerate": 0, "kept": 0}
        self._targets: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for image_id in all_ids:
            h, w = sizes[image_id]
            boxes, labels = [], []
            for ann in self.coco.imgToAnns.get(image_id, []):
                stats["total"] += 1
                if ann.get("iscrowd", 0):
                    stats["crowd"] += 1
                    continue
                cid = int(ann["category_id"])
                if cid not in id_to_label:
                    raise UserError(
                        f"COCO annotation file {ann_path}: annotation {ann.get('id')} has unknown category_id {cid}"
                    )
                x, y, bw, bh = (float(v) for v in ann["bbox"])
                box = [x, y, x + bw, y + bh]
                clipped = [min(max(v, 0.0), limit) for v, limit in zip(box, (w, h, w, h))]
                if clipped[2] - clipped[0] < 1 or clipped[3] - clipped[1] < 1:
                    stats["degenerate"] += 1
                    continue
                if clipped != box:
                    stats["clipped"] += 1
                boxes.append(clipped)
                labels.append(id_to_label[cid])
            stats["kept"] += len(boxes)
            self._targets[image_id] = (
                np.array(boxes, dtype=np.float32).reshape(-1, 4),
                np.array(labels, dtype=np.int64),
            )
        self.box_stats = stats

        if filter_empty:
            all_ids = [i for i in all_ids if len(self._targets[i][1]) > 0]
        self.image_ids: list[int] = all_ids
        self.image_sizes: list[tuple[int, int]] = [sizes[i] for i in all_ids]
        self._file_names = [file_names[i] for i in all_ids]

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict] | None:
        image_id = self.image_ids[index]
        path = str(self.image_dir / self._file_names[index])
        image = read_image_rgb(path)
        if image is None:
            return None
        h, w = image.shape[:2]
        boxes, labels = self._targets[image_id]
        if (h, w) != self.image_sizes[index]:
            warnings.warn(f"image {path} is {h}x{w} but its json says {self.image_sizes[index]}; clipping its boxes")
            boxes = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)
            keep = ((boxes[:, 2] - boxes[:, 0]) >= 1) & ((boxes[:, 3] - boxes[:, 1]) >= 1)
            boxes, labels = boxes[keep], labels[keep]
        if self.transform is not None:
            image, boxes, labels = self.transform(image, boxes.copy(), labels.copy())
        target = {
            # torch.tensor copies: the cached arrays must not be shared with a caller that edits targets.
            "boxes": torch.tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
            "labels": torch.tensor(np.asarray(labels, dtype=np.int64).reshape(-1)),
            "image_id": image_id,
            "orig_size": (h, w),
            "file_name": path,
        }
        return image_to_tensor(image), target
