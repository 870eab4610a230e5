import torch

from detkit.modeling.box_coder import BoxCoder
from detkit.structures.boxes import (
    cxcywh_to_xyxy,
    flip_boxes,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
    xyxy_to_xywh,
)


def random_boxes(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 500
    wh = torch.rand(n, 2, generator=g) * 200 + 1
    return torch.cat([xy, xy + wh], dim=1)


def test_format_conversions_are_inverse():
    b = random_boxes(50)
    assert torch.allclose(xywh_to_xyxy(xyxy_to_xywh(b)), b, atol=1e-4)
    assert torch.allclose(cxcywh_to_xyxy(xyxy_to_cxcywh(b)), b, atol=1e-4)
    assert torch.equal(xyxy_to_xywh(torch.tensor([[10.0, 20.0, 15.0, 40.0]])), torch.tensor([[10.0, 20.0, 5.0, 20.0]]))


def test_flip_is_an_involution_and_mirrors():
    b = torch.tensor([[10.0, 5.0, 30.0, 25.0]])
    assert torch.equal(flip_boxes(b, 100), torch.tensor([[70.0, 5.0, 90.0, 25.0]]))
    assert torch.equal(flip_boxes(flip_boxes(b, 100), 100), b)


def test_encode_decode_round_trip():
    for weights in [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]:
        coder = BoxCoder(weights=weights)
        boxes, ref = random_boxes(100, 1), random_boxes(100, 2)
        deltas = coder.encode(boxes, ref)
        assert torch.allclose(coder.decode(deltas, ref), boxes, atol=1e-3)


def test_encode_known_values():
    coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    ref = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    box = torch.tensor([[5.0, 0.0, 15.0, 20.0]])  # centre +5 in x, +5 in y, width x1, height x2
    d = coder.encode(box, ref)
    expected = torch.tensor([[10 * 0.5, 10 * 0.5, 0.0, 5 * torch.log(torch.tensor(2.0))]])
    assert torch.allclose(d, expected, atol=1e-6)
    assert torch.allclose(coder.decode(torch.zeros(1, 4), ref), ref)


def test_decode_class_specific_and_clamped():
    coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    ref = random_boxes(7)
    deltas = torch.zeros(7, 3 * 4)
    out = coder.decode(deltas, ref)
    assert out.shape == (7, 12)
    assert torch.allclose(out.view(7, 3, 4), ref[:, None].expand(7, 3, 4))
    huge = torch.full((1, 4), 1e4)
    assert torch.isfinite(coder.decode(huge, ref[:1])).all()


def test_decode_converts_the_reference_to_the_deltas_dtype_first():
    """float64 deltas on a float32 reference decode exactly as on that reference in float64 (centres and sizes
    are not rounded to float32 on the way)."""
    coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    reference = torch.tensor([[0.1, 0.3, 1000.3, 700.7], [12.34, 56.78, 90.12, 345.67]])  # float32
    deltas = torch.tensor([[0.5, -0.25, 0.1, 0.2], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    decoded = coder.decode(deltas, reference)
    assert decoded.dtype == torch.float64
    assert torch.equal(decoded, coder.decode(deltas, reference.double()))
