"""Training augmentation: shortest-edge resize, optional random crop, horizontal flip, colour jitter (albumentations).

A transform is a callable `(image, boxes, labels) -> (image, boxes, labels)`:
    image   (H, W, 3) uint8 RGB numpy array
    boxes   (N, 4) float32 xyxy, continuous pixels of that image
    labels  (N,) int64 contiguous class indices
Boxes that end up narrower or shorter than 1 px are dropped together with their labels.

Test images are not resized here: the model resizes them itself with `resize_shortest_edge_size` (or, with
`input.test_resize: pil`, `resize_shortest_edge_size_d2` and `resize_pixels_pil`, as detectron2 does).
"""

import random

import albumentations as A
import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def resize_shortest_edge_size(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """Size (new_h, new_w) of an h x w image resized so its short side is `short` and long side <= `max_size`.

    One scale factor for both sides (aspect ratio kept): `short / min(h, w)`, lowered to
    `max_size / max(h, w)` when the long side would exceed `max_size` (`max_size <= 0`: no cap).
    Each side is `h * scale` (resp. `w * scale`) rounded to the nearest integer, halves rounded up,
    and at least 1. Boxes follow with the per-axis factors `new_w / w` and `new_h / h`.
    """
    scale = short / min(h, w)
    if max_size > 0 and max(h, w) * scale > max_size:
        scale = max_size / max(h, w)
    return max(int(h * scale + 0.5), 1), max(int(w * scale + 0.5), 1)


def resize_shortest_edge_size_d2(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """Like `resize_shortest_edge_size`, in the order of operations of detectron2's ResizeShortestEdge
    (detectron2/data/transforms/augmentation_impl.py, get_output_shape): the short side is set to `short`
    exactly, the long side scaled; when the long side exceeds `max_size`, both are scaled again by
    `max_size / long`; then each side is rounded (halves up). Same sizes except where float rounding sits
    on a half pixel; `input.test_resize: pil` uses it so sizes agree with detectron2's everywhere."""
    scale = short / min(h, w)
    new_h, new_w = (float(short), scale * w) if h < w else (scale * h, float(short))
    if max_size > 0 and max(new_h, new_w) > max_size:
        rescale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * rescale, new_w * rescale
    return max(int(new_h + 0.5), 1), max(int(new_w + 0.5), 1)


def resize_pixels_pil(image: torch.Tensor, new_h: int, new_w: int) -> torch.Tensor:
    """(3, H, W) image in 0..255 -> (3, new_h, new_w), resized before normalisation as detectron2 does.

    uint8 images go through PIL's bilinear filter (which widens its support when shrinking, i.e. it
    antialiases) and stay uint8; other dtypes are resized by torch's bilinear interpolation (half-pixel
    centres, no antialiasing), as detectron2 resizes non-uint8 arrays.
    """
    if image.dtype != torch.uint8:
        # (3, H, W) -> (1, 3, H, W) -> resize -> (3, h', w')
        return F.interpolate(image[None].float(), size=(new_h, new_w), mode="bilinear", align_corners=False)[0]
    # (3, H, W) -> (H, W, 3) for PIL, and back
    pixels = np.ascontiguousarray(image.cpu().permute(1, 2, 0).numpy())
    resized = np.asarray(Image.fromarray(pixels).resize((new_w, new_h), Image.BILINEAR))
    return torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))).to(image.device)


