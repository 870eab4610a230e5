"""COCO box evaluation with pycocotools, the official evaluator.

`COCOEvaluator` accumulates detections image by image (reset / process / evaluate) and
`evaluate_results` scores a list of COCO result dicts, e.g. a saved `detections.json`.
`make_cocoeval` picks the COCOeval implementation: pycocotools (the reference) or
faster-coco-eval (the same numbers, computed in C++).
Metrics are percent values: AP (mean over IoU .50:.05:.95), AP50, AP75, APs, APm, APl
(101-point interpolated precision, 100 detections per image), and `per_class` {name: AP}.
A metric without ground truth to measure (a class, or an area range, absent from the
evaluated images) is None, where pycocotools reports -1.
"""

import contextlib
import copy
import io
import math

import numpy as np
from pycocotools.coco import COCO

from detkit.errors import UserError
from detkit.evaluation.results import to_coco_results

SUMMARY_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # the first six numbers of COCOeval.stats
COCO_BACKENDS = ("pycocotools", "faster_coco_eval")


def make_cocoeval(coco_gt, coco_dt, *, backend: str = "pycocotools"):
    """A bbox COCOeval over pycocotools `COCO` objects, from pycocotools or faster-coco-eval.

    Both expose `params`, `evaluate()`, `accumulate()`, `summarize()`, `stats` (12 numbers) and
    `eval["precision"]` (T, R, K, A, M) with the same meaning; faster-coco-eval computes them in C++.
    """
    if backend == "pycocotools":
        from pycocotools.cocoeval import COCOeval

        return COCOeval(coco_gt, coco_dt, iouType="bbox")
    if backend == "faster_coco_eval":
        try:
            from faster_coco_eval import COCOeval_faster
        except ImportError:
            raise UserError(
                "the faster_coco_eval backend needs the faster-coco-eval package: pip install faster-coco-eval"
            ) from None
        return COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=print)
    raise UserError(f"unknown COCO evaluation backend {backend!r}; choose one of {', '.join(COCO_BACKENDS)}")


def cocoeval_stats(coco_gt, results: list[dict], *, backend: str = "pycocotools", quiet: bool = True):
    """pycocotools' 12 summary numbers (fractions, -1: nothing to measure) and the precision array
    (T, R, K, A, M) of `results` against `coco_gt` (every image and category), with `backend`."""
    out = io.StringIO() if quiet else None
    with contextlib.redirect_stdout(out) if quiet else contextlib.nullcontext():
        coco_dt = coco_gt.loadRes([dict(r, bbox=list(r["bbox"])) for r in results])
        evaluator = make_cocoeval(coco_gt, coco_dt, backend=backend)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.asarray(evaluator.stats[:12], dtype=np.float64), np.asarray(evaluator.eval["precision"])


def _percent(value: float) -> float | None:
    """pycocotools' value (-1: nothing to measure) -> percent or None."""
    value = float(value)
    return None if value < 0 or math.isnan(value) else 100.0 * value


def _empty_results(coco_gt: COCO) -> COCO:
    """A results object without detections (`COCO.loadRes` cannot take an empty list)."""
    coco_dt = COCO()
    coco_dt.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": copy.deepcopy(coco_gt.dataset.get("categories", [])),
        "annotations": [],
    }
    with contextlib.redirect_stdout(None):
        coco_dt.createIndex()
    return coco_dt


def format_per_class_table(per_class: dict, extra: dict | None = None, title: str = "AP", columns: int = 3) -> str:
    """A compact text table of per-class values (percent; None shown as '-').

    `extra` adds a second value per class (e.g. AP50), shown as 'AP/AP50'.
    """

    def fmt(v):
        return "-" if v is None else f"{v:.1f}"

    cells = []
    for name, v in per_class.items():
        value = fmt(v) if extra is None else f"{fmt(v)}/{fmt(extra.get(name))}"
        cells.append((name, value))
    if not cells:
        return ""
    name_w = max(len("class"), max(len(n) for n, _ in cells))
    val_w = max(len(title), max(len(v) for _, v in cells))
    columns = max(1, min(columns, len(cells)))
    header = " | ".join(f"{'class':<{name_w}} {title:>{val_w}}" for _ in range(columns))
    lines = [header, "-" * len(header)]
    for start in range(0, len(cells), columns):
        row = cells[start : start + columns]
        lines.append(" | ".join(f"{n:<{name_w}} {v:>{val_w}}" for n, v in row))
    return "\n".join(lines)


