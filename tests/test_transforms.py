import numpy as np
import pytest

from detkit.data.transforms import TrainTransform, resize_shortest_edge_size

MAGENTA = (255, 0, 255)


def _scene():
    """120x200 grey image, two filled rectangles of unique colours, boxes in continuous pixels."""
    image = np.full((120, 200, 3), 90, np.uint8)
    image[20:60, 30:90] = MAGENTA  # x 30..90, y 20..60
    image[70:110, 150:190] = (0, 255, 255)
    boxes = np.array([[30, 20, 90, 60], [150, 70, 190, 110]], np.float32)
    return image, boxes, np.array([4, 1], np.int64)


def _region(image, colour):
    mask = (np.abs(image.astype(int) - colour) < 60).all(axis=2)
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def test_resize_shortest_edge_size():
    assert resize_shortest_edge_size(480, 640, 600, 1000) == (600, 800)
    assert resize_shortest_edge_size(640, 480, 600, 1000) == (800, 600)
    assert resize_shortest_edge_size(100, 400, 600, 1000) == (250, 1000)  # long side capped
    assert resize_shortest_edge_size(333, 500, 600, 1000) == (600, 901)  # 900.9 rounds to 901
    assert resize_shortest_edge_size(3, 5, 2, 0) == (2, 3)  # 3.33 -> 3; max_size 0: no cap
    assert resize_shortest_edge_size(2, 5, 3, 0) == (3, 8)  # 7.5: halves round up


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_boxes_follow_the_image(flip):
    np.random.seed(0)
    t = TrainTransform(min_sizes=[90, 150], max_size=400, hflip_prob=flip, color_jitter=0.0)
    for _ in range(4):
        image, boxes, labels = _scene()
        out, out_boxes, out_labels = t(image, boxes, labels)
        assert out.dtype == np.uint8 and out.ndim == 3 and min(out.shape[:2]) in (90, 150)
        assert out_boxes.dtype == np.float32 and out_labels.dtype == np.int64
        assert out_labels.tolist() == [4, 1]
        np.testing.assert_allclose(out_boxes[0], _region(out, MAGENTA), atol=1.5)
        np.testing.assert_allclose(out_boxes[1], _region(out, (0, 255, 255)), atol=1.5)
        # flipped: the magenta box moves to the right half
        assert (out_boxes[0, 0] > out.shape[1] / 2) == (flip == 1.0)


def test_colour_jitter_keeps_geometry_and_inputs():
    np.random.seed(1)
    t = TrainTransform(min_sizes=[120], max_size=1000, hflip_prob=0.0, color_jitter=0.4)
    image, boxes, labels = _scene()
    before = (image.copy(), boxes.copy(), labels.copy())
    out, out_boxes, _ = t(image, boxes, labels)
    assert out.shape == (120, 200, 3)
    np.testing.assert_allclose(out_boxes, boxes, atol=1e-3)
    for a, b in zip(before, (image, boxes, labels)):
        assert np.array_equal(a, b)  # inputs not mutated


def test_degenerate_and_empty_boxes():
    t = TrainTransform(min_sizes=[50], max_size=1000, hflip_prob=0.5, color_jitter=0.0)
    image = np.zeros((100, 200, 3), np.uint8)
    boxes = np.array([[10, 10, 11.5, 60], [-20, 5, 40, 50], [190, 0, 260, 30], [0, 0, 0, 10]], np.float32)
    _, out_boxes, out_labels = t(image, boxes, np.array([0, 1, 2, 3]))
    # after halving: 0.75 px wide -> dropped; boxes outside are clipped; zero-width dropped
    assert out_labels.tolist() == [1, 2]
    assert (out_boxes >= 0).all() and (out_boxes[:, [0, 2]] <= 100).all() and (out_boxes[:, [1, 3]] <= 50).all()
    out, out_boxes, out_labels = t(image, np.zeros((0, 4), np.float32), np.zeros((0,), np.int64))
    assert out.shape == (50, 100, 3) and out_boxes.shape == (0, 4) and out_labels.shape == (0,)


def test_reproducible_under_numpy_seed():
    t = TrainTransform(min_sizes=[60, 80, 100], max_size=1000, hflip_prob=0.5, color_jitter=0.3)
    runs = []
    for _ in range(2):
        np.random.seed(123)
        runs.append([t(*_scene()) for _ in range(5)])
    for a, b in zip(*runs):
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert len({r[0].shape for r in runs[0]}) > 1  # the sizes do vary


def test_random_crop_keeps_boxes_on_their_pixels_and_drops_slivers():
    t = TrainTransform(min_sizes=[120], max_size=1000, hflip_prob=0.0, color_jitter=0.0, crop_size=80,
                              crop_min_visible=0.5)
    image, boxes, labels = _scene()
    seen_none = False
    for seed in range(40):
        np.random.seed(seed)
        out, out_boxes, out_labels = t(image, boxes, labels)
        assert out.shape == (80, 80, 3)
        for box, label in zip(out_boxes, out_labels):
            colour = MAGENTA if label == 4 else (0, 255, 255)
            # the clipped box is exactly the object's visible pixels in the crop
            np.testing.assert_allclose(box, _region(out, colour), atol=1.0)
            full = boxes[list(labels).index(label)]
            assert (box[2] - box[0]) * (box[3] - box[1]) >= 0.5 * (full[2] - full[0]) * (full[3] - full[1]) - 1e-3
        seen_none |= len(out_labels) == 0
    assert seen_none  # crops far from both objects (or keeping slivers only) occur and yield no boxes
    # an image smaller than the crop is kept whole
    np.random.seed(0)
    small, small_boxes, _ = TrainTransform(min_sizes=[60], max_size=1000, hflip_prob=0.0, color_jitter=0.0,
                                                  crop_size=200)(image, boxes, labels)
    assert small.shape == (60, 100, 3) and len(small_boxes) == 2
