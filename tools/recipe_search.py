"""Train and evaluate one training recipe on the shapes set and each of its variants, and print the table
of every recipe run so far (README "Recipe search").

python tools/recipe_search.py --name NAME [--config configs/shapes_r18.yaml] [--variants plain,fine,textured,small]
                              [--seeds 0,1] [--output-dir output/recipes] [KEY=VALUE ...]
python tools/recipe_search.py --table [--output-dir output/recipes]

A recipe is the config plus the KEY=VALUE overrides. For every variant and seed the tool runs
`tools/train_net.py` (the README's first command) with `data.train`/`data.test` pointed at that variant of the
shapes set and `seed=S`, in its own process, into OUTPUT_DIR/NAME/<variant>-s<seed>/, and records the wall time,
the final metrics and the CPU's model name there in run.json (a run reproduces to the last digit only on the
same kind of CPU). Runs that already have a run.json are skipped, so an interrupted
search continues where it stopped; a name cannot be reused for other overrides. Every run's config is loaded
before the first one starts, so a bad KEY=VALUE stops the search at once.
"""

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from detkit.atomic_write import write_json
from detkit.config import load_config
from detkit.data.shapes import VARIANTS, parse_variant
from detkit.engine.setup import ArgumentParser, user_errors_exit
from detkit.errors import UserError

TRAIN_NET = Path(__file__).resolve().parent / "train_net.py"
PLAIN = "plain"  # the shapes set itself, no variant
DEFAULT_VARIANTS = [PLAIN, *VARIANTS]


def data_overrides(variant: str, num_images: list[int] | None) -> list[str]:
    """data.train / data.test overrides that point a config at one variant of the shapes set."""
    specs = []
    for i, split in enumerate(("train", "test")):
        keys = [f"split: {split}"]
        if variant != PLAIN:
            keys.append(f"variant: {variant}")
        if num_images:
            keys.append(f"num_images: {num_images[i]}")
        specs.append(f"data.{split}=[{{format: shapes, {', '.join(keys)}}}]")
    return specs


def run_overrides(variant: str, seed: int, num_images: list[int] | None, overrides: list[str]) -> list[str]:
    return [f"seed={seed}", *data_overrides(variant, num_images), *overrides]


def check_recipe_dir(recipe_dir: Path, record: dict) -> None:
    """Write recipe.json on first use; refuse a name already used for another config or other overrides."""
    path = recipe_dir / "recipe.json"
    if path.is_file():
        known = json.loads(path.read_text())
        if (known["config"], known["overrides"]) != (record["config"], record["overrides"]):
            raise UserError(
                f"recipe {recipe_dir.name!r} in {recipe_dir.parent} was run with --config {known['config']} "
                f"{' '.join(known['overrides'])}; choose another --name for other settings"
            )
        return
    recipe_dir.mkdir(parents=True, exist_ok=True)
    write_json(path, record, indent=2)


def cpu_name() -> str:
    """The CPU's model name: the first "model name" of /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_one(config: str, run_dir: Path, overrides: list[str]) -> dict:
    """Train and evaluate in a child process (the README's command); return the run record."""
    command = [sys.executable, str(TRAIN_NET), "--config", config, "--output-dir", str(run_dir), *overrides]
    print("$ " + " ".join(command), flush=True)
    start = time.perf_counter()
    result = subprocess.run(command)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise UserError(f"training in {run_dir} failed with exit status {result.returncode} (its log: {run_dir}/log.txt)")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"overrides": overrides, "wall_s": round(wall, 1), "cpu": cpu_name(), "metrics": metrics}


def read_runs(root: Path) -> list[dict]:
    """Every finished run under root: dicts with recipe, variant, seed, wall_s, metrics; oldest recipe first."""
    runs = []
    recipes = sorted(root.glob("*/recipe.json"), key=lambda p: json.loads(p.read_text())["created"])
    for recipe_json in recipes:
        for run_json in sorted(recipe_json.parent.glob("*/run.json")):
            variant, seed = run_json.parent.name.rsplit("-s", 1)
            runs.append({"recipe": recipe_json.parent.name, "variant": variant, "seed": int(seed),
                         **json.loads(run_json.read_text())})  # fmt: skip
    return runs


