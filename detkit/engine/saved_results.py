"""Offline evaluation: a saved detections file scored against a config's `data.test` entry, no model.

`tools/evaluate.py` calls `evaluate_saved_results`; it builds the dataset, checks the file's ids
against it and scores it with the dataset's evaluator (`detkit.evaluation.build.build_evaluator`)
over every image of the set, as `tools/test_net.py` does after running the model.
"""

import os
from pathlib import Path

from detkit.atomic_write import write_json
from detkit.data.build import build_dataset
from detkit.errors import UserError
from detkit.evaluation.build import build_evaluator
from detkit.evaluation.provenance import read_sidecar, write_sidecar
from detkit.evaluation.results import load_results
from detkit.evaluation.submission import short_list


def metrics_path_for(results_path: str | os.PathLike) -> Path:
    """`metrics.json` beside the results; `detections_1.json` -> `metrics_1.json` (test_net's naming)."""
    results_path = Path(results_path)
    stem = results_path.stem
    name = "metrics" + stem[len("detections") :] if stem.startswith("detections") else "metrics"
    return results_path.with_name(name + ".json")


def check_result_ids(results: list[dict], dataset, where: str) -> None:
    """Every result names an image and a category of `dataset`, else a one-line `UserError`."""
    image_ids = set(dataset.image_ids)
    category_ids = set(dataset.category_ids)
    for i, r in enumerate(results):
        if r["image_id"] not in image_ids:
            kind = "file stems such as '000005'" if dataset.kind == "voc" else "the json's integer ids"
            raise UserError(
                f"detection {i} has image_id {r['image_id']!r}, which {where} does not hold (its ids are {kind}); "
                "evaluate against the dataset the detections were made on"
            )
        if r["category_id"] not in category_ids:
            raise UserError(
                f"detection {i} has category_id {r['category_id']!r}, not one of {where}'s category ids "
                f"{short_list(sorted(category_ids))}; results use the dataset's ids, not class indices"
            )


def load_saved_results(cfg, results_path: str | os.PathLike, *, dataset_index: int = 0) -> tuple[list[dict], object, str]:
    """A saved results file and the `data.test[dataset_index]` dataset it was made on, checked
    against each other (tools/evaluate.py, tools/analyze.py).

    Returns:
        (result dicts, the dataset, its name "data.test[I]" for messages).

    Raises:
        UserError: no such data.test entry, a missing or malformed results file, or a result naming an
            image or a category the dataset does not hold (one line each).
    """
    specs = cfg.data.test
    if not isinstance(specs, list) or not specs:
        raise UserError("data.test is empty: name the dataset the detections were made on")
    if not 0 <= dataset_index < len(specs):
        raise UserError(f"--dataset-index {dataset_index} is out of range: data.test has {len(specs)} dataset(s)")
    where = f"data.test[{dataset_index}]"
    results = load_results(results_path)  # missing / malformed file -> UserError
    dataset = build_dataset(specs[dataset_index], cfg=cfg, is_train=False, name=where)
    check_result_ids(results, dataset, where)
    return results, dataset, where


def evaluate_saved_results(
    cfg,
    results_path: str | os.PathLike,
    *,
    dataset_index: int = 0,
    backend: str = "pycocotools",
    metrics_path: str | os.PathLike | None = None,
    config_path: str | None = None,
) -> tuple[dict, Path]:
    """tools/evaluate.py: score a saved results file against `data.test[dataset_index]`, no model.

    COCO-format sets are scored by pycocotools (or `backend`), VOC sets by the VOC rule of the
    set's year, both over every image of the set, as tools/test_net.py does. Prints the same
    tables; writes the metrics to `metrics_path` (default `metrics_path_for(results_path)`) with
    a `.meta.json` sidecar.

    Returns:
        (metrics dict in percent, the metrics file's path).
    """
    results, dataset, where = load_saved_results(cfg, results_path, dataset_index=dataset_index)
    specs = cfg.data.test
    if dataset.kind == "voc" and backend != "pycocotools":
        print(f"note: --backend applies to COCO-format sets; {where} is a VOC set, scored by the VOC rule")
    evaluator = build_evaluator(dataset, backend=backend)
    if evaluator is None:
        raise UserError(
            f"{where} has no annotations (an image-info file such as test-dev): there is nothing to evaluate "
            "against; make a leaderboard submission with tools/make_submission.py instead"
        )
    metrics = evaluator.evaluate_results(results, list(dataset.image_ids))

    metrics_path = Path(metrics_path) if metrics_path is not None else metrics_path_for(results_path)
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(metrics_path, metrics, indent=2)
    write_sidecar(
        metrics_path,
        command="evaluate",
        config=config_path,
        results=str(results_path),
        dataset=dict(specs[dataset_index]),
        backend=backend,
        results_meta=read_sidecar(results_path),
    )
    return metrics, metrics_path
