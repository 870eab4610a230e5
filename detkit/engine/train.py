"""The training loop: one readable function, no hooks.

Per iteration: load a batch, forward to the four losses, check they are finite, backward, clip
(optional), SGD step with the LR of `lr_at`. Every `log_period` a log line; every
`checkpoint_period` an atomic checkpoint; every `test.eval_period` (and at the end) an evaluation.
"""

import json
import logging
import math
import time
from pathlib import Path

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


def train(cfg, *, output_dir: Path, resume: bool = False) -> dict:
    """Train the detector described by `cfg`, writing everything into `output_dir`.
    Returns the final metrics of `data.test[0]` ({} without test sets); every set's files are in `output_dir`."""
    s = cfg.solver
    cfg.model.device = init_distributed(cfg.model.device)
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
    cfg.model.num_classes = num_classes
    output_dir.mkdir(parents=True, exist_ok=True)
    if main:
        (output_dir / "config.yaml").write_text(cfg.dump())
    test_sets = [build_datasets([spec], cfg=cfg, is_train=False) for spec in cfg.data.test]

    model = build_model(cfg)
    optimizer = build_optimizer(model, s)
    start_iter = 0
    last = find_last_checkpoint(output_dir) if resume else None
    if resume and last is None:
        logger.info(f"--resume: no checkpoint in {output_dir}, starting from scratch")
    if last is not None:
        state = load_checkpoint(last)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_iter = int(state["iteration"])
        per_rank = state.get("rng_per_rank", [])
        set_rng_state(per_rank[rank()] if len(per_rank) == world_size() else state["rng"])
        logger.info(f"resumed from {last} at iteration {start_iter}")
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
    ddp_model = model
    if world_size() > 1:
        ddp_model = DistributedDataParallel(model, device_ids=[model.device.index] if use_cuda else None)
    amp_dtype = None
    if s.amp and use_cuda:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    elif s.amp:
        logger.info("solver.amp is for CUDA; training in float32 on the CPU")
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    writer = None
    if s.tensorboard and main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(output_dir / "tensorboard"))

    def save(iteration: int, name: str) -> None:
        rng_states = all_gather(get_rng_state())  # every process takes part; the main one writes
        if not main:
            return
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "iteration": iteration,
            "rng": rng_states[0],
            "rng_per_rank": rng_states,
            "config": cfg.dump(),
            "class_names": list(train_set.class_names),
        }
        save_checkpoint(output_dir / name, state)

    schedule = dict(
        base_lr=s.base_lr,
        max_iter=s.max_iter,
        schedule=s.lr_schedule,
        steps=s.steps,
        gamma=s.gamma,
        warmup_iters=s.warmup_iters,
        warmup_factor=s.warmup_factor,
    )
    model.train()
    data_iter = iter(loader)
    bar = tqdm(total=s.max_iter, initial=start_iter, desc="train", dynamic_ncols=True, disable=None if main else True)
    started = time.perf_counter()
    window = {"data": 0.0, "step": 0.0, "n": 0}
    metrics = {}
    for iteration in range(start_iter, s.max_iter):
        tic = time.perf_counter()
        images, targets = next(data_iter)
        data_time = time.perf_counter() - tic
        lr = lr_at(iteration, **schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if iteration == start_iter:
            logger.info(f"rank {rank()}: first batch images {[t['image_id'] for t in targets]}")
        if not images:  # every image of the batch was unreadable (already warned)
            continue
        with torch.autocast("cuda", dtype=amp_dtype, enabled=amp_dtype is not None):
            losses = ddp_model(images, targets)
        check_finite(losses, iteration)
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        if s.clip_grad_norm > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), s.clip_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        done = iteration + 1
        window["data"] += data_time
        window["step"] += time.perf_counter() - tic
        window["n"] += 1
        bar.update(1)
        if done % s.log_period == 0 or done == s.max_iter:
            per_iter = window["step"] / window["n"]
            eta = format_eta(per_iter * (s.max_iter - done))
            loss_text = "  ".join(f"{k}: {v.item():.3f}" for k, v in losses.items())
            logger.info(
                f"iter {done}/{s.max_iter}  total_loss: {total.item():.3f}  {loss_text}  lr: {lr:.5f}  "
                f"time: {per_iter:.3f}s/it (data {window['data'] / window['n']:.3f}s)  eta: {eta}"
            )
            bar.set_postfix(loss=f"{total.item():.3f}", lr=f"{lr:.4f}")
            if writer is not None:
                writer.add_scalar("total_loss", total.item(), done)
                writer.add_scalar("lr", lr, done)
                for k, v in losses.items():
                    writer.add_scalar(k, v.item(), done)
            window = {"data": 0.0, "step": 0.0, "n": 0}
        if s.checkpoint_period > 0 and done % s.checkpoint_period == 0 and done < s.max_iter:
            save(done, checkpoint_name(done))
        eval_period = cfg.test.eval_period
        if test_sets and eval_period > 0 and done % eval_period == 0 and done < s.max_iter:
            metrics = evaluate_datasets(cfg, model, test_sets, output_dir=None)[0]
            logger.info(f"evaluation at iteration {done}: {json.dumps(summary(metrics))}")
            model.train()
    bar.close()
    barrier()
    elapsed = time.perf_counter() - started
    logger.info(f"training finished: {s.max_iter - start_iter} iterations in {format_eta(elapsed)}")
    save(s.max_iter, "model_final.pth")
    if test_sets:
        metrics = evaluate_datasets(cfg, model, test_sets, output_dir=output_dir)[0]
        logger.info(f"final evaluation: {json.dumps(summary(metrics))}")
    if writer is not None:
        for k, v in summary(metrics).items():
            writer.add_scalar(f"eval/{k}", v, s.max_iter)
        writer.close()
    return metrics


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
