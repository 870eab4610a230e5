"""Drawing detections on BGR images: one box and one "name score" label per detection.

Used by `demo/video.py` and `demo/image.py`. Sizes scale with the frame, so the same call reads well on
a 96x64 thumbnail and on a 1920x1080 frame: line width ~ (H + W) / 600 px, font scale ~ min(H, W) / 1000
(both with a floor). Each class keeps one colour everywhere (`color_for_class`), and each label sits on a
box filled with that colour, its text black or white, whichever has the higher contrast ratio with the fill.
"""

import colorsys
import math
from collections.abc import Sequence

import cv2
import numpy as np

_GOLDEN = 0.6180339887498949  # hue step between consecutive classes: spreads any number of classes evenly
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_BLACK = (0, 0, 0)
_WHITE = (255, 255, 255)


def color_for_class(i: int) -> tuple[int, int, int]:
    """A fixed BGR colour for class index `i` (any int >= 0), the same on every call and machine.

    Hues step by the golden ratio, so neighbouring indices get far-apart hues; saturation and value
    alternate in three levels so that classes 0..K stay distinguishable beyond a dozen.
    """
    i = int(i)
    hue = (0.08 + i * _GOLDEN) % 1.0  # start at orange rather than pure red
    saturation = (0.95, 0.75, 0.85)[i % 3]
    value = (0.95, 0.85, 1.0)[(i // 3) % 3]
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    return (round(b * 255), round(g * 255), round(r * 255))


def _relative_luminance(color_bgr: tuple[int, int, int]) -> float:
    """WCAG relative luminance (0 black .. 1 white) of an sRGB colour."""

    def linear(c: int) -> float:
        c = c / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    b, g, r = color_bgr
    return 0.2126 * linear(r) + 0.7152 * linear(g) + 0.0722 * linear(b)


def _text_color(fill_bgr: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever has the higher WCAG contrast ratio against `fill_bgr`."""
    lum = _relative_luminance(fill_bgr)
    on_black = (lum + 0.05) / 0.05
    on_white = 1.05 / (lum + 0.05)
    return _BLACK if on_black >= on_white else _WHITE


def _line_width(h: int, w: int) -> int:
    return max(1, round((h + w) / 600))


def _font_scale(h: int, w: int) -> float:
    return max(0.3, min(h, w) / 1000)


def class_name(label: int, class_names: Sequence[str]) -> str:
    """`class_names[label]`, or "class_<label>" when the list does not cover it."""
    return class_names[label] if 0 <= label < len(class_names) else f"class_{label}"


def draw_detections(
    image_bgr: np.ndarray,
    boxes,
    scores,
    labels,
    class_names: Sequence[str],
    *,
    score_threshold: float = 0.0,
    tags: Sequence[str] | None = None,
) -> np.ndarray:
    """Return a copy of `image_bgr` with the detections scoring >= `score_threshold` drawn on it.

    image_bgr: (H, W, 3) uint8, OpenCV channel order; never modified.
    boxes: (N, 4) xyxy in continuous pixel coordinates ((0, 0) = top-left corner of the image), any
        array-like (numpy, list, CPU tensor). Boxes reaching past the image are clipped so that their
        visible edges are drawn inside it; boxes wholly outside are skipped.
    scores: (N,) in [0, 1], or None for boxes without a score (ground truth: all drawn, no score shown);
    labels: (N,) class indices into `class_names`.
    tags: (N,) words put before each label ("TP", "FP", ...), so that outcomes read without colour.
    Higher-scoring detections are drawn last, so they stay on top where boxes overlap.
    """
    if not isinstance(image_bgr, np.ndarray) or image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        raise ValueError(f"draw_detections expects an HxWx3 BGR image, got shape {getattr(image_bgr, 'shape', None)}")
    out = np.ascontiguousarray(image_bgr, dtype=np.uint8).copy()
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    show_scores = scores is not None
    scores = np.asarray(scores if show_scores else np.ones(len(boxes)), dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(f"boxes, scores and labels disagree in length: {len(boxes)}, {len(scores)}, {len(labels)}")
    if tags is not None and len(tags) != len(boxes):
        raise ValueError(f"{len(tags)} tags for {len(boxes)} boxes")

    h, w = out.shape[:2]
    thickness = _line_width(h, w)
    font_scale = _font_scale(h, w)
    font_thickness = max(1, round(font_scale * 1.5))
    pad = max(1, thickness)
    half = thickness // 2  # a stroke centred this far inside the border stays wholly inside the image

    for k in np.argsort(scores, kind="stable"):
        if not scores[k] >= score_threshold:  # also drops NaN scores
            continue
        x0, y0, x1, y1 = boxes[k]
        if not np.isfinite(boxes[k]).all() or x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
            continue
        # continuous [x0, x1) covers pixel columns floor(x0) .. ceil(x1) - 1
        left = min(max(math.floor(x0), half), w - 1 - half)
        top = min(max(math.floor(y0), half), h - 1 - half)
        right = min(max(math.ceil(x1) - 1, half), w - 1 - half)
        bottom = min(max(math.ceil(y1) - 1, half), h - 1 - half)
        color = color_for_class(labels[k])
        cv2.rectangle(out, (left, top), (right, bottom), color, thickness, cv2.LINE_8)

        text = class_name(int(labels[k]), class_names) + (f" {scores[k]:.2f}" if show_scores else "")
        if tags is not None:
            text = f"{tags[k]} {text}"
        (tw, th), baseline = cv2.getTextSize(text, _FONT, font_scale, font_thickness)
        label_h = th + baseline + 2 * pad
        label_w = tw + 2 * pad
        # above the box when it fits, else just inside its top edge; shifted left to stay in the frame
        ly0 = top - label_h if top - label_h >= 0 else top
        lx0 = max(0, min(left, w - label_w))
        cv2.rectangle(out, (lx0, ly0), (lx0 + label_w - 1, ly0 + label_h - 1), color, cv2.FILLED)
        cv2.putText(out, text, (lx0 + pad, ly0 + pad + th), _FONT, font_scale, _text_color(color),
                    font_thickness, cv2.LINE_AA)
    return out
