"""Runs a detector over test datasets, writes `detections.json`, evaluates and writes `metrics.json`."""

import logging
import time
from pathlib import Path

import torch
from tqdm import tqdm

from detkit.atomic_write import write_json
from detkit.data.build import build_datasets
from detkit.data.loader import build_test_loader
from detkit.engine.distributed import all_gather, is_main_process, rank, world_size
from detkit.errors import UserError
from detkit.evaluation.build import build_evaluator
from detkit.evaluation.provenance import write_sidecar
from detkit.evaluation.results import save_results, to_coco_results
from detkit.modeling.build import load_detector
from detkit.modeling.test_time import Augmentation

logger = logging.getLogger("detkit")


@torch.inference_mode()
def run_inference(
    model,
    dataset,
    *,
    batch_size: int = 1,
    augmentation: Augmentation = Augmentation(),
    desc: str = "inference",
) -> tuple[list[dict], list[dict]]:
    """Detections for every image of `dataset` as (targets, outputs) lists, boxes in original pixels, on the CPU.

    `augmentation`: multi-scale / flipped testing (`Augmentation.from_config(cfg)`, see
    detkit.modeling.test_time). Under torchrun each process runs its share of the images and every process
    gets all of them back (in rank order)."""
    was_training = model.training
    model.eval()
    loader = build_test_loader(dataset, batch_size=batch_size, rank=rank(), world_size=world_size())
    all_targets, all_outputs = [], []
    start = time.perf_counter()
    for images, targets in tqdm(loader, desc=desc, dynamic_ncols=True, disable=None if is_main_process() else True):
        if not images:
            continue
        outputs = augmentation(model, images)
        all_targets.extend(targets)
        all_outputs.extend({k: v.cpu() for k, v in out.items()} for out in outputs)
    elapsed = time.perf_counter() - start
    if all_outputs:
        logger.info(f"{desc}: {len(all_outputs)} images in {elapsed:.1f}s ({elapsed / len(all_outputs):.3f} s/image)")
    model.train(was_training)
    if world_size() > 1:
        gathered = all_gather((all_targets, all_outputs))
        all_targets = [t for part, _ in gathered for t in part]
        all_outputs = [o for _, part in gathered for o in part]
    return all_targets, all_outputs


def evaluate_datasets(
    cfg, model, datasets: list, *, output_dir: Path | None, provenance: dict | None = None
) -> list[dict]:
    """Run and evaluate each test dataset. With `output_dir`, writes detections.json and metrics.json there
    (the files of `data.test[i]` get a `_<i>` suffix after the first).

    Returns one metrics dict per dataset, in `data.test` order: {} for a set without ground truth.
    Under torchrun all processes run inference on their share; the main process evaluates and writes
    (the others get {} for every set).
    """
    all_metrics = []
    for i, dataset in enumerate(datasets):
        targets, outputs = run_inference(
            model,
            dataset,
            batch_size=cfg.test.ims_per_batch,
            augmentation=Augmentation.from_config(cfg),
            desc=f"test[{i}]",
        )
        if not is_main_process():
            all_metrics.append({})
            continue
        evaluator = build_evaluator(dataset)
        suffix = "" if i == 0 else f"_{i}"
        if evaluator is None:
            results = [r for t, o in zip(targets, outputs) for r in to_coco_results(t["image_id"], o, dataset.category_ids)]
            metrics = {}
        else:
            evaluator.reset()
            evaluator.process(targets, outputs)
            results = evaluator.results
            metrics = evaluator.evaluate()
        if output_dir is not None:
            save_results(output_dir / f"detections{suffix}.json", results)
            write_sidecar(output_dir / f"detections{suffix}.json", dataset=dict(cfg.data.test[i]), **(provenance or {}))
            if metrics:
                write_json(output_dir / f"metrics{suffix}.json", metrics, indent=2)
        if evaluator is None:
            where = output_dir / f"detections{suffix}.json" if output_dir is not None else "nowhere (no output folder)"
            logger.info(
                f"test[{i}] has no annotations (an image-info json such as test-dev): {len(results)} detections on "
                f"{len(outputs)} images written to {where}, not evaluated; for the COCO server run "
                "tools/make_submission.py (README: COCO leaderboard)"
            )
        all_metrics.append(metrics)
    return all_metrics


def load_for_testing(cfg, *, weights: str | Path) -> tuple:
    """The model with `weights` loaded, and one dataset per `data.test` entry."""
    if not cfg.data.test:
        raise UserError("data.test is empty: name at least one test dataset in the config")
    datasets = [build_datasets([spec], cfg=cfg, is_train=False) for spec in cfg.data.test]
    model, _ = load_detector(cfg, weights, class_names=datasets[0].class_names)
    return model, datasets


def test(cfg, *, weights: str | Path, output_dir: Path, config_path: str | None = None) -> dict:
    """tools/test_net.py: load `weights`, run over every `data.test` set, write files into `output_dir`.
    Returns the metrics of `data.test[0]` (every set's are in its metrics file, see `evaluate_datasets`)."""
    model, datasets = load_for_testing(cfg, weights=weights)
    output_dir.mkdir(parents=True, exist_ok=True)
    provenance = {"config": config_path, "weights": str(weights)}
    return evaluate_datasets(cfg, model, datasets, output_dir=output_dir, provenance=provenance)[0]
