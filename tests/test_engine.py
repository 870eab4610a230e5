"""Training loop, checkpoints, resume and evaluation on a tiny COCO-format set (CPU, a few seconds each)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detkit.config import load_config
from detkit.checkpoint.io import find_last_checkpoint, load_checkpoint, save_checkpoint
from detkit.engine.schedule import lr_at
from detkit.engine.train import train
from detkit.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def run_tool(*args, cwd=None):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=cwd or ROOT, timeout=300)


def test_train_writes_contract_files_and_category_ids(tiny_config, tmp_path):
    out = tmp_path / "out"
    metrics = train(load_config(tiny_config), output_dir=out)
    for name in ["config.yaml", "log.txt", "model_0000002.pth", "model_final.pth", "metrics.json", "detections.json"]:
        assert (out / name).is_file(), name
    state = torch.load(out / "model_final.pth", weights_only=True)
    assert state["iteration"] == 4 and state["class_names"] == ["cat3", "cat7", "cat90"]
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl", "per_class"} <= set(json.loads((out / "metrics.json").read_text()))
    assert set(metrics) >= {"AP", "AP50"}
    detections = json.loads((out / "detections.json").read_text())
    # three classes at scores near 1/4 (over the 0.05 threshold): every image and every class occurs,
    # under the dataset's own (non-contiguous) category ids
    assert {d["category_id"] for d in detections} == {3, 7, 90}
    assert {d["image_id"] for d in detections} == {1, 2, 3}
    assert load_config(out / "config.yaml").model.num_classes == 3


def test_resume_continues_at_saved_iteration_with_same_lr(tiny_config, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    train(load_config(tiny_config), output_dir=full)
    train(load_config(tiny_config, ["solver.max_iter=2"]), output_dir=part)
    (part / "model_final.pth").unlink()
    # the max_iter=2 run saved no periodic checkpoint at its end; give it the full run's iteration-2 file
    assert find_last_checkpoint(part) is None
    (part / "model_0000002.pth").write_bytes((full / "model_0000002.pth").read_bytes())
    train(load_config(tiny_config), output_dir=part, resume=True)
    log = (part / "log.txt").read_text()
    assert "resumed from" in log and "at iteration 2" in log
    resumed_lines = [line for line in log.splitlines() if "iter 3/4" in line]
    full_lines = [line for line in (full / "log.txt").read_text().splitlines() if "iter 3/4" in line]
    lr = lambda line: line.split("lr: ")[1].split()[0]
    assert lr(resumed_lines[-1]) == lr(full_lines[-1])
    a = torch.load(full / "model_final.pth", weights_only=True)["model"]
    b = torch.load(part / "model_final.pth", weights_only=True)["model"]
    # same data order, augmentation and RNG: the resumed run ends with the same weights
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-5), key


def test_lr_schedule_warmup_steps_and_cosine():
    kw = dict(base_lr=0.1, max_iter=100, steps=[50, 80], warmup_iters=10, warmup_factor=0.001)
    assert lr_at(0, **kw) == pytest.approx(0.0001)
    assert lr_at(10, **kw) == pytest.approx(0.1)
    assert lr_at(60, **kw) == pytest.approx(0.01)
    assert lr_at(90, **kw) == pytest.approx(0.001)
    assert lr_at(50, **{**kw, "schedule": "cosine", "warmup_iters": 0}) == pytest.approx(0.05)


def test_atomic_checkpoint_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "model_0000001.pth"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        save_checkpoint(path, {"model": {"w": torch.zeros(3)}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_0000001.pth"]
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))


def test_bad_checkpoints_are_user_errors(tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x00garbage" * 10)
    truncated = tmp_path / "truncated.pth"
    save_checkpoint(truncated, {"model": {"w": torch.ones(1000)}})
    truncated.write_bytes(truncated.read_bytes()[:200])
    not_ckpt = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_ckpt)

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    evil = tmp_path / "evil.pth"
    torch.save({"model": {}, "x": Evil()}, evil)
    for path, message in [(corrupt, "cannot read"), (truncated, "cannot read"), (not_ckpt, "not a detkit checkpoint"),
                          (evil, "cannot read"), (tmp_path / "missing.pth", "not found")]:
        with pytest.raises(UserError, match=message):
            load_checkpoint(path)


def test_non_finite_loss_stops_with_its_name(tiny_config, tmp_path, monkeypatch):
    from detkit.modeling.roi_heads import RoIHeads

    original = RoIHeads.losses

    def nan_losses(self, *args):
        losses = original(self, *args)
        losses["loss_cls"] = losses["loss_cls"] * float("nan")
        return losses

    monkeypatch.setattr(RoIHeads, "losses", nan_losses)
    out = tmp_path / "nan"
    with pytest.raises(UserError, match=r"loss_cls is nan at iteration 0"):
        train(load_config(tiny_config), output_dir=out)
    assert not list(out.glob("*.pth"))


def test_corrupt_image_is_skipped(tiny_config, tmp_path):
    cfg = load_config(tiny_config)
    image_dir = Path(cfg.data.train[0]["images"])
    (image_dir / "000.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="000.png"):
        train(cfg, output_dir=tmp_path / "skip")
    assert (tmp_path / "skip" / "model_final.pth").is_file()


def test_cli_train_then_test_net(tiny_config, tmp_path):
    out = tmp_path / "cli"
    r = run_tool("tools/train_net.py", "--config", tiny_config, "--output-dir", out, "solver.max_iter=2")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_tool("tools/test_net.py", "--config", tiny_config, "--weights", out / "model_final.pth", "--output-dir", tmp_path / "t")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Average Precision" in r.stdout
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert metrics.keys() >= {"AP", "AP50"}
    # evaluate.py reproduces test_net's metrics from the saved detections alone
    (tmp_path / "t" / "metrics.json").unlink()
    r = run_tool("tools/evaluate.py", "--config", tiny_config, "--results", tmp_path / "t" / "detections.json")
    assert r.returncode == 0, r.stderr[-2000:]
    again = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert {k: again[k] for k in metrics} == metrics


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config", "missing.yaml"], "config file not found"),
        (["--config", "configs/shapes_r18.yaml", "solver.max_itr=3"], "unknown config key 'solver.max_itr'"),
        (["--config", "configs/shapes_r18.yaml", "solver.max_iter=ten"], "solver.max_iter"),
        (["--config", "configs/shapes_r18.yaml", "data.train=[{format: coco, images: /nope, annotations: /nope.json}]"], "/nope"),
        (["--config", "configs/shapes_r18.yaml", "--bogus"], "unrecognized arguments"),
    ],
)
def test_cli_errors_exit_2_with_one_line(args, message, tmp_path):
    r = run_tool("tools/train_net.py", *args, "--output-dir", tmp_path / "o")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr


def test_test_net_bad_weights_exit_2(tiny_config, tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_text("nope")
    r = run_tool("tools/test_net.py", "--config", tiny_config, "--weights", bad, "--output-dir", tmp_path / "t")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "bad.pth" in r.stderr