def evaluate_results(
    coco_gt: COCO,
    results: list[dict],
    class_names: list[str],
    category_ids: list[int],
    img_ids: list[int] | None = None,
    backend: str = "pycocotools",
) -> dict:
    """Score COCO result dicts against `coco_gt` with pycocotools' COCOeval (bbox).

    Args:
        coco_gt: ground truth (a COCO instances json with `annotations`).
        results: `{image_id, category_id, bbox [x, y, w, h], score}` dicts (not modified).
        class_names, category_ids: per class index, the name and the dataset's category id.
        img_ids: evaluate exactly these images; None: every image of `coco_gt`.
        backend: "pycocotools" (the reference) or "faster_coco_eval" (the same numbers, in C++).

    Returns:
        {"AP", "AP50", "AP75", "APs", "APm", "APl": percent or None, "per_class": {name: AP or None}}.
        Prints pycocotools' 12-line summary and a per-class table (AP / AP50) to stdout.
    """
    if len(class_names) != len(category_ids):
        raise ValueError(f"{len(class_names)} class names but {len(category_ids)} category ids")
    if "annotations" not in coco_gt.dataset:
        raise UserError(
            "the COCO json has no 'annotations' (an image_info file?): there is no ground truth to evaluate against"
        )
    gt_img_ids = set(coco_gt.getImgIds())
    img_ids = sorted(gt_img_ids) if img_ids is None else sorted(set(img_ids))
    unknown = [i for i in img_ids if i not in gt_img_ids]
    for i, r in enumerate(results):
        if r["image_id"] not in gt_img_ids:
            raise UserError(
                f"detection {i} refers to image_id {r['image_id']!r}, which the ground truth json does not hold; "
                "evaluate against the dataset the detections were made on"
            )
    if unknown:
        raise UserError(f"image ids {unknown[:5]} are not in the ground truth json")

    if results:
        # loadRes adds keys (area, id, segmentation) to the dicts it gets: give it copies.
        coco_dt = coco_gt.loadRes([dict(r, bbox=list(r["bbox"])) for r in results])
    else:
        print("No detections: every AP is 0 where ground truth exists.")
        coco_dt = _empty_results(coco_gt)
    coco_eval = make_cocoeval(coco_gt, coco_dt, backend=backend)
    coco_eval.params.imgIds = img_ids
    coco_eval.params.catIds = list(category_ids)
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()

    metrics, per_class_ap50 = summary_metrics(coco_eval, class_names, category_ids)
    print("Per-class AP / AP50 (bbox, percent; '-': no ground truth):")
    print(format_per_class_table(metrics["per_class"], extra=per_class_ap50, title="AP/AP50"))
    return metrics


def summary_metrics(coco_eval, class_names: list[str], category_ids: list[int]) -> tuple[dict, dict]:
    """The metrics of a summarized COCOeval (standard IoU thresholds; area ranges found by label).

    Returns:
        ({"AP", "AP50", "AP75", "APs", "APm", "APl", "per_class": {name: AP}}, {name: AP50}),
        percent or None where there is no ground truth.
    """
    metrics: dict = {key: _percent(v) for key, v in zip(SUMMARY_KEYS, coco_eval.stats[:6])}
    # precision: (T iou thresholds, R recall points, K categories, A area ranges, M max dets);
    # K follows params.catIds, which COCOeval.evaluate() has sorted.
    precision = coco_eval.eval["precision"]
    k_of_cat = {int(c): k for k, c in enumerate(coco_eval.params.catIds)}
    area_all = list(coco_eval.params.areaRngLbl).index("all")
    per_class, per_class_ap50 = {}, {}
    for name, cat in zip(class_names, category_ids):
        p = precision[:, :, k_of_cat[int(cat)], area_all, -1]  # maxDets 100
        valid = p[p > -1]
        per_class[name] = float(valid.mean()) * 100.0 if valid.size else None
        p50 = p[0]
        valid50 = p50[p50 > -1]
        per_class_ap50[name] = float(valid50.mean()) * 100.0 if valid50.size else None
    metrics["per_class"] = per_class
    return metrics, per_class_ap50


class COCOEvaluator:
    """Accumulates detections over a COCO-format test set and scores them with pycocotools.

    Args:
        coco_gt: the test set's ground truth.
        category_ids: the dataset's category id of each contiguous class index.
        class_names: the name of each class index.
        backend: the COCOeval implementation (`COCO_BACKENDS`).
    """

    def __init__(
        self, *, coco_gt: COCO, category_ids: list[int], class_names: list[str], backend: str = "pycocotools"
    ):
        if len(class_names) != len(category_ids):
            raise ValueError(f"{len(class_names)} class names but {len(category_ids)} category ids")
        self.coco_gt = coco_gt
        self.category_ids = list(category_ids)
        self.class_names = list(class_names)
        self.backend = backend
        self.reset()

    def reset(self) -> None:
        self._results: list[dict] = []
        self._img_ids: list[int] = []

    def process(self, targets: list[dict], outputs: list[dict]) -> None:
        """Add one batch: `targets[i]["image_id"]` and the model's `outputs[i]` (boxes in original pixels)."""
        if len(targets) != len(outputs):
            raise ValueError(f"{len(targets)} targets but {len(outputs)} outputs")
        for target, output in zip(targets, outputs):
            dets = to_coco_results(target["image_id"], output, self.category_ids)
            self._results.extend(dets)
            image_id = target["image_id"]
            self._img_ids.append(int(image_id.item() if hasattr(image_id, "item") else image_id))

    @property
    def results(self) -> list[dict]:
        """The COCO result dicts accumulated since the last `reset()` (what `detections.json` holds)."""
        return self._results

    @property
    def image_ids(self) -> list[int]:
        """The image ids processed since the last `reset()`."""
        return list(dict.fromkeys(self._img_ids))

    def evaluate(self) -> dict:
        """Metrics over exactly the processed images; see `evaluate_results`."""
        if not self._img_ids:
            raise ValueError("COCOEvaluator.evaluate() called before any process()")
        return self.evaluate_results(self._results, self.image_ids)

    def evaluate_results(self, results: list[dict], image_ids: list[int] | None) -> dict:
        """Metrics of result dicts made elsewhere (a saved `detections.json`) over `image_ids`
        (None: every image of the ground truth); see `evaluate_results`."""
        return evaluate_results(
            self.coco_gt, results, self.class_names, self.category_ids, img_ids=image_ids, backend=self.backend
        )


__all__ = ["COCO_BACKENDS", "COCOEvaluator", "cocoeval_stats", "evaluate_results", "format_per_class_table", "make_cocoeval", "summary_metrics"]
