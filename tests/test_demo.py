"""demo/video.py and demo/image.py end to end, as a user runs them (subprocess, tiny random-weight model, CPU)."""

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from detkit import Predictor, build_model, load_config
from tests.conftest import FPS, read_video, tiny_config_dict, write_video

REPO = Path(__file__).resolve().parents[1]
NAMES = ["circle", "square", "triangle"]
TINY = tiny_config_dict(num_classes=3, device="cpu")


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny config file and a random-weight checkpoint naming its classes, as training would store it."""
    root = tmp_path_factory.mktemp("model")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    torch.manual_seed(0)
    weights = root / "tiny.pth"
    model = build_model(load_config(config))
    # Random weights score every class near 1/4, under the tests' 0.3 threshold; biased logits (background
    # last) make class 0 score about softmax([4, 1, -1, 0])[0] = 0.93 and the others under 0.05, so the
    # threshold keeps many class-0 detections and nothing else.
    with torch.no_grad():
        model.roi_heads.predictor.cls_score.bias.copy_(torch.tensor([4.0, 1.0, -1.0, 0.0]))
    torch.save({"model": model.state_dict(), "class_names": NAMES}, weights)
    return config, weights


def check_detections(detections: list[dict], width: int, height: int) -> None:
    """Every detection the biased model may give at --score-threshold 0.3: class 0, inside the image."""
    for d in detections:
        assert set(d) == {"box", "score", "label", "name"}
        x0, y0, x1, y1 = d["box"]
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, d
        assert d["score"] >= 0.3 and d["label"] == 0 and d["name"] == NAMES[0], d


def demo(script: str, *args, cwd: Path = REPO, **kwargs) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "demo" / script), *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, **kwargs)


def stderr_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


@pytest.mark.parametrize("name,size", [("odd.avi", (97, 61)), ("even.mp4", (96, 64))])
def test_video_keeps_frame_count_size_and_fps(tmp_path, model_files, name, size):
    config, weights = model_files
    video = write_video(tmp_path / name, *size)
    assert read_video(video) == (12, FPS, size)  # the input really has this size
    result = demo("video.py", video, "--config", config, "--weights", weights, "--json", tmp_path / "out.jsonl",
                  "--score-threshold", "0.3", "model.rpn.post_nms_topk_test=10")
    assert result.returncode == 0, result.stderr
    # default output beside the input: .mp4, or .avi for an odd frame size (see the README's Demo section)
    output = tmp_path / ("odd_detkit.avi" if name == "odd.avi" else "even_detkit.mp4")
    assert read_video(output) == (12, FPS, size)
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["frame"] for r in records] == list(range(12))
    for r in records:
        assert math.isclose(r["time"], r["frame"] / FPS, abs_tol=1e-5)
        assert "error" not in r
        assert len(r["detections"]) >= 1  # the checks below cover real detections
        check_detections(r["detections"], *size)
    assert "12 frames" in result.stderr and "ms/frame" in result.stderr


def test_video_decode_failure_keeps_the_timeline(tmp_path, model_files):
    config, weights = model_files
    video = write_video(tmp_path / "in.avi", 64, 48, frames=8)
    data = bytearray(video.read_bytes())
    starts = [i for i in range(len(data) - 2) if data[i : i + 3] == b"\xff\xd8\xff"]  # one JPEG per frame
    assert len(starts) == 8
    end = starts[6] - 16  # stop short of frame 6's AVI chunk header
    data[starts[5] + 2 : end] = bytes(end - starts[5] - 2)  # frame 5: a JPEG start marker, then nothing
    bad = tmp_path / "bad.avi"
    bad.write_bytes(data)
    result = demo("video.py", bad, "--config", config, "--weights", weights, "--output", tmp_path / "out.avi",
                  "--json", tmp_path / "out.jsonl")
    assert result.returncode == 0, result.stderr
    assert read_video(tmp_path / "out.avi")[0] == 8
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(8))
    assert [r.get("error") for r in records] == [None] * 5 + ["decode failed"] + [None] * 2
    assert result.stderr.count("failed to decode;") == 1 and "frame 5 failed" in result.stderr


def test_video_user_errors_exit_2_with_one_line(tmp_path, model_files):
    config, weights = model_files
    video = write_video(tmp_path / "in.mp4", 64, 48, frames=2)
    odd = write_video(tmp_path / "odd.avi", 65, 49, frames=2)
    (tmp_path / "a_file").write_text("")
    fourcc = cv2.VideoWriter_fourcc(*"MJPG")
    empty = cv2.VideoWriter(str(tmp_path / "empty.avi"), cv2.CAP_OPENCV_MJPEG, fourcc, FPS, (64, 48))
    empty.release()
    cases = {
        "input video not found": [tmp_path / "missing.mp4"],
        "is a file, not a folder": [video, "--output", tmp_path / "a_file" / "out.mp4"],
        "has no frames": [tmp_path / "empty.avi"],
        "write an .avi instead": [odd, "--output", tmp_path / "odd.mp4"],  # FFmpeg would crop an odd size
        "train first": [video],  # no --weights and no output/tiny/model_final.pth under cwd
    }
    for expected, args in cases.items():
        extra = [] if expected == "train first" else ["--weights", weights]
        result = demo("video.py", *args, "--config", config, *extra, cwd=tmp_path)
        assert result.returncode == 2, (expected, result.stderr)
        lines = stderr_lines(result)
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (expected, lines)
    assert not (tmp_path / "in_detkit.mp4").exists()


def test_video_interrupt_leaves_a_playable_file(tmp_path, model_files):
    config, weights = model_files
    video = write_video(tmp_path / "long.mp4", 64, 48, frames=3000)  # long enough to be interrupted mid-way
    jsonl, output = tmp_path / "out.jsonl", tmp_path / "out.mp4"
    cmd = [sys.executable, str(REPO / "demo" / "video.py"), str(video), "--config", str(config),
           "--weights", str(weights), "--output", str(output), "--json", str(jsonl)]
    # A shell that starts jobs in the background (CI runners, nohup) makes them ignore SIGINT, and Python
    # then installs no KeyboardInterrupt handler: give the demo the default handling a terminal gives it.
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not (jsonl.exists() and jsonl.read_text().count("\n") >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, "demo ended before it could be interrupted"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err
    lines = jsonl.read_text().splitlines()
    count, fps, size = read_video(output)
    assert 2 <= len(lines) <= count <= len(lines) + 1 < 3000  # SIGINT may land between the frame and its JSON line
    assert (fps, size) == (FPS, (64, 48))
    assert all(json.loads(line)["frame"] == i for i, line in enumerate(lines))


def test_image_demo_on_a_folder(tmp_path, model_files):
    config, weights = model_files
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(folder / "a.png"), rng.integers(0, 256, (61, 97, 3), dtype=np.uint8))
    cv2.imwrite(str(folder / "b.jpg"), rng.integers(0, 256, (80, 120, 3), dtype=np.uint8))
    (folder / "notes.txt").write_text("not an image")
    result = demo("image.py", folder, "--config", config, "--weights", weights, "--json", tmp_path / "out.jsonl",
                  "--score-threshold", "0.3")
    assert result.returncode == 0, result.stderr
    out_dir = tmp_path / "images_detkit"
    assert sorted(p.name for p in out_dir.iterdir()) == ["a.png", "b.jpg"]
    assert cv2.imread(str(out_dir / "a.png")).shape == (61, 97, 3)
    assert cv2.imread(str(out_dir / "b.jpg")).shape == (80, 120, 3)
    assert "unsupported key" not in result.stderr  # the JPEG quality flag is not given to the PNG encoder
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    seen = [(Path(r["image"]).name, r["width"], r["height"]) for r in records]
    assert seen == [("a.png", 97, 61), ("b.jpg", 120, 80)]
    for r in records:
        assert len(r["detections"]) >= 1
        check_detections(r["detections"], r["width"], r["height"])


def test_image_demo_runs_the_configs_test_time_system(tmp_path, model_files):
    """Multi-scale (maxout) + flip + refinement given as KEY=VALUE: the demo's detections are Predictor's under
    the same config (which equals tools/test_net.py's, tests/test_predictor.py), not single-scale ones.
    demo/video.py builds its predictor with the same function (build_predictor)."""
    config, weights = model_files
    path = tmp_path / "a.png"
    image = np.random.default_rng(1).integers(0, 256, (61, 97, 3), dtype=np.uint8)
    cv2.imwrite(str(path), image)
    system = ["test.scales=[48,64,96]", "test.flip=true", "test.multiscale_mode=maxout",
              "model.roi_heads.box_refinement=true"]
    result = demo("image.py", path, "--config", config, "--weights", weights, "--json", tmp_path / "out.jsonl",
                  "--score-threshold", "0.3", *system)
    assert result.returncode == 0, result.stderr
    detections = json.loads((tmp_path / "out.jsonl").read_text())["detections"]
    expected = Predictor(load_config(config, ["model.roi_heads.score_threshold=0.3", *system]), weights)(image)
    single = Predictor(load_config(config, ["model.roi_heads.score_threshold=0.3", system[-1]]), weights)(image)
    assert len(detections) == len(expected["boxes"]) >= 3
    # the single-scale refined detector differs: the comparison covers the multi-scale system
    assert len(single["boxes"]) != len(expected["boxes"]) or not np.allclose(single["boxes"], expected["boxes"])
    np.testing.assert_allclose([d["box"] for d in detections], expected["boxes"], atol=0.006)
    np.testing.assert_allclose([d["score"] for d in detections], expected["scores"], atol=6e-5)
