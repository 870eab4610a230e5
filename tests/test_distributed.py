"""Two processes with gloo on the CPU: torchrun training and sharded evaluation."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from detkit.config import load_config
from detkit.data.build import build_datasets
from detkit.engine.inference import evaluate_datasets
from detkit.modeling.build import build_model

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_gloo(tiny_config, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "tools/train_net.py", "--config", str(tiny_config), "--output-dir", str(out),
           "solver.max_iter=2", "solver.checkpoint_period=1", "model.device=cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in out.glob("*.pth")) == ["model_0000001.pth", "model_final.pth"]
    state = torch.load(out / "model_0000001.pth", weights_only=True)
    assert len(state["rng_per_rank"]) == 2
    log0, log1 = (out / "log.txt").read_text(), (out / "log_rank1.txt").read_text()
    assert "2 process(es), 1 images per process" in log0
    first = [set(re.search(r"first batch images \[(.*?)\]", log).group(1).split(", ")) for log in (log0, log1)]
    assert first[0] and first[1] and not first[0] & first[1]  # the ranks saw different images
    assert (out / "metrics.json").is_file() and not (out / "metrics_rank1.json").exists()
    # --resume under DDP: both processes continue from the newest periodic checkpoint
    (out / "model_final.pth").unlink()
    cmd[cmd.index("solver.max_iter=2")] = "solver.max_iter=3"
    cmd[5] = f"--master_port={free_port()}"
    r = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    log0 = (out / "log.txt").read_text()
    assert "model_0000001.pth at iteration 1" in log0 and "iter 3/3" in log0
    assert torch.load(out / "model_final.pth", weights_only=True)["iteration"] == 3


def _evaluate_worker(rank: int, world: int, port: int, config: str, weights: str, result: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cfg = load_config(config, ["model.num_classes=3"])
        model = build_model(cfg)
        model.load_state_dict(torch.load(weights, weights_only=True))
        datasets = [build_datasets([spec], cfg=cfg, is_train=False) for spec in cfg.data.test]
        metrics = evaluate_datasets(cfg, model, datasets, output_dir=None)
        if rank == 0:
            Path(result).write_text(json.dumps(metrics))
    finally:
        dist.destroy_process_group()


def test_gathered_evaluation_equals_single_process(tiny_config, tmp_path):
    cfg = load_config(tiny_config, ["model.num_classes=3", "model.roi_heads.score_threshold=0.0"])
    torch.manual_seed(0)
    model = build_model(cfg)
    weights = tmp_path / "w.pth"
    torch.save(model.state_dict(), weights)
    datasets = [build_datasets([spec], cfg=cfg, is_train=False) for spec in cfg.data.test]
    single = evaluate_datasets(cfg, model, datasets, output_dir=None)
    result = tmp_path / "metrics.json"
    config = tmp_path / "eval.yaml"
    config.write_text(cfg.dump())
    mp.spawn(_evaluate_worker, args=(2, free_port(), str(config), str(weights), str(result)), nprocs=2)
    gathered = json.loads(result.read_text())
    assert gathered == json.loads(json.dumps(single))
