"""Training: `build_training_run` builds everything from the config once, `do_train` runs the loop over the
built objects (no hooks).

Per iteration: load a batch, forward to the four losses, check they are finite, backward, clip
(optional), SGD step with the LR of `lr_at`. Every `log_period` a log line; every
`checkpoint_period` an atomic checkpoint; every `test.eval_period` (and at the end) an evaluation.
"""

import copy
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from detkit.data.build import build_datasets
from detkit.data.loader import build_train_loader
from detkit.checkpoint.io import (
    checkpoint_name,
    find_last_checkpoint,
    get_rng_state,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from detkit.engine.distributed import all_gather, any_process, barrier, init_distributed, is_main_process, rank, world_size
from detkit.engine.inference import evaluate_datasets
from detkit.engine.setup import seed_everything, setup_logging
from detkit.errors import UserError
from detkit.modeling.build import build_model
from detkit.modeling.detector import FasterRCNN
from detkit.engine.schedule import lr_at

logger = logging.getLogger("detkit")

NORM_TYPES = (torch.nn.BatchNorm2d, torch.nn.GroupNorm)


def build_optimizer(model: torch.nn.Module, solver) -> torch.optim.SGD:
    """SGD with momentum; normalisation parameters get `weight_decay_norm`, the rest `weight_decay`."""
    norm_params, other_params = [], []
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if param.requires_grad:
                (norm_params if isinstance(module, NORM_TYPES) else other_params).append(param)
    groups = [{"params": other_params, "weight_decay": solver.weight_decay}]
    if norm_params:
        groups.append({"params": norm_params, "weight_decay": solver.weight_decay_norm})
    return torch.optim.SGD(groups, lr=solver.base_lr, momentum=solver.momentum)


def format_eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


@dataclass
class TrainingRun:
    """Everything the loop needs, built once by `build_training_run` from the config."""

    model: FasterRCNN  # the module whose state is saved and evaluated
    step_model: torch.nn.Module  # `model`, or its DistributedDataParallel wrapper: forward/backward go through it
    optimizer: torch.optim.SGD
    loader: Iterator  # yields (images, targets) batches forever, from `start_iter` on
    scaler: torch.amp.GradScaler  # active only for float16 AMP
    amp_dtype: torch.dtype | None  # autocast dtype on CUDA (solver.amp), else None
    test_sets: list  # one dataset per data.test entry
    class_names: list[str]
    start_iter: int  # 0, or the iteration of the checkpoint resumed from
    config_text: str  # the config as run (num_classes read from the data), saved with every checkpoint
    writer: Any  # a TensorBoard SummaryWriter (solver.tensorboard, main process) or None


def train(cfg, *, output_dir: Path, resume: bool = False) -> dict:
    """Train the detector described by `cfg` (left unchanged), writing everything into `output_dir`.
    Returns the final metrics of `data.test[0]` ({} without test sets); every set's files are in `output_dir`."""
    run = build_training_run(cfg, output_dir=output_dir, resume=resume)
    return do_train(cfg, run, output_dir=output_dir)


def build_training_run(cfg, *, output_dir: Path, resume: bool) -> TrainingRun:
    """Process group, logging, data, model, optimizer, resumed state, loader and AMP for `cfg`."""
    s = cfg.solver
    device = init_distributed(cfg.model.device)
    main = is_main_process()
    setup_logging(output_dir, filename="log.txt" if main else f"log_rank{rank()}.txt", console=main)
    if not cfg.data.train:
        raise UserError("data.train is empty: name at least one training dataset in the config")
    # each process its own augmentation and sampling randomness; the data order comes from the sampler
    seed_everything(cfg.seed + rank())
    train_set = build_datasets(cfg.data.train, cfg=cfg, is_train=True)
    num_classes = cfg.model.num_classes or len(train_set.class_names)
    if num_classes != len(train_set.class_names):
        raise UserError(
            f"model.num_classes={num_classes} but the training data has {len(train_set.class_names)} classes"
        )
    run_cfg = copy.deepcopy(cfg)  # what was run: the class count the data gave
    run_cfg.model.num_classes = num_classes
    output_dir.mkdir(parents=True, exist_ok=True)
    if main:
        (output_dir / "config.yaml").write_text(run_cfg.dump())
    test_sets = [build_datasets([spec], cfg=cfg, is_train=False) for spec in cfg.data.test]

    model = build_model(cfg, num_classes=num_classes, device=device)
    optimizer = build_optimizer(model, s)
    start_iter = resume_from(output_dir, model, optimizer) if resume else 0
    logger.info(
        f"model: ResNet-{cfg.model.backbone.depth} C4, {cfg.model.roi_heads.head} head, {num_classes} classes, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters; "
        f"{len(train_set)} training images; device {model.device}; {world_size()} process(es), "
        f"{s.ims_per_batch // world_size()} images per process and iteration"
    )
    stats = getattr(train_set, "box_stats", None)
    if stats:
        logger.info(f"training boxes clipped/dropped while loading: {stats}")
    loader = build_train_loader(
        train_set,
        batch_size=s.ims_per_batch,
        seed=cfg.seed,
        num_workers=cfg.dataloader.num_workers,
        aspect_ratio_grouping=cfg.dataloader.aspect_ratio_grouping,
        start_iter=start_iter,
        rank=rank(),
        world_size=world_size(),
    )
    use_cuda = model.device.type == "cuda"
    torch.backends.cudnn.benchmark = use_cuda and s.cudnn_benchmark
    step_model = model
    if world_size() > 1:
        step_model = DistributedDataParallel(model, device_ids=[model.device.index] if use_cuda else None)
    amp_dtype = amp_dtype_for(s.amp, model.device)
    writer = None
    if s.tensorboard and main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(output_dir / "tensorboard"))
    return TrainingRun(
        model=model,
        step_model=step_model,
        optimizer=optimizer,
        loader=iter(loader),
        scaler=torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16),
        amp_dtype=amp_dtype,
        test_sets=test_sets,
        class_names=list(train_set.class_names),
        start_iter=start_iter,
        config_text=run_cfg.dump(),
        writer=writer,
    )


