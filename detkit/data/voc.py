"""PASCAL VOC datasets in the VOCdevkit layout.

    root/ImageSets/Main/<split>.txt   one image id (file stem) per line
    root/Annotations/<id>.xml          size and objects (name, difficult, truncated, 1-based bndbox)
    root/JPEGImages/<id>.jpg

Coordinates: the XML holds 1-based inclusive pixel corners; detkit's boxes are continuous with
(0, 0) at the image's top-left corner, so x0 = xmin - 1, y0 = ymin - 1, x1 = xmax, y1 = ymax
(a one-pixel object at xmin = xmax = 1 becomes [0, 1]). The VOC evaluator converts back.
"""

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from detkit.data.image_io import image_to_tensor, read_image_rgb
from detkit.errors import UserError

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle",
    "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
_CLASS_INDEX = {name: i for i, name in enumerate(VOC_CLASSES)}


def infer_year(root: str | Path) -> int | None:
    """The VOC year from a folder name such as `VOC2007` or `VOC2012_test` (None when it does not say)."""
    match = re.match(r"VOC(\d{4})(?!\d)", Path(root).resolve().name, flags=re.IGNORECASE)
    return int(match.group(1)) if match else None


def _text(node: ET.Element, tag: str, xml_path: Path) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise UserError(f"malformed VOC annotation {xml_path}: missing <{tag}>; fix or replace the file")
    return child.text.strip()


def _flag(node: ET.Element, tag: str) -> bool:
    """An optional 0/1 flag (VOC2012 leaves `difficult` out for some objects: then 0)."""
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        return False
    return bool(int(float(child.text.strip())))


def parse_voc_xml(xml_path: str | Path) -> dict:
    """Parse one VOC annotation file.

    Returns:
        dict with `size` (h, w) or None when the XML lacks it, and for all N objects:
        `boxes` float32 (N, 4) continuous xyxy, `labels` int64 (N,) class indices,
        `difficult` bool (N,), `truncated` bool (N,).

    Raises:
        UserError: the file is missing, not XML, lacks a field, or names an unknown class.
    """
    xml_path = Path(xml_path)
    if not xml_path.is_file():
        raise UserError(f"VOC annotation not found: {xml_path}; the split file lists an image without annotation")
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as e:
        raise UserError(f"malformed VOC annotation {xml_path}: {e}; fix or replace the file") from None

    size = None
    size_node = root.find("size")
    if size_node is not None:
        try:
            h, w = int(float(_text(size_node, "height", xml_path))), int(float(_text(size_node, "width", xml_path)))
        except ValueError:
            raise UserError(f"malformed VOC annotation {xml_path}: non-numeric <size>; fix the file") from None
        size = (h, w) if h > 0 and w > 0 else None

    boxes, labels, difficult, truncated = [], [], [], []
    for obj in root.findall("object"):
        name = _text(obj, "name", xml_path).lower()
        if name not in _CLASS_INDEX:
            raise UserError(
                f"VOC annotation {xml_path} has unknown class '{name}'; expected one of the 20 VOC classes"
            )
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise UserError(f"malformed VOC annotation {xml_path}: an object has no <bndbox>; fix the file")
        try:
            xmin, ymin, xmax, ymax = (float(_text(bndbox, t, xml_path)) for t in ("xmin", "ymin", "xmax", "ymax"))
            diff, trunc = _flag(obj, "difficult"), _flag(obj, "truncated")
        except ValueError:
            raise UserError(f"malformed VOC annotation {xml_path}: non-numeric box or flag; fix the file") from None
        boxes.append([xmin - 1.0, ymin - 1.0, xmax, ymax])
        labels.append(_CLASS_INDEX[name])
        difficult.append(diff)
        truncated.append(trunc)
    return {
        "size": size,
        "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        "labels": np.asarray(labels, dtype=np.int64),
        "difficult": np.asarray(difficult, dtype=bool),
        "truncated": np.asarray(truncated, dtype=bool),
    }