def format_table(runs: list[dict], variants: list[str]) -> str:
    """Markdown: one row per recipe and seed, mAP@.5 / mAP@.5:.95 per variant, the mean over the plain set and
    the three variants of issue 19 (only when all four have run, so that every mean in the table is over the same
    sets), the plain set's wall time and the CPUs the row's runs ran on."""
    header = "| recipe | seed | " + " | ".join(variants) + " | mean | plain wall | cpu |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    keys = sorted({(r["recipe"], r["seed"]) for r in runs}, key=lambda k: ([r["recipe"] for r in runs].index(k[0]), k[1]))
    for recipe, seed in keys:
        by_variant = {r["variant"]: r for r in runs if (r["recipe"], r["seed"]) == (recipe, seed)}
        cells = [f"{by_variant[v]['metrics']['AP50']:.1f} / {by_variant[v]['metrics']['AP']:.1f}"
                 if v in by_variant else "-" for v in variants]  # fmt: skip
        if all(v in by_variant for v in DEFAULT_VARIANTS):
            mean50 = sum(by_variant[v]["metrics"]["AP50"] for v in DEFAULT_VARIANTS) / len(DEFAULT_VARIANTS)
            mean = sum(by_variant[v]["metrics"]["AP"] for v in DEFAULT_VARIANTS) / len(DEFAULT_VARIANTS)
            cells.append(f"**{mean50:.1f} / {mean:.1f}**")
        else:
            cells.append("-")
        wall = by_variant.get(PLAIN, {}).get("wall_s")
        cells.append("-" if wall is None else f"{int(wall // 60)}:{int(wall % 60):02d}")
        cpus = sorted({r.get("cpu", "-") for r in by_variant.values()})
        cells.append(", ".join(cpus))
        lines.append(f"| {recipe} | {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comma_list(kind):
    def parse(text: str) -> list:
        try:
            return [kind(item) for item in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}, got {text!r}") from None

    return parse


def parse_arguments():
    parser = ArgumentParser(description="Run a training recipe on the shapes set and its variants; print the table.")
    parser.add_argument("--name", help="the recipe's name (a folder under --output-dir)")
    parser.add_argument("--config", default="configs/shapes_r18.yaml")
    # comma-separated lists, not nargs="+": a list option would swallow the KEY=VALUE overrides after it
    parser.add_argument("--variants", type=comma_list(str), default=DEFAULT_VARIANTS,
                        help=f"comma-separated datasets: {PLAIN} and/or shapes variants such as fine, fine+small "
                        f"(default: {','.join(DEFAULT_VARIANTS)})")
    parser.add_argument("--seeds", type=comma_list(int), default=[0], help="comma-separated training seeds (default: 0)")
    parser.add_argument("--num-images", type=int, nargs=2, metavar=("TRAIN", "TEST"),
                        help="images per split (default: the shapes set's 2000 / 300)")
    parser.add_argument("--output-dir", default="output/recipes")
    parser.add_argument("--table", action="store_true", help="only print the table of the runs under --output-dir")
    parser.add_argument("overrides", nargs="*", help="the recipe: config overrides KEY=VALUE")
    args = parser.parse_args()
    if not args.table and not args.name:
        parser.error("give --name NAME for the recipe to run, or --table to print the results so far")
    if args.name is not None and (not args.name or "/" in args.name or args.name.startswith(".")):
        parser.error(f"--name must be a plain folder name, got {args.name!r}")
    for variant in args.variants:
        if variant != PLAIN:
            parse_variant(variant)
    return args


@user_errors_exit
def main() -> None:
    args = parse_arguments()
    root = Path(args.output_dir)
    if not args.table:
        # Load every run's config now: a bad override or variant fails before hours of training.
        for variant in args.variants:
            for seed in args.seeds:
                load_config(args.config, run_overrides(variant, seed, args.num_images, args.overrides))
        recipe_dir = root / args.name
        check_recipe_dir(recipe_dir, {"config": args.config, "overrides": args.overrides, "created": time.time()})
        for seed in args.seeds:
            for variant in args.variants:
                run_dir = recipe_dir / f"{variant}-s{seed}"
                if (run_dir / "run.json").is_file():
                    print(f"{run_dir}: done before, skipped", flush=True)
                    continue
                record = run_one(args.config, run_dir, run_overrides(variant, seed, args.num_images, args.overrides))
                write_json(run_dir / "run.json", record, indent=2)
    runs = read_runs(root)
    variants = DEFAULT_VARIANTS + sorted({r["variant"] for r in runs} - set(DEFAULT_VARIANTS))
    print(f"\nmAP@.5 / mAP@.5:.95 on each test split (runs under {root}):\n")
    print(format_table(runs, variants))


if __name__ == "__main__":
    main()
