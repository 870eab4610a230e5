"""draw_detections and the class palette (CPU, milliseconds)."""

import numpy as np
import pytest

from detkit.visualize import _text_color, class_name, color_for_class, draw_detections

NAMES = ["circle", "square", "triangle"]


def gray(h=61, w=97, value=128):
    return np.full((h, w, 3), value, np.uint8)


def test_class_colours_are_stable_and_distinct():
    first = [color_for_class(i) for i in range(20)]
    assert first == [color_for_class(i) for i in range(20)]
    assert color_for_class(np.int64(4)) == first[4]
    assert len(set(first)) == 20
    for c in first:
        assert len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)


def test_label_text_contrasts_with_its_fill():
    assert _text_color((255, 255, 255)) == (0, 0, 0)
    assert _text_color((0, 0, 0)) == (255, 255, 255)
    assert _text_color((0, 255, 255)) == (0, 0, 0)  # yellow
    assert _text_color((255, 0, 0)) == (255, 255, 255)  # blue


def test_input_is_not_modified_and_boxes_are_drawn():
    image = gray()
    before = image.copy()
    out = draw_detections(image, [[20.0, 25.0, 60.0, 55.0]], [0.9], [1], NAMES)
    assert np.array_equal(image, before)
    assert out is not image and out.shape == image.shape and out.dtype == np.uint8
    color = color_for_class(1)
    # left edge of the box in the class colour, the box's inside untouched
    assert (out[30:50, 20] == color).all()
    assert (out[35:45, 30:50] == 128).all()


def test_zero_detections_and_threshold():
    image = gray()
    for boxes, scores, labels in [(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64)), ([], [], [])]:
        out = draw_detections(image, boxes, scores, labels, NAMES)
        assert np.array_equal(out, image) and out is not image
    out = draw_detections(image, [[10, 10, 40, 40]], [0.3], [0], NAMES, score_threshold=0.5)
    assert np.array_equal(out, image)
    assert not np.array_equal(draw_detections(image, [[10, 10, 40, 40]], [0.3], [0], NAMES), image)


def test_boxes_partly_outside_are_drawn_inside_the_image():
    h, w = 61, 97
    image = gray(h, w)
    boxes = np.array([[-20.0, -10.0, 30.0, 25.0], [50.0, 40.0, 500.0, 400.0], [200.0, 200.0, 300.0, 300.0]])
    out = draw_detections(image, boxes, [0.9, 0.8, 0.7], [0, 2, 1], NAMES)
    assert out.shape == (h, w, 3)
    c0, c2 = color_for_class(0), color_for_class(2)
    # the clipped edges lie on the image border: box 0 on the left column, box 1 on the right column and bottom row
    assert (out[15:24, 0] == c0).all()
    assert (out[45:h, w - 1] == c2).all()
    assert (out[h - 1, 52:w] == c2).all()
    # the box wholly outside draws nothing: no pixel has class 1's colour
    assert not (out == color_for_class(1)).all(axis=2).any()


def test_label_and_lines_scale_with_the_frame():
    def stroke(h, w):
        image = np.zeros((h, w, 3), np.uint8)
        x0, y0, x1, y1 = w // 4, h // 4, 3 * w // 4, 3 * h // 4
        out = draw_detections(image, [[x0, y0, x1, y1]], [0.9], [0], NAMES)
        row = out[h // 2]
        return int((row == color_for_class(0)).all(axis=1).sum())  # both vertical edges crossed at mid-height

    small, large = stroke(64, 96), stroke(1080, 1920)
    assert small >= 2 and large >= 3 * small


def test_label_uses_the_class_name_and_score():
    assert class_name(1, NAMES) == "square"
    assert class_name(7, NAMES) == "class_7"
    image = gray(200, 300, 0)
    out = draw_detections(image, [[100.0, 100.0, 200.0, 180.0]], [0.87], [2], NAMES)
    # the label box sits above the box, filled with the class colour, with text in the contrasting colour
    above = out[80:100, 100:200]
    assert (above == color_for_class(2)).all(axis=2).sum() > 100
    assert (above == _text_color(color_for_class(2))).all(axis=2).sum() > 10


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError):
        draw_detections(np.zeros((10, 10), np.uint8), [], [], [], NAMES)
    with pytest.raises(ValueError):
        draw_detections(gray(), [[0, 0, 5, 5]], [0.5, 0.6], [0], NAMES)


def test_tags_and_boxes_without_scores():
    image = gray(120, 200)
    with_tag = draw_detections(image, [[20.0, 40.0, 80.0, 100.0]], [0.9], [0], NAMES, tags=["FP"])
    plain = draw_detections(image, [[20.0, 40.0, 80.0, 100.0]], [0.9], [0], NAMES)
    assert not np.array_equal(with_tag, plain)  # the label is longer
    assert (with_tag[50:90, 20] == color_for_class(0)).all()
    # no scores: every box is drawn (no threshold applies), labels without a number
    ground_truth = draw_detections(image, [[20.0, 40.0, 80.0, 100.0]], None, [0], NAMES, score_threshold=0.5)
    assert (ground_truth[50:90, 20] == color_for_class(0)).all()
    assert not np.array_equal(ground_truth, plain)
    with pytest.raises(ValueError, match="tags"):
        draw_detections(image, [[20.0, 40.0, 80.0, 100.0]], [0.9], [0], NAMES, tags=["a", "b"])
