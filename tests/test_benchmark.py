import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_quick_mode(tiny_config, tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run(
        [sys.executable, "tools/benchmark.py", "--config", str(tiny_config), "--quick", "--train", "--fold-bn", "--json", str(out),
         "model.num_classes=3"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads(out.read_text())
    stages = data["inference"]
    assert set(stages) == {"preprocess", "backbone", "rpn", "roi_heads", "postprocess", "total"}
    assert stages["total"]["median_ms"] >= stages["backbone"]["median_ms"] > 0
    assert data["torchvision_trunk"]["median_ms"] > 0 and data["ratio_to_trunk"] > 0
    assert data["fold_bn"]["speedup"] > 0  # the tiny config uses trainable BN: nothing to fold, same detections
    assert data["fold_bn"]["same_detections"] is True
    assert data["training"]["images_per_s"] > 0 and 0 <= data["training"]["data_share"] <= 1
