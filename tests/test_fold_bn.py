import torch
from torchvision.ops import FrozenBatchNorm2d

from detkit.modeling.fold_bn import fold_frozen_bn
from tests.conftest import randomise_frozen_bn, tiny_model


def test_folding_bn_keeps_outputs():
    for depth, head in [(18, "res5"), (50, "fc")]:
        model = tiny_model([f"model.backbone.depth={depth}", "model.backbone.norm=frozen_bn", f"model.roi_heads.head={head}",
                            "model.roi_heads.pooler_resolution=8"]).eval()
        randomise_frozen_bn(model)
        image = torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8)
        with torch.no_grad():
            batch, _, _ = model.preprocessor([image])
            features = model.backbone(batch)
            before = model([image])[0]
            folded = fold_frozen_bn(model)
            assert folded > 0 and not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
            after_features = model.backbone(batch)
            after = model([image])[0]
        # relative to the feature scale (random weights without normalisation give values in the 1e3s)
        assert (features - after_features).abs().max() <= 1e-4 * features.abs().max()
        assert torch.allclose(before["boxes"], after["boxes"], atol=1e-3)
        assert torch.allclose(before["scores"], after["scores"], atol=1e-4)
        assert torch.equal(before["labels"], after["labels"])


def test_preact_and_trainable_bn_are_not_folded():
    model = tiny_model(["model.backbone.preact=true", "model.backbone.norm=bn"]).eval()
    assert fold_frozen_bn(model) == 0
