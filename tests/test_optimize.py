"""Inference speed-ups (detkit.modeling.optimize): each keeps the detections; AMP keeps boxes in float32."""

import pytest
import torch
from torchvision.ops import FrozenBatchNorm2d

from detkit.modeling.detector import FasterRCNN
from detkit.modeling.optimize import optimize_for_inference
from detkit.modeling.roi_heads import RoIPooler
from tests.conftest import randomise_frozen_bn, tiny_model


def frozen_model(*extra):
    model = tiny_model(["model.backbone.norm=frozen_bn", "model.roi_heads.head=res5", "model.roi_heads.pooler_resolution=8",
                        *extra])
    randomise_frozen_bn(model)
    return model.eval()


def test_each_switch_keeps_the_detections():
    image = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = frozen_model()([image])[0]
    assert len(expected["boxes"]) > 0
    for fold_bn, channels_last in [(True, False), (False, True), (True, True)]:
        switches = {"fold_bn": fold_bn, "channels_last": channels_last}
        extra = ["model.channels_last=true"] if channels_last else []  # a layout build_model applies; folding keeps it
        model = optimize_for_inference(frozen_model(*extra), fold_bn=fold_bn)
        with torch.inference_mode():
            got = model([image])[0]
        assert torch.equal(got["labels"], expected["labels"]), switches
        assert torch.allclose(got["boxes"], expected["boxes"], atol=1e-3), switches
        assert torch.allclose(got["scores"], expected["scores"], atol=1e-4), switches


def test_fold_and_channels_last_change_the_modules():
    model = optimize_for_inference(frozen_model("model.channels_last=true"), fold_bn=True)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.roi_heads.pooler.channels_last and not model.training
    assert model.preprocessor.channels_last
    batch, _, _ = model.preprocessor([torch.zeros(3, 40, 50, dtype=torch.uint8)])
    assert batch.is_contiguous(memory_format=torch.channels_last) and not batch.is_contiguous()


def test_compile_wraps_the_trunk_and_the_region_head(monkeypatch):
    compiled = []

    def record(module, *, dynamic):
        compiled.append((module, dynamic))
        return module

    monkeypatch.setattr(torch, "compile", record)
    model = frozen_model()
    backbone, head = model.backbone, model.roi_heads.box_head
    optimize_for_inference(model, torch_compile=True)
    # the trunk sees one shape per image size; the head a number of regions that changes every image
    assert compiled == [(backbone, False), (head, True)]


def test_amp_is_a_no_op_on_cpu():
    model = optimize_for_inference(frozen_model(), amp=True)
    assert model.amp_dtype is None  # CUDA only: the same config runs on a CPU unchanged


@pytest.mark.parametrize(("bf16", "dtype"), [(True, torch.bfloat16), (False, torch.float16)])
def test_amp_dtype_on_cuda(monkeypatch, bf16, dtype):
    # the choice alone, without a GPU: the model says it is on CUDA, the GPU says whether it has bf16
    monkeypatch.setattr(FasterRCNN, "device", property(lambda self: torch.device("cuda")))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    assert optimize_for_inference(frozen_model(), amp=True).amp_dtype == dtype
    assert optimize_for_inference(frozen_model()).amp_dtype is None


def test_no_switch_no_change():
    model = frozen_model().train()
    backbone = model.backbone
    assert optimize_for_inference(model) is model and not model.training
    assert model.backbone is backbone and any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())


def test_pooling_and_proposals_stay_float32_under_autocast():
    feature = torch.randn(1, 8, 20, 30)
    boxes = [torch.tensor([[100.3, 50.7, 301.9, 210.2], [17.0, 33.0, 90.5, 88.25]])]
    pooler = RoIPooler(kind="roi_align", resolution=4)
    pooled = pooler(feature.bfloat16(), boxes)
    assert pooled.dtype == torch.float32
    # pooling the bf16-rounded map in float32 gives the same: the boxes were not rounded to bf16
    assert torch.allclose(pooled, pooler(feature.bfloat16().float(), boxes))
    model = frozen_model()
    image = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        batch, sizes, _ = model.preprocessor([image])
        feature = model.backbone(batch).bfloat16()
        proposals, _ = model.rpn(feature, sizes)  # the RPN head's outputs are bf16 under autocast
    assert proposals[0].dtype == torch.float32


@pytest.mark.slow
def test_compile_keeps_the_detections():
    image = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = frozen_model()([image])[0]
        got = optimize_for_inference(frozen_model(), torch_compile=True)([image])[0]
    assert torch.equal(got["labels"], expected["labels"])
    assert torch.allclose(got["boxes"], expected["boxes"], atol=1e-3)
    assert torch.allclose(got["scores"], expected["scores"], atol=1e-4)
