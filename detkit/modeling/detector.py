"""Faster R-CNN in the C4 design: preprocess -> backbone (conv1..conv4) -> RPN -> RoI heads -> postprocess.

Shapes:
    N  images; each input image (3, H_i, W_i) RGB in 0..255 (uint8 or float), whatever `input_format`
    batch (N, 3, Hp, Wp) normalised and zero-padded to a multiple of 16
    feature (N, C, Hp/16, Wp/16)
Training returns {loss_rpn_cls, loss_rpn_box, loss_cls, loss_box}; eval returns per image
{boxes (D, 4) xyxy in the input image's pixels, scores (D,), labels (D,) in 0..K-1}.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkit.data.transforms import resize_pixels_pil, resize_shortest_edge_size, resize_shortest_edge_size_d2
from detkit.modeling.backbone.resnet import C4_STRIDE
from detkit.modeling.roi_heads import RoIHeads
from detkit.modeling.rpn import RPN
from detkit.structures.boxes import clip_boxes, nonempty


class ImagePreprocessor(nn.Module):
    """Normalises images the way the backbone's weights expect, resizes at test time, pads into a batch.

    Images arrive RGB in 0..255. With `input_format="BGR"` the channels are reversed first (detectron2's and
    MSRA's weights read BGR); then x -> (x - mean) / std with `pixel_mean`/`pixel_std` given for pixels in
    0..`pixel_range` (1.0: torchvision's convention, 0-1 images; 255.0: detectron2's) and in that channel order.
    Training inputs arrive already resized by the data pipeline; in eval mode images are resized so the
    short side is `min_size_test` (long side at most `max_size_test`), and `postprocess` maps boxes back.
    `resize`: "tensor" interpolates the normalised float image (torch bilinear); "pil" resizes the raw
    pixels before normalising, uint8 through PIL's bilinear filter, as detectron2's ResizeShortestEdge does.
    `size_divisibility`: the batch is zero-padded to a multiple of it (0: to the largest image only, as
    detectron2's C4 models). `clip_mapped_boxes`: boxes mapped back to the input image are clipped to it
    and those left empty dropped (detectron2's detector_postprocess).
    """

    def __init__(
        self,
        *,
        pixel_mean: list[float],
        pixel_std: list[float],
        min_size_test: int,
        max_size_test: int,
        size_divisibility: int = C4_STRIDE,
        input_format: str = "RGB",
        pixel_range: float = 1.0,
        resize: str = "tensor",
        clip_mapped_boxes: bool = False,
    ):
        super().__init__()
        if input_format not in ("RGB", "BGR"):
            raise ValueError(f"input_format must be RGB or BGR, got {input_format!r}")
        if resize not in ("tensor", "pil"):
            raise ValueError(f"resize must be tensor or pil, got {resize!r}")
        self.channels_last = False  # NHWC batches; set by `detkit.modeling.optimize.use_channels_last`
        to_255 = 255.0 / pixel_range
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(3, 1, 1) * to_255, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(3, 1, 1) * to_255, persistent=False)
        self.min_size_test = min_size_test
        self.max_size_test = max_size_test
        self.size_divisibility = size_divisibility
        self.input_format = input_format
        self.resize = resize
        self.clip_mapped_boxes = clip_mapped_boxes

    def forward(
        self,
        images: list[Tensor],
        targets: list[dict] | None = None,
        *,
        min_size: int | None = None,
        max_size: int | None = None,
    ) -> tuple[Tensor, list[tuple[int, int]], list[dict] | None]:
        """Returns the padded batch (N, 3, Hp, Wp), each image's (h, w) inside it, and targets on the device.

        `min_size`/`max_size` replace the test sizes for this call (multi-scale testing).
        """
        min_size = self.min_size_test if min_size is None else min_size
        max_size = self.max_size_test if max_size is None else max_size
        resize = not self.training and min_size > 0
        device = self.pixel_mean.device
        processed, sizes = [], []
        for i, image in enumerate(images):
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(f"image {i} must be a (3, H, W) RGB tensor, got shape {tuple(image.shape)}")
            if resize and self.resize == "pil":
                new_h, new_w = resize_shortest_edge_size_d2(image.shape[-2], image.shape[-1], min_size, max_size)
                if (new_h, new_w) != tuple(image.shape[-2:]):
                    image = resize_pixels_pil(image, new_h, new_w)
            x = image.to(device=device, dtype=torch.float32)
            if self.input_format == "BGR":
                x = x.flip(0)  # (3, H, W) RGB -> BGR
            x = (x - self.pixel_mean) / self.pixel_std
            if resize and self.resize == "tensor":
                h, w = x.shape[-2:]
                new_h, new_w = resize_shortest_edge_size(h, w, min_size, max_size)
                if (new_h, new_w) != (h, w):
                    # (3, H, W) -> (1, 3, H, W) -> resize -> (3, h', w')
                    x = F.interpolate(x[None], size=(new_h, new_w), mode="bilinear", align_corners=False)[0]
            processed.append(x)
            sizes.append((x.shape[-2], x.shape[-1]))
        if targets is not None:
            targets = [
                {**t, "boxes": t["boxes"].to(device=device, dtype=torch.float32), "labels": t["labels"].to(device)}
                for t in targets
            ]
        return self.batch(processed), sizes, targets

    def batch(self, images: list[Tensor]) -> Tensor:
        """Zero-pad (in normalised space, i.e. mean colour) to a common size divisible by the stride
        (`size_divisibility` 0: the largest image's size)."""
        d = max(self.size_divisibility, 1)
        max_h = math.ceil(max(im.shape[-2] for im in images) / d) * d
        max_w = math.ceil(max(im.shape[-1] for im in images) / d) * d
        out = images[0].new_zeros((len(images), 3, max_h, max_w))
        for im, slot in zip(images, out):
            slot[:, : im.shape[-2], : im.shape[-1]].copy_(im)
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out

    def postprocess(
        self, detections: list[dict], sizes: list[tuple[int, int]], original_sizes: list[tuple[int, int]]
    ) -> list[dict]:
        """Scale boxes from the resized image back to the input image's pixels (and clip, with `clip_mapped_boxes`)."""
        out = []
        for det, (h, w), (oh, ow) in zip(detections, sizes, original_sizes):
            scale = torch.tensor([ow / w, oh / h, ow / w, oh / h], device=det["boxes"].device)
            det = {**det, "boxes": det["boxes"] * scale}
            if self.clip_mapped_boxes:
                boxes = clip_boxes(det["boxes"], oh, ow)
                keep = nonempty(boxes)
                det = {**{k: v[keep] for k, v in det.items()}, "boxes": boxes[keep]}
            out.append(det)
        return out


class FasterRCNN(nn.Module):
    """The detector receives built parts; see `detkit.modeling.build.build_model` for the config mapping."""

    def __init__(self, *, preprocessor: ImagePreprocessor, backbone: nn.Module, rpn: RPN, roi_heads: RoIHeads):
        super().__init__()
        self.preprocessor = preprocessor
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.amp_dtype: torch.dtype | None = None  # inference under autocast (set by detkit.modeling.optimize)

    def autocast(self) -> torch.autocast:
        """Autocast for inference when AMP was switched on (CUDA); a disabled context otherwise."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    @property
    def device(self) -> torch.device:
        return self.preprocessor.pixel_mean.device

    def forward(self, images: list[Tensor], targets: list[dict] | None = None) -> dict[str, Tensor] | list[dict]:
        """images: list of (3, H, W) RGB 0..255. targets (training): {boxes (G, 4) xyxy, labels (G,)} each."""
        if self.training and targets is None:
            raise ValueError("FasterRCNN needs targets in training mode")
        if not self.training:
            return self.inference(images)
        batch, sizes, targets = self.preprocessor(images, targets)
        feature = self.backbone(batch)
        proposals, rpn_losses = self.rpn(feature, sizes, targets)
        _, head_losses = self.roi_heads(feature, proposals, sizes, targets)
        return {**rpn_losses, **head_losses}

    def inference(self, images: list[Tensor], *, min_size: int | None = None, max_size: int | None = None) -> list[dict]:
        """Detections in each input image's pixels; `min_size`/`max_size` override the test scale."""
        original_sizes = [(im.shape[-2], im.shape[-1]) for im in images]
        batch, sizes, _ = self.preprocessor(images, min_size=min_size, max_size=max_size)
        with self.autocast():
            feature = self.backbone(batch)
            proposals, _ = self.rpn(feature, sizes)
            detections, _ = self.roi_heads(feature, proposals, sizes)
        return self.preprocessor.postprocess(detections, sizes, original_sizes)