class VOCDataset(torch.utils.data.Dataset):
    """A PASCAL VOC split: items `(image, target)` as in docs/conventions.md.

    Args:
        root: the year's folder, e.g. `.../VOCdevkit/VOC2007`.
        split: name of `root/ImageSets/Main/<split>.txt` (train, val, trainval, test).
        keep_difficult: keep `difficult` objects in the training targets (default: drop them).
            `annotations()` always returns every object, for the evaluator.
        transform: `(image_rgb_hwc_uint8, boxes_np (N, 4) xyxy, labels_np (N,)) -> (image, boxes, labels)`;
            the image may come back as a numpy HWC array or a (3, H, W) tensor.

    Targets carry what training reads (boxes, labels) and the item's identity (image_id, orig_size,
    file_name); the `difficult` flags are the evaluator's and come from `annotations()`.

    Attributes:
        class_names, category_ids ([1..20], the ids of results files), image_ids (file stems),
        image_sizes ((h, w) per image from the XML's <size>, else from the image file),
        year (from the folder name, or None).

    `__getitem__` returns None (with a warning) when an image file cannot be read; the collate
    function drops such items. Annotations are parsed once, at construction, and kept in memory.
    """

    kind = "voc"  # `detkit.evaluation.build.build_evaluator` picks the VOC rule by it

    def __init__(
        self,
        *,
        root: str,
        split: str,
        keep_difficult: bool = False,
        transform: Callable | None = None,
    ):
        self.root = Path(root)
        self.split = split
        self.keep_difficult = keep_difficult
        self.transform = transform
        if not self.root.is_dir():
            raise UserError(f"VOC root not found: {self.root}; point `root` at a VOCdevkit year folder such as VOC2007")
        split_file = self.root / "ImageSets" / "Main" / f"{split}.txt"
        if not split_file.is_file():
            raise UserError(f"VOC split file not found: {split_file}; check `split` (train, val, trainval, test)")
        lines = split_file.read_text().splitlines()
        self.image_ids: list[str] = [line.split()[0] for line in lines if line.strip()]

        self.class_names = list(VOC_CLASSES)
        self.category_ids = list(range(1, len(VOC_CLASSES) + 1))
        self.year = infer_year(self.root)
        self._index = {image_id: i for i, image_id in enumerate(self.image_ids)}
        self._annotations = [parse_voc_xml(self.root / "Annotations" / f"{i}.xml") for i in self.image_ids]
        self.image_sizes: list[tuple[int, int] | None] = [
            a["size"] or self._read_size(i) for i, a in enumerate(self._annotations)
        ]

    def _read_size(self, index: int) -> tuple[int, int] | None:
        """(h, w) from the image file, for the rare XML without <size> (None if unreadable)."""
        image = cv2.imread(str(self.image_path(index)), cv2.IMREAD_UNCHANGED)
        return None if image is None else (int(image.shape[0]), int(image.shape[1]))

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_path(self, index: int) -> Path:
        return self.root / "JPEGImages" / f"{self.image_ids[index]}.jpg"

    def annotations(self, key: int | str) -> dict:
        """Every object of one image (difficult ones included), without loading the image.

        Args:
            key: the image's index in the dataset, or its image id (file stem str).

        Returns:
            {"image_id": str, "boxes": float32 (N, 4) continuous xyxy, "labels": int64 (N,),
             "difficult": bool (N,)} as numpy arrays (copies).
        """
        index = self._index[key] if isinstance(key, str) else int(key)
        ann = self._annotations[index]
        return {
            "image_id": self.image_ids[index],
            "boxes": ann["boxes"].copy(),
            "labels": ann["labels"].copy(),
            "difficult": ann["difficult"].copy(),
        }

    def __getitem__(self, index: int):
        path = self.image_path(index)
        image = read_image_rgb(str(path))  # None, with a warning naming the file, when unreadable
        if image is None:
            return None
        orig_size = image.shape[:2]

        ann = self._annotations[index]
        keep = np.ones(len(ann["labels"]), dtype=bool) if self.keep_difficult else ~ann["difficult"]
        boxes, labels = ann["boxes"][keep], ann["labels"][keep]
        if self.transform is not None:
            image, boxes, labels = self.transform(image, boxes.copy(), labels.copy())

        if isinstance(image, np.ndarray):
            image = image_to_tensor(image)  # (H, W, 3) -> (3, H, W)
        target = {
            "boxes": torch.as_tensor(np.asarray(boxes), dtype=torch.float32).reshape(-1, 4),
            "labels": torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(-1),
            "image_id": self.image_ids[index],
            "orig_size": (int(orig_size[0]), int(orig_size[1])),
            "file_name": str(path),
        }
        return image, target
