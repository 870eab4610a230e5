"""detkit's C4 detector against torchvision's FasterRCNN class built with the same parts and weights."""

import pytest
import torch

from detkit import build_model, load_config
from detkit.benchmark.compare import compare_detections
from detkit.benchmark.random_weights import calibrated_resnet_weights, spread_class_scores
from detkit.benchmark.torchvision_reference import build_torchvision_equivalent, torchvision_detections
from detkit.errors import UserError
from detkit.modeling.optimize import optimize_for_inference


@pytest.fixture(scope="module")
def r18_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "resnet18_calibrated.pth"
    calibrated_resnet_weights(18, path)
    return path


def c4_config(weights, extra=()):
    return load_config(None, [
        "model.num_classes=5",
        "model.backbone.depth=18",
        f"model.backbone.weights={weights}",
        "model.backbone.norm=frozen_bn",
        "model.rpn.anchor_sizes=[32,64,128]",
        "model.rpn.pre_nms_topk_test=400",
        "model.rpn.post_nms_topk_test=40",
        "input.min_size_test=160",
        "input.max_size_test=400",
        *extra,
    ])


def detector_and_reference(weights, extra=(), shape=(160, 213)):
    cfg = c4_config(weights, extra)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    image = torch.randint(0, 256, (3, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    spread_class_scores(model, image)
    return cfg, model, build_torchvision_equivalent(model, cfg), image


@pytest.mark.parametrize("pooler", ["roi_pool", "roi_align"])
def test_same_detections_as_torchvision(r18_weights, pooler):
    _, model, reference, image = detector_and_reference(r18_weights, [f"model.roi_heads.pooler={pooler}"])
    with torch.inference_mode():
        ours = model([image])[0]
        theirs = torchvision_detections(reference, image)
    assert len(ours["boxes"]) >= 10  # the comparison covers real post-processing, not two empty sets
    # the same computation in the same order: float-level agreement, far inside the benchmark's tolerances
    check = compare_detections(ours, theirs, min_iou=0.999, score_tol=1e-3)
    assert check["same"], check
    assert len(ours["boxes"]) == len(theirs["boxes"])


# torchvision floors the resized long side where detkit rounds it (detectron2's convention); these sizes
# resize to the same pixels under both: (160, 213) and (160, 208)
@pytest.mark.parametrize("shape", [(400, 533), (100, 130)])
def test_same_detections_as_torchvision_after_the_test_resize(r18_weights, shape):
    """Images larger and smaller than the test size: both detectors resize (short side 160, long side
    at most 400) and map boxes back to the input pixels, each with its own code."""
    _, model, reference, image = detector_and_reference(r18_weights, shape=shape)
    with torch.inference_mode():
        ours = model([image])[0]
        theirs = torchvision_detections(reference, image)
    assert len(ours["boxes"]) >= 10
    assert ours["boxes"][:, 2].max() > 0.5 * shape[1]  # boxes are in the input's pixels, not the resized ones
    check = compare_detections(ours, theirs, min_iou=0.999, score_tol=1e-3)
    assert check["same"], check


def test_speedups_keep_torchvision_detections(r18_weights):
    cfg, model, reference, image = detector_and_reference(r18_weights, ["model.channels_last=true"])
    optimize_for_inference(model, fold_bn=True)
    assert model.roi_heads.pooler.channels_last and model.preprocessor.channels_last
    with torch.inference_mode():
        check = compare_detections(model([image])[0], torchvision_detections(reference, image))
    assert check["same"], check


def test_reference_refuses_what_torchvision_lacks(r18_weights):
    for extra in (["model.roi_heads.head=fc"], ["model.roi_heads.global_context=true"], ["model.backbone.norm=bn"]):
        cfg = c4_config(r18_weights, extra)
        with pytest.raises(UserError, match="torchvision"):
            build_torchvision_equivalent(build_model(cfg), cfg)


def test_reference_needs_unfolded_bn(r18_weights):
    cfg = c4_config(r18_weights)
    model = optimize_for_inference(build_model(cfg), fold_bn=True)
    with pytest.raises(ValueError, match="before folding"):
        build_torchvision_equivalent(model, cfg)


def test_compare_detections_tolerates_only_ties_at_the_cut():
    boxes = torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 70]])
    a = {"boxes": boxes, "scores": torch.tensor([0.9, 0.5, 0.1]), "labels": torch.tensor([0, 1, 2])}
    assert compare_detections(a, a) == {"same": True, "worst_iou": 1.0, "max_score_diff": 0.0, "counts": (3, 3)}
    # the lowest-scored detection missing from one side: a tie at the top-N cut is allowed ...
    assert compare_detections(a, {k: v[:2] for k, v in a.items()})["same"]
    # ... but not a confident one missing, a moved box, another label or another score
    assert not compare_detections(a, {k: v[1:] for k, v in a.items()})["same"]
    moved = compare_detections(a, {**a, "boxes": boxes + torch.tensor([1.0, 0, 1, 0])})
    assert not moved["same"] and moved["worst_iou"] < 0.99
    assert not compare_detections(a, {**a, "labels": torch.tensor([0, 2, 2])})["same"]
    rescored = compare_detections(a, {**a, "scores": torch.tensor([0.9, 0.4, 0.1])})
    assert not rescored["same"] and abs(rescored["max_score_diff"] - 0.1) < 1e-6
