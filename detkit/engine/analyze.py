"""tools/analyze.py: explain a saved results file against `data.test[I]` in a report folder.

Writes `index.html` (static, no script), PNG figures, `gallery/*.jpg`, `analysis.json` (every number
shown) and `metrics.json` (what tools/evaluate.py writes). The numbers come from
`detkit.evaluation.analysis`, `error_breakdown` and `confusion`; the drawing from `detkit.report`.
"""

import contextlib
import io
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from detkit.atomic_write import write_json
from detkit.engine.saved_results import load_saved_results
from detkit.errors import UserError
from detkit.evaluation import analysis, confusion, error_breakdown
from detkit.evaluation.build import build_evaluator
from detkit.evaluation.coco import summary_metrics
from detkit.evaluation.provenance import read_sidecar, write_sidecar
from detkit.report import figures, gallery
from detkit.report.html import render_index

FIGURES = {
    "per_class": "per_class_ap.png",
    "pr": "pr_overall.png",
    "pr_per_class": "pr_per_class.png",
    "errors": "errors_overall.png",
    "errors_per_class": "errors_per_class.png",
    "confusion": "confusion.png",
    "sizes": "sizes.png",
}


def report_dir_for(results_path: str | os.PathLike) -> Path:
    """`<results stem>_report/` beside the results."""
    results_path = Path(results_path)
    return results_path.with_name(results_path.stem + "_report")


def _metrics(dataset, gt, standard_eval, results: list[dict]) -> dict:
    """metrics.json as tools/evaluate.py computes it: COCO-format sets from the same COCOeval, VOC sets
    by the VOC rule (the evaluators' printed tables are not shown)."""
    with contextlib.redirect_stdout(io.StringIO()):
        if dataset.kind == "voc":
            return build_evaluator(dataset).evaluate_results(results, list(dataset.image_ids))
        standard_eval.summarize()
    return summary_metrics(standard_eval, gt.class_names, gt.category_ids)[0]


def compute_analysis(
    gt: analysis.GroundTruth,
    results: list[dict],
    *,
    score_threshold: float,
    backend: str,
    step: Callable[[], None],
):
    """(numbers of analysis.json without the gallery, the standard COCOeval, every image's outcome)."""
    coco_dt = analysis.detections_coco(gt, results)
    standard = analysis.run_cocoeval(
        gt.coco, coco_dt, image_ids=gt.coco_image_ids, category_ids=gt.category_ids, backend=backend
    )
    step()
    curves = error_breakdown.error_curves(gt, coco_dt, standard, backend=backend, step=step)
    sizes = analysis.size_view(gt, coco_dt, backend=backend)
    step()
    outcomes = confusion.image_outcomes(gt, results, iou=0.5, score_threshold=score_threshold)
    sizes["recall_at_threshold"] = confusion.recall_by_size(outcomes, sizes["edges"])
    matrix = confusion.confusion_matrix(outcomes, len(gt.class_names))
    step()
    numbers = {
        "per_class": analysis.per_class_table(gt, standard, results),
        "pr_curves": analysis.pr_curves(gt, standard, score_threshold),
        "errors": error_breakdown.error_breakdown(gt, curves),
        "confusion": {
            "classes": [*gt.class_names, "background"],
            "matrix": matrix.tolist(),
            "duplicates": confusion.duplicate_counts(outcomes, len(gt.class_names)),
            "iou": 0.5,
            "score_threshold": score_threshold,
        },
        "sizes": sizes,
    }
    return numbers, standard, outcomes


def draw_report(numbers: dict, output: Path, step: Callable[[], None]) -> None:
    """The PNG figures of `numbers` (analysis.json) into `output`."""
    recall = numbers["pr_curves"]["recall"]
    threshold = numbers["score_threshold"]
    jobs = [
        (figures.per_class_bars, (numbers["per_class"],)),
        (figures.pr_overall, (numbers["pr_curves"], threshold)),
        (figures.pr_per_class, (numbers["pr_curves"],)),
        (figures.breakdown_overall, (numbers["errors"], recall)),
        (figures.breakdown_per_class, (numbers["errors"], recall)),
        (figures.confusion_heatmap, (numbers["confusion"],)),
        (figures.size_chart, (numbers["sizes"],)),
    ]
    for (draw, args), name in zip(jobs, FIGURES.values()):
        draw(*args, output / name)
        step()


def _image_loader(dataset) -> Callable[[object], np.ndarray | None]:
    """image id -> (H, W, 3) uint8 BGR image of the dataset (None when unreadable)."""
    index = {image_id: i for i, image_id in enumerate(dataset.image_ids)}

    def load(image_id):
        item = dataset[index[image_id]]
        if item is None:
            return None
        return np.ascontiguousarray(item[0].permute(1, 2, 0).numpy()[:, :, ::-1])  # (3, H, W) RGB -> BGR

    return load


def analyze_saved_results(
    cfg,
    results_path: str | os.PathLike,
    *,
    output_dir: str | os.PathLike | None = None,
    dataset_index: int = 0,
    score_threshold: float = 0.5,
    gallery_size: int = 12,
    backend: str = "pycocotools",
    config_path: str | None = None,
) -> tuple[Path, dict]:
    """Write the report of a saved results file; returns (the report folder, metrics.json's metrics)."""
    if not 0.0 <= score_threshold <= 1.0:
        raise UserError(f"--score-threshold {score_threshold} must lie in [0, 1]")
    results, dataset, where = load_saved_results(cfg, results_path, dataset_index=dataset_index)
    if build_evaluator(dataset) is None:
        raise UserError(f"{where} has no annotations (an image-info file such as test-dev): there is nothing to analyse")
    output = Path(output_dir) if output_dir is not None else report_dir_for(results_path)
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output} is a file; name a folder for the report")
    output.mkdir(parents=True, exist_ok=True)
    gt = analysis.ground_truth_of(dataset)
    total = 4 + len(gt.class_names) + min(gallery_size, len(gt.image_ids)) + len(FIGURES)  # see compute_analysis
    with tqdm(total=total, desc="analyze", dynamic_ncols=True, disable=None) as bar:
        numbers, standard, outcomes = compute_analysis(
            gt, results, score_threshold=score_threshold, backend=backend, step=bar.update
        )
        metrics = _metrics(dataset, gt, standard, results)
        worst = gallery.worst_images(outcomes, gallery_size)
        bar.total -= min(gallery_size, len(gt.image_ids)) - len(worst)
        numbers["gallery"] = gallery.write_gallery(
            worst, _image_loader(dataset), gt.class_names, output / "gallery", step=bar.update
        )
        info = {"results": str(results_path), "dataset": f"{where} {dict(cfg.data.test[dataset_index])}",
                "num_images": len(gt.image_ids), "num_detections": len(results),
                "score_threshold": score_threshold, "backend": backend}  # fmt: skip
        numbers = {**info, **numbers}
        draw_report(numbers, output, step=bar.update)
    provenance = read_sidecar(results_path)
    write_json(output / "metrics.json", metrics, indent=2)
    write_sidecar(output / "metrics.json", command="analyze", config=config_path, results=str(results_path),
                  dataset=dict(cfg.data.test[dataset_index]), results_meta=provenance)  # fmt: skip
    write_json(output / "analysis.json", numbers, allow_nan=False)
    (output / "index.html").write_text(render_index(numbers, metrics, provenance, FIGURES), encoding="utf-8")
    return output, metrics
