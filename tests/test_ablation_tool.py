import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ablation_prints_table_and_writes_metrics_per_row(tiny_config, tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "tools/train_net.py", "--config", str(tiny_config), "--output-dir", str(out),
                        "solver.max_iter=1", "model.roi_heads.global_context=true"], capture_output=True, text=True,
                       cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([sys.executable, "tools/ablation.py", "--config", str(tiny_config), "--weights",
                        str(out / "model_final.pth"), "--output-dir", str(out), "model.roi_heads.global_context=true",
                        "--scales", "48", "64"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "+ context" in r.stdout and "+ multi-scale (maxout, no refinement)" in r.stdout
    assert "+ multi-scale (maxout, the paper's)" in r.stdout
    rows = sorted(p.name for p in (out / "ablation").iterdir() if p.is_dir())
    assert len(rows) == 6
    assert all((out / "ablation" / row / "metrics.json").is_file() for row in rows)
    assert (out / "ablation" / "table.txt").read_text().count("\n") == 8
