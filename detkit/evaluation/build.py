"""From a test dataset to its evaluator, by the dataset's `kind`."""

from detkit.evaluation.coco import COCOEvaluator
from detkit.evaluation.voc import VOCEvaluator

COCO_FORMAT_KINDS = ("coco", "shapes")  # scored by pycocotools


def build_evaluator(dataset, *, backend: str = "pycocotools") -> COCOEvaluator | VOCEvaluator | None:
    """The evaluator of one test set, or None when there is no ground truth to evaluate against.

    Args:
        dataset: a dataset of `detkit.data` with a `kind`: "coco" or "shapes" (COCO-format, scored
            by pycocotools; None for an image-info json without annotations, such as test-dev),
            "voc" (the VOC rule of the set's year), "concat" (None: evaluate the parts one by one).
        backend: the COCOeval implementation for COCO-format sets (`detkit.evaluation.coco.COCO_BACKENDS`).
    """
    if dataset.kind == "voc":
        return VOCEvaluator(dataset_annotations=dataset.annotations, class_names=dataset.class_names, year=dataset.year)
    if dataset.kind in COCO_FORMAT_KINDS and dataset.has_annotations:
        return COCOEvaluator(
            coco_gt=dataset.coco, category_ids=dataset.category_ids, class_names=dataset.class_names, backend=backend
        )
    return None
