"""tools/recipe_search.py: one recipe trained and evaluated on the shapes set and a variant, resumed, tabulated."""

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_tool(*args, env=None):
    return subprocess.run([sys.executable, "tools/recipe_search.py", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=900, env=env)  # fmt: skip


def test_recipe_runs_each_variant_resumes_and_tabulates(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("DETKIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "recipes"
    common = ["--config", tiny_config, "--output-dir", out, "--variants", "plain,fine", "--num-images", 6, 3]
    # overrides right after a list option belong to the recipe, not to the list
    r = run_tool("--name", "tiny", *common, "--seeds", "0", "solver.max_iter=2", "solver.checkpoint_period=0")
    assert r.returncode == 0, r.stderr[-2000:]

    runs = {v: json.loads((out / "tiny" / f"{v}-s0" / "run.json").read_text()) for v in ("plain", "fine")}
    assert runs["plain"]["overrides"][:2] == ["seed=0", "data.train=[{format: shapes, split: train, num_images: 6}]"]
    assert "variant: fine" in runs["fine"]["overrides"][1] and runs["fine"]["wall_s"] > 0
    # each run trained on its own data: the fine variant's model has the 10 fine classes
    fine_config = (out / "tiny" / "fine-s0" / "config.yaml").read_text()
    assert "num_classes: 10" in fine_config and "num_classes: 6" in (out / "tiny" / "plain-s0" / "config.yaml").read_text()

    row = next(line for line in r.stdout.splitlines() if line.startswith("| tiny | 0 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    ap50 = [runs[v]["metrics"]["AP50"] for v in ("plain", "fine")]
    ap = [runs[v]["metrics"]["AP"] for v in ("plain", "fine")]
    assert cells[2:4] == [f"{ap50[0]:.1f} / {ap[0]:.1f}", f"{ap50[1]:.1f} / {ap[1]:.1f}"]
    assert cells[4:7] == ["-", "-", "-"]  # textured, small and the mean: not run
    assert re.fullmatch(r"\d+:\d\d", cells[7])
    assert cells[8] == runs["plain"]["cpu"] == runs["fine"]["cpu"] and cells[8] not in ("", "-", "unknown")

    # a second call with the same recipe trains nothing
    log = out / "tiny" / "plain-s0" / "log.txt"
    before = log.stat().st_mtime_ns
    r = run_tool("--name", "tiny", *common, "--seeds", "0", "solver.max_iter=2", "solver.checkpoint_period=0")
    assert r.returncode == 0 and r.stdout.count("done before, skipped") == 2 and log.stat().st_mtime_ns == before

    # --table prints the same row
    r = run_tool("--table", "--output-dir", out)
    assert r.returncode == 0 and row in r.stdout


def test_bad_recipes_stop_before_training(tiny_config, tmp_path):
    out = tmp_path / "recipes"
    (out / "used").mkdir(parents=True)
    (out / "used" / "recipe.json").write_text(json.dumps({"config": str(tiny_config), "overrides": ["solver.max_iter=2"],
                                                          "created": 0.0}))  # fmt: skip
    cases = [
        (["--name", "used", "solver.max_iter=3"], r"recipe 'used' .* choose another --name"),
        (["--name", "x", "solver.max_iterations=3"], r"solver.max_iterations"),
        (["--name", "x", "--variants", "plain,huge"], r"shapes variant 'huge' is not valid"),
        (["--name", "x", "--seeds", "0,one"], r"comma-separated list of int"),
        (["--name", "a/b"], r"--name must be a plain folder name"),
        ([], r"give --name NAME"),
    ]
    for args, message in cases:
        r = run_tool("--config", tiny_config, "--output-dir", out, *args)
        assert r.returncode == 2, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) <= 2 and re.search(message, r.stderr), (args, r.stderr)
    assert sorted(p.name for p in out.iterdir()) == ["used"]  # nothing was started
    assert list((out / "used").iterdir()) == [out / "used" / "recipe.json"]


def write_run(recipe_dir: Path, variant: str, seed: int, ap50: float, ap: float, created: float) -> None:
    recipe_dir.mkdir(parents=True, exist_ok=True)
    (recipe_dir / "recipe.json").write_text(json.dumps({"config": "c.yaml", "overrides": [], "created": created}))
    (recipe_dir / f"{variant}-s{seed}").mkdir()
    record = {"overrides": [], "wall_s": 600.5, "cpu": "cpu A", "metrics": {"AP50": ap50, "AP": ap}}
    (recipe_dir / f"{variant}-s{seed}" / "run.json").write_text(json.dumps(record))


def test_table_means_only_over_all_four_sets(tmp_path):
    # a recipe run on two of the four sets gets no mean: it would not be comparable with a four-set mean
    for i, (variant, ap50) in enumerate([("plain", 90.0), ("fine", 50.0), ("textured", 60.0), ("small", 70.0)]):
        write_run(tmp_path / "full", variant, 0, ap50, ap50 - 20, created=1.0)
        if i < 2:
            write_run(tmp_path / "partial", variant, 1, ap50 + 10, ap50 - 10, created=2.0)
    r = run_tool("--table", "--output-dir", tmp_path)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith("|")]
    assert lines[0] == "| recipe | seed | plain | fine | textured | small | mean | plain wall | cpu |"
    assert lines[2] == "| full | 0 | 90.0 / 70.0 | 50.0 / 30.0 | 60.0 / 40.0 | 70.0 / 50.0 | **67.5 / 47.5** | 10:00 | cpu A |"
    assert lines[3] == "| partial | 1 | 100.0 / 80.0 | 60.0 / 40.0 | - | - | - | 10:00 | cpu A |"

    # the same when no recipe has run all four: the columns stay the four sets, no mean over the two
    for run_dir in (tmp_path / "full").glob("*-s0"):
        (run_dir / "run.json").unlink()
    r = run_tool("--table", "--output-dir", tmp_path)
    assert r.returncode == 0 and "| partial | 1 | 100.0 / 80.0 | 60.0 / 40.0 | - | - | - | 10:00 | cpu A |" in r.stdout
