import numpy as np
import pytest

from detkit.data.transforms import (
    TrainTransform,
    random_crop,
    resize_image_and_boxes,
    resize_shortest_edge_size,
    resize_shortest_edge_size_d2,
)

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


@pytest.mark.parametrize("size", [resize_shortest_edge_size, resize_shortest_edge_size_d2])
def test_resize_sizes_at_the_limits(size):
    # a side that scales to under half a pixel is 1, not 0 (nor 2)
    assert size(1000, 1, 10, 100) == (100, 1)  # 1000x1 -> 10000x10, capped by 1/100 -> 100x0.1
    assert size(1, 1000, 10, 100) == (1, 100)
    assert size(2, 4, 2, 1) == (1, 1)  # max_size 1 caps too: 0.5 x 1 rounds to 1 x 1
    assert size(3, 5, 2, 0) == (2, 3)  # max_size 0: no cap (not a cap at 0)


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


def test_resize_image_and_boxes_scales_per_axis_in_float32():
    image = np.zeros((40, 60, 3), np.uint8)
    out, boxes = resize_image_and_boxes(image, np.array([[6, 4, 30, 40]], np.float64), 20, 90)
    assert out.shape == (20, 90, 3)
    assert boxes.dtype == np.float32 and boxes.tolist() == [[9, 2, 45, 20]]  # x * 1.5, y * 0.5


def test_random_crop_clips_to_the_window_and_keeps_half_visible_boxes():
    image = np.zeros((40, 40, 3), np.uint8)  # crop 40: the whole image, nothing shifts
    boxes = np.array(
        [
            [-10, 0, 10, 20],  # half inside: 200 of 400 px^2 kept, exactly min_visible -> kept
            [-10.5, 5, 9.5, 25],  # 190 of 400 kept -> dropped
            [30, 30, 30.5, 30.5],  # a quarter pixel, wholly inside -> kept
            [35, 35, 60, 45],  # 25 of 250 kept -> dropped
        ],
        np.float32,
    )
    out, kept, labels = random_crop(image, boxes, np.array([0, 1, 2, 3]), 40, 0.5)
    assert out.shape == (40, 40, 3)
    assert kept.dtype == np.float32 and kept.tolist() == [[0, 0, 10, 20], [30, 30, 30.5, 30.5]]
    assert labels.tolist() == [0, 2]
    # a wider image: column x holds the value x, so the first column of the crop tells its offset
    wide = np.broadcast_to(np.arange(50, dtype=np.uint8)[None, :, None], (40, 50, 3)).copy()
    for seed in range(3):
        np.random.seed(seed)
        out, kept, _ = random_crop(wide, np.array([[20, 10, 30, 20]], np.float32), np.array([0]), 40, 0.5)
        x0 = int(out[0, 0, 0])
        assert out.shape == (40, 40, 3) and kept.tolist() == [[20 - x0, 10, 30 - x0, 20]]
    assert TrainTransform(min_sizes=[40], max_size=1000, hflip_prob=0.0, color_jitter=0.0, crop_size=1)(
        wide, np.zeros((0, 4)), np.zeros(0)
    )[0].shape == (1, 1, 3)


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_exact_boxes_after_resize_clip_and_flip(flip):
    # 128x256 halved to 64x128: every coordinate below is a multiple of 1/2, exact through
    # albumentations' normalisation by the power-of-two image size
    t = TrainTransform(min_sizes=[64], max_size=1000, hflip_prob=flip, color_jitter=0.0)
    boxes = np.array(
        [
            [-20, 6, 40, 50],  # -> [-10, 3, 20, 25], clipped to x 0
            [230, -10, 300, 30],  # -> [115, -5, 150, 15], clipped to [115, 0, 128, 15]
            [20, 20, 23, 23],  # 1.5 px square: kept
            [64, 20, 66, 40],  # 1 px wide: kept
            [80, 64, 100, 66],  # 1 px tall: kept
            [100, 20, 100, 40],  # 0 px wide: dropped
            [10, 90, 30, 90],  # 0 px tall: dropped
            [0, 0, 1, 10],  # 0.5 px wide: dropped
        ],
        np.float32,
    )
    image, out, labels = t(np.zeros((128, 256, 3), np.uint8), boxes, np.arange(8))
    expected = np.array(
        [[0, 3, 20, 25], [115, 0, 128, 15], [10, 10, 11.5, 11.5], [32, 10, 33, 20], [40, 32, 50, 33]], np.float32
    )
    if flip:
        expected[:, [0, 2]] = 128 - expected[:, [2, 0]]
    assert image.shape == (64, 128, 3) and labels.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)
    _, out, labels = t(np.zeros((128, 256, 3), np.uint8), np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    assert out.shape == (0, 4) and out.dtype == np.float32 and labels.dtype == np.int64


def test_labels_stay_with_their_boxes_at_the_one_pixel_limit():
    # 1 px wide boxes at eighth-pixel places: albumentations' normalisation by a width of 203 rounds
    # some of them just under 1 px and drops them; the labels of the others must still match
    np.random.seed(0)
    x = np.round(np.random.uniform(0, 200, 300) * 8) / 8
    boxes = np.stack([x, np.full_like(x, 3), x + 1, np.full_like(x, 13)], axis=1).astype(np.float32)
    t = TrainTransform(min_sizes=[50], max_size=1000, hflip_prob=0.0, color_jitter=0.0)
    _, out, labels = t(np.zeros((50, 203, 3), np.uint8), boxes, np.arange(300))
    assert len(out) == len(labels) > 0
    np.testing.assert_allclose(out, boxes[labels], rtol=0, atol=1e-4)


def test_colour_jitter_strengths_and_fresh_draws():
    t = TrainTransform(min_sizes=[8], max_size=1000, hflip_prob=0.0, color_jitter=0.4)
    jitter = t.pipeline.transforms[1]
    assert (jitter.brightness, jitter.contrast, jitter.saturation) == ((0.6, 1.4),) * 3
    assert jitter.hue == (0.0, 0.0) and jitter.p == 1.0
    # every call draws new factors: 100 calls on one colourful image give 100 different images
    image = np.random.default_rng(0).integers(30, 220, (8, 8, 3), dtype=np.uint8)
    np.random.seed(0)
    outs = {t(image, np.zeros((0, 4)), np.zeros(0))[0].tobytes() for _ in range(100)}
    assert image.tobytes() not in outs and len(outs) == 100
    with pytest.raises(ValueError, match="min_sizes must hold at least one size"):
        TrainTransform(min_sizes=[], max_size=1000, hflip_prob=0.0, color_jitter=0.0)
