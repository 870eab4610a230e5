import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(args, tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "tools/benchmark.py", *args, "--quick", "--json", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(out.read_text()), r.stdout


def test_benchmark_quick_mode(tiny_config, tmp_path):
    data, _ = run_benchmark(["--config", str(tiny_config), "--train", "model.num_classes=3"], tmp_path)
    stages = data["inference"]
    assert set(stages) == {"preprocess", "backbone", "rpn", "roi_heads", "postprocess", "total"}
    assert stages["total"]["median_ms"] >= stages["backbone"]["median_ms"] > 0
    assert data["torchvision_trunk"]["median_ms"] > 0 and data["ratio_to_trunk"] > 0
    assert data["flops"]["gflop"] > 0 and data["flops"]["matmul_gflop_per_s"] > 0
    assert data["training"]["images_per_s"] > 0 and 0 <= data["training"]["data_share"] <= 1


def test_benchmark_compares_with_torchvision(tmp_path):
    data, stdout = run_benchmark(
        ["--config", "configs/coco_r101.yaml", "--compare", "torchvision", "--size", "128",
         "model.backbone.depth=18", "model.rpn.post_nms_topk_test=30", "test.fold_bn=true", "model.channels_last=true"],
        tmp_path,
    )
    assert data["speedups"] == ["fold_bn", "channels_last"]
    compare = data["compare_torchvision"]
    assert set(compare["times"]) == {"detkit", "detkit_no_speedups", "torchvision"}
    assert compare["ratio"] > 0 and compare["torchvision_count"] > 0
    for check in compare["checks"].values():
        assert check["same"] is True and check["counts"][1] == compare["torchvision_count"]
    assert "detkit / torchvision time" in stdout


def test_benchmark_refuses_a_config_torchvision_cannot_build(tiny_config, tmp_path):
    r = subprocess.run(
        [sys.executable, "tools/benchmark.py", "--config", str(tiny_config), "--compare", "torchvision", "--quick",
         "model.num_classes=3"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert r.returncode == 2
    assert "torchvision" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_benchmark_onnx_times_both_in_turns(tiny_config, tmp_path):
    data, stdout = run_benchmark(["--config", str(tiny_config), "--onnx", "model.num_classes=3"], tmp_path)
    onnx = data["onnx"]
    assert set(onnx["times"]) == {"pytorch", "onnxruntime"} and onnx["ratio_onnxruntime_to_pytorch"] > 0
    assert onnx["export"]["export_s"] > 0 and all(c["counts"][0] == c["counts"][1] for c in onnx["export"]["checks"])
    assert onnx["same_detections"]["same"], onnx["same_detections"]
    assert "onnxruntime / PyTorch time" in stdout