def resize_image_and_boxes(
    image: np.ndarray, boxes: np.ndarray, new_h: int, new_w: int
) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear resize of an (H, W, C) image to (new_h, new_w); (N, 4) xyxy boxes scaled to match.

    OpenCV maps the image's outer edges onto each other (pixel centres at +0.5), so continuous
    coordinates scale exactly by new/old per axis.
    """
    h, w = image.shape[:2]
    if (new_h, new_w) != (h, w):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    scale = np.array([new_w / w, new_h / h, new_w / w, new_h / h], dtype=np.float32)
    return image, boxes.astype(np.float32) * scale


def random_crop(
    image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, size: int, min_visible: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A window of at most `size` x `size` at a random place (np.random) of an (H, W, C) image.

    Boxes are shifted into the window and clipped to it; a box keeping less than `min_visible` of its
    area is dropped with its label (a sliver of an object is not a fair training target).
    """
    h, w = image.shape[:2]
    ch, cw = min(size, h), min(size, w)
    y0 = np.random.randint(h - ch + 1)
    x0 = np.random.randint(w - cw + 1)
    image = image[y0 : y0 + ch, x0 : x0 + cw]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    boxes = np.clip(boxes - np.array([x0, y0, x0, y0], dtype=np.float32), 0, [cw, ch, cw, ch]).astype(np.float32)
    kept_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = kept_area >= min_visible * np.maximum(area, 1e-6)
    return image, boxes[keep], labels[keep]


def _valid(boxes: np.ndarray, min_size: float = 1.0) -> np.ndarray:
    return ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)


class TrainTransform:
    """The training transform of `input.*`: short side drawn from `min_sizes`, long side <= `max_size`,
    a random `crop_size` square window (0: no crop; boxes keeping less than `crop_min_visible` of their
    area dropped), then an albumentations pipeline on pascal_voc boxes: horizontal flip with probability
    `hflip_prob`, brightness/contrast/saturation jitter of strength `color_jitter` (factors drawn from
    [1 - s, 1 + s]; 0 turns it off).

    Randomness comes from numpy's global RNG only (the resize choice and a fresh seed for the
    albumentations pipeline on every call), so seeding `np.random` reproduces the augmentation;
    the training loader does that per sample (see `detkit.data.loader`).
    """

    def __init__(
        self,
        *,
        min_sizes: list[int],
        max_size: int,
        hflip_prob: float,
        color_jitter: float,
        crop_size: int = 0,
        crop_min_visible: float = 0.5,
    ):
        if not min_sizes:
            raise ValueError("min_sizes must hold at least one size")
        self.min_sizes = [int(s) for s in min_sizes]
        self.max_size = int(max_size)
        self.crop_size = int(crop_size)
        self.crop_min_visible = float(crop_min_visible)
        steps: list = [A.HorizontalFlip(p=hflip_prob)]
        if color_jitter > 0:
            steps.append(
                A.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter, hue=0.0, p=1.0)
            )
        self.pipeline = A.Compose(
            steps,
            bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"], min_width=1.0, min_height=1.0),
        )

    def _reseed(self) -> None:
        seed = int(np.random.randint(2**31))
        if hasattr(self.pipeline, "set_random_state"):  # albumentations >= 2: its own generators
            # One shared generator for all steps: per-step seeds would correlate flip and jitter draws.
            self.pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))
        else:  # albumentations 1.x draws from the global `random` and `np.random`
            random.seed(seed)

    def __call__(
        self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        h, w = image.shape[:2]
        short = self.min_sizes[np.random.randint(len(self.min_sizes))]
        image, boxes = resize_image_and_boxes(image, boxes, *resize_shortest_edge_size(h, w, short, self.max_size))
        # Clip and drop degenerate boxes first: albumentations rejects boxes outside the image.
        nh, nw = image.shape[:2]
        boxes = np.clip(boxes, 0, [nw, nh, nw, nh]).astype(np.float32)
        keep = _valid(boxes)
        boxes, labels = boxes[keep], labels[keep]
        if self.crop_size > 0:
            image, boxes, labels = random_crop(image, boxes, labels, self.crop_size, self.crop_min_visible)
            keep = _valid(boxes)
            boxes, labels = boxes[keep], labels[keep]
        self._reseed()
        out = self.pipeline(image=image, bboxes=boxes, labels=labels)
        boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(out["labels"], dtype=np.int64).reshape(-1)
        keep = _valid(boxes)
        return np.ascontiguousarray(out["image"]), boxes[keep], labels[keep]