def resume_from(output_dir: Path, model: FasterRCNN, optimizer: torch.optim.SGD) -> int:
    """Load the newest checkpoint in `output_dir` (model, optimizer, this process's RNG); its iteration, or 0."""
    last = find_last_checkpoint(output_dir)
    if last is None:
        logger.info(f"--resume: no checkpoint in {output_dir}, starting from scratch")
        return 0
    state = load_checkpoint(last)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    per_rank = state.get("rng_per_rank", [])
    set_rng_state(per_rank[rank()] if len(per_rank) == world_size() else state["rng"])
    logger.info(f"resumed from {last} at iteration {int(state['iteration'])}")
    return int(state["iteration"])


def amp_dtype_for(amp: bool, device: torch.device) -> torch.dtype | None:
    """bfloat16 where the GPU has it, else float16; None (float32) without solver.amp or off CUDA."""
    if amp and device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp:
        logger.info("solver.amp is for CUDA; training in float32 on the CPU")
    return None


def save_training_state(run: TrainingRun, iteration: int, path: Path) -> None:
    """Checkpoint for resuming: model, optimizer, iteration, every process's RNG state, config and class names.
    Every process must call it (the RNG states are gathered); the main process writes."""
    rng_states = all_gather(get_rng_state())
    if not is_main_process():
        return
    state = {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "iteration": iteration,
        "rng": rng_states[0],
        "rng_per_rank": rng_states,
        "config": run.config_text,
        "class_names": run.class_names,
    }
    save_checkpoint(path, state)


def do_train(cfg, run: TrainingRun, *, output_dir: Path) -> dict:
    """Iterations `run.start_iter` .. `solver.max_iter`, then the final checkpoint and evaluation."""
    s = cfg.solver
    schedule = dict(
        base_lr=s.base_lr,
        max_iter=s.max_iter,
        schedule=s.lr_schedule,
        steps=s.steps,
        gamma=s.gamma,
        warmup_iters=s.warmup_iters,
        warmup_factor=s.warmup_factor,
    )
    run.model.train()
    bar = tqdm(total=s.max_iter, initial=run.start_iter, desc="train", dynamic_ncols=True,
               disable=None if is_main_process() else True)
    started = time.perf_counter()
    window = StepTimes()
    metrics = {}
    for iteration in range(run.start_iter, s.max_iter):
        tic = time.perf_counter()
        images, targets = next(run.loader)
        data_time = time.perf_counter() - tic
        lr = lr_at(iteration, **schedule)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        if iteration == run.start_iter:
            logger.info(f"rank {rank()}: first batch images {[t['image_id'] for t in targets]}")
        if not images:  # every image of the batch was unreadable (already warned)
            continue
        losses, total = train_step(run, images, targets, iteration=iteration, clip_grad_norm=s.clip_grad_norm)
        done = iteration + 1
        window.add(data_time, time.perf_counter() - tic)
        bar.update(1)
        if done % s.log_period == 0 or done == s.max_iter:
            log_step(done, s.max_iter, losses, total, lr=lr, times=window, writer=run.writer)
            bar.set_postfix(loss=f"{total.item():.3f}", lr=f"{lr:.4f}")
            window = StepTimes()
        if s.checkpoint_period > 0 and done % s.checkpoint_period == 0 and done < s.max_iter:
            save_training_state(run, done, output_dir / checkpoint_name(done))
        if run.test_sets and cfg.test.eval_period > 0 and done % cfg.test.eval_period == 0 and done < s.max_iter:
            metrics = evaluate_datasets(cfg, run.model, run.test_sets, output_dir=None)[0]
            logger.info(f"evaluation at iteration {done}: {json.dumps(summary(metrics))}")
            run.model.train()
    bar.close()
    barrier()
    logger.info(f"training finished: {s.max_iter - run.start_iter} iterations in "
                f"{format_eta(time.perf_counter() - started)}")
    save_training_state(run, s.max_iter, output_dir / "model_final.pth")
    if run.test_sets:
        metrics = evaluate_datasets(cfg, run.model, run.test_sets, output_dir=output_dir)[0]
        logger.info(f"final evaluation: {json.dumps(summary(metrics))}")
    if run.writer is not None:
        for k, v in summary(metrics).items():
            run.writer.add_scalar(f"eval/{k}", v, s.max_iter)
        run.writer.close()
    return metrics


def train_step(run: TrainingRun, images: list, targets: list[dict], *, iteration: int,
               clip_grad_norm: float) -> tuple[dict, torch.Tensor]:
    """Forward to the losses, stop if one is not finite, backward (scaled under float16 AMP), clip, SGD step."""
    with torch.autocast("cuda", dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
        losses = run.step_model(images, targets)
    check_finite(losses, iteration)
    total = sum(losses.values())
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(total).backward()
    if clip_grad_norm > 0:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), clip_grad_norm)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    return losses, total


class StepTimes:
    """Data-loading and whole-step seconds summed over the iterations since the last log line."""

    def __init__(self):
        self.data, self.step, self.n = 0.0, 0.0, 0

    def add(self, data: float, step: float) -> None:
        self.data, self.step, self.n = self.data + data, self.step + step, self.n + 1


def log_step(done: int, max_iter: int, losses: dict, total: torch.Tensor, *, lr: float, times: StepTimes, writer) -> None:
    """One log line (losses, LR, seconds per iteration, ETA) and the TensorBoard scalars."""
    per_iter = times.step / times.n
    loss_text = "  ".join(f"{k}: {v.item():.3f}" for k, v in losses.items())
    logger.info(
        f"iter {done}/{max_iter}  total_loss: {total.item():.3f}  {loss_text}  lr: {lr:.5f}  "
        f"time: {per_iter:.3f}s/it (data {times.data / times.n:.3f}s)  eta: {format_eta(per_iter * (max_iter - done))}"
    )
    if writer is not None:
        writer.add_scalar("total_loss", total.item(), done)
        writer.add_scalar("lr", lr, done)
        for k, v in losses.items():
            writer.add_scalar(k, v.item(), done)


def check_finite(losses: dict, iteration: int) -> None:
    """Stop on a non-finite loss, naming it. With several processes all of them stop together (a process
    that stopped alone would leave the others waiting in the gradient all-reduce)."""
    bad = [(name, value.item()) for name, value in losses.items() if not torch.isfinite(value)]
    if any_process(bool(bad)):
        # rare path: collect the names from every process for the message
        bad = [b for per_rank in all_gather(bad) for b in per_rank]
        name, value = bad[0]
        raise UserError(
            f"loss {name} is {value} at iteration {iteration}: training diverged; "
            f"the last good checkpoint is kept. Lower solver.base_lr or set solver.clip_grad_norm"
        )


def summary(metrics: dict) -> dict:
    """The scalar metrics (AP, AP50, ...) rounded for a log line."""
    return {k: round(v, 2) for k, v in metrics.items() if isinstance(v, float) and math.isfinite(v)}
