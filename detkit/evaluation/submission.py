"""Saved detections after the run: COCO leaderboard submissions, offline evaluation, provenance.

Leaderboard (COCO test-dev / test-challenge): the server takes a zip holding one json named
`detections_<split>_<method>_results.json`, a list of `{image_id, category_id, bbox, score}` in the
COCO results format:
  - `image_id`: an id of the split's image-info json (`image_info_test-dev2017.json`); an image
    without detections is allowed (it only costs recall);
  - `category_id`: COCO's original ids (1..90 with gaps), never contiguous class indices;
  - `bbox`: `[x, y, w, h]` floats in pixels, (0, 0) the image's top-left corner. COCO asks for
    floats and recommends rounding to a tenth of a pixel only to keep files small; detkit keeps
    2 decimals (1/100 pixel, as in `detections.json`), which leaves AP unchanged and zips well;
  - `score`: a float, rounded to 5 decimals;
  - at most 100 detections per image: AP is measured on the 100 highest-scored detections of
    each image, so `format_submission` keeps those and drops the rest.

Offline evaluation: `evaluate_saved_results` scores a saved `detections.json` against a configured
test set without a model (`tools/evaluate.py`). `make_cocoeval` picks the COCOeval implementation:
pycocotools (the reference) or faster-coco-eval (the same numbers, computed in C++).

Provenance: `write_sidecar(path, **info)` writes `<stem>.meta.json` beside a results or metrics
file (creation time, detkit version and git commit, plus the caller's config, weights, ...).
"""

import contextlib
import io
import json
import math
import os
import subprocess
import zipfile
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from detkit.atomic_write import write_atomically, write_json
from detkit.errors import UserError
from detkit.evaluation.results import BBOX_DECIMALS, RESULT_KEYS, SCORE_DECIMALS, load_results

MAX_DETECTIONS_PER_IMAGE = 100  # COCO's maxDets for AP
COCO_BACKENDS = ("pycocotools", "faster_coco_eval")
_EXAMPLES = 3  # how many offending entries a problem message quotes


# ---------------------------------------------------------------------------------------------
# Reading files


def read_json(path: str | os.PathLike, what: str) -> Any:
    """The parsed content of a JSON file; a missing or malformed file is a one-line `UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{what} {path} is not valid JSON ({e})") from None


def read_image_info(path: str | os.PathLike) -> dict:
    """A COCO image-info json (test-dev) or instances json: needs `images` and `categories` with ids."""
    data = read_json(path, "image-info file")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise UserError(f"image-info file {path} has no 'images' list; expected e.g. image_info_test-dev2017.json")
    if not isinstance(data.get("categories"), list) or not data["categories"]:
        raise UserError(f"image-info file {path} has no 'categories' list")
    try:
        [int(im["id"]) for im in data["images"]]
        [int(c["id"]) for c in data["categories"]]
    except (KeyError, TypeError, ValueError):
        raise UserError(f"image-info file {path}: every image and category needs an integer 'id'") from None
    return data


def _image_info_ids(image_info: dict | str | os.PathLike) -> tuple[list[int], set[int], str]:
    """(image ids in file order, category ids, a name for messages) of a path or a loaded json."""
    if isinstance(image_info, dict):
        data, name = image_info, "the image-info file"
    else:
        data, name = read_image_info(image_info), Path(image_info).name
    image_ids = [int(im["id"]) for im in data["images"]]
    category_ids = {int(c["id"]) for c in data["categories"]}
    return image_ids, category_ids, name


# ---------------------------------------------------------------------------------------------
# Leaderboard submissions


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _short_list(values, limit: int = 8) -> str:
    values = list(values)
    text = ", ".join(str(v) for v in values[:limit])
    return f"[{text}{', ...' if len(values) > limit else ''}]"


def validate_submission(
    results: Any,
    image_info: dict | str | os.PathLike,
    *,
    max_per_image: int | None = MAX_DETECTIONS_PER_IMAGE,
) -> list[str]:
    """What keeps `results` from being a valid leaderboard submission for `image_info`.

    Args:
        results: the parsed results file (a list of `{image_id, category_id, bbox, score}`).
        image_info: the split's image-info json, as a path or already loaded.
        max_per_image: the most detections one image may have; None: not checked.

    Returns:
        One line per kind of problem, with the number of entries concerned and the first few
        (entry index and value); empty when the file is valid. Images of the file without any
        detection are not a problem (see `submission_notes`).
    """
    if not isinstance(results, list):
        return [f"the results must be a JSON list of detections, got a {type(results).__name__}"]
    image_ids, category_ids, name = _image_info_ids(image_info)
    known_images = set(image_ids)
    found: dict[str, list[str]] = defaultdict(list)  # kind -> examples, in entry order
    counts: Counter = Counter()

    def note(kind: str, example: str) -> None:
        counts[kind] += 1
        if len(found[kind]) < _EXAMPLES:
            found[kind].append(example)

    per_image: Counter = Counter()
    for i, r in enumerate(results):
        if not isinstance(r, dict) or any(k not in r for k in RESULT_KEYS):
            missing = [k for k in RESULT_KEYS if not isinstance(r, dict) or k not in r]
            note("malformed", f"entry {i} lacks {', '.join(missing)}")
            continue
        image_id, category_id, bbox, score = (r[k] for k in RESULT_KEYS)
        if isinstance(image_id, bool) or not isinstance(image_id, int) or image_id not in known_images:
            note("image", f"entry {i} image_id {image_id!r}")
        else:
            per_image[image_id] += 1
        if isinstance(category_id, bool) or not isinstance(category_id, int) or category_id not in category_ids:
            note("category", f"entry {i} category_id {category_id!r}")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            note("bbox", f"entry {i} bbox {bbox!r}")
        elif not all(math.isfinite(v) for v in bbox):
            note("finite", f"entry {i} bbox {bbox!r}")
        elif bbox[2] < 0 or bbox[3] < 0:
            note("negative", f"entry {i} bbox {bbox!r}")
        if not _is_number(score) or not math.isfinite(score):
            note("score", f"entry {i} score {score!r}")
    if max_per_image is not None:
        for image_id, n in per_image.items():
            if n > max_per_image:
                note("count", f"image {image_id} has {n}")

    categories = _short_list(sorted(category_ids))
    messages = {
        "malformed": lambda n: f"{n} entries are not {{image_id, category_id, bbox, score}} objects",
        "image": lambda n: f"{n} detections name an image that {name} does not hold (its ids are integers);"
        " were they made on another split? (make_submission.py --subset drops them)",
        "category": lambda n: f"{n} detections have a category_id outside {name}'s categories {categories};"
        " use COCO's original ids, not class indices",
        "bbox": lambda n: f"{n} detections have a bbox that is not four numbers [x, y, w, h]",
        "finite": lambda n: f"{n} detections have a non-finite bbox (nan or inf)",
        "negative": lambda n: f"{n} detections have a bbox with a negative width or height",
        "score": lambda n: f"{n} detections have a score that is not a finite number",
        "count": lambda n: f"{n} images have more than {max_per_image} detections; keep the {max_per_image}"
        " highest-scored of each (format_submission does)",
    }
    return [
        f"{message(counts[kind])} (first: {'; '.join(found[kind])})"
        for kind, message in messages.items()
        if counts[kind]
    ]


def submission_notes(results: list[dict], image_info: dict | str | os.PathLike) -> list[str]:
    """Information about a valid submission: its size and the images left without a detection."""
    image_ids, _, name = _image_info_ids(image_info)
    per_image = Counter(r["image_id"] for r in results)
    empty = [i for i in image_ids if i not in per_image]
    notes = [
        f"{len(results)} detections on {len(per_image)} of the {len(image_ids)} images of {name}"
        + (f", at most {max(per_image.values())} per image" if per_image else "")
    ]
    if empty:
        notes.append(
            f"{len(empty)} images have no detection (allowed: they only cost recall), e.g. {_short_list(empty, 5)}"
        )
    return notes


def keep_images(results: list[dict], image_info: dict | str | os.PathLike) -> tuple[list[dict], int]:
    """The detections on images of `image_info` (e.g. test-dev out of a run over all of test2017),
    and how many were dropped."""
    image_ids, _, _ = _image_info_ids(image_info)
    known = set(image_ids)
    kept = [r for r in results if isinstance(r, dict) and r.get("image_id") in known]
    return kept, len(results) - len(kept)


def format_submission(results: list[dict], *, max_per_image: int = MAX_DETECTIONS_PER_IMAGE) -> tuple[list[dict], int]:
    """Leaderboard entries from valid result dicts.

    Per image, keeps the `max_per_image` highest-scored detections (ties keep their order), then
    rounds bbox to 2 and score to 5 decimals and drops any key other than the four of the format.
    Images come in the order of their first detection in `results`.

    Returns:
        (entries, number of detections dropped by the per-image limit).
    """
    by_image: dict[Any, list[dict]] = defaultdict(list)
    for r in results:
        by_image[r["image_id"]].append(r)
    entries, dropped = [], 0
    for image_id, dets in by_image.items():
        order = np.argsort(-np.asarray([float(d["score"]) for d in dets]), kind="stable")
        dropped += max(0, len(dets) - max_per_image)
        for k in order[:max_per_image]:
            d = dets[k]
            entries.append(
                {
                    "image_id": image_id,
                    "category_id": int(d["category_id"]),
                    "bbox": [round(float(v), BBOX_DECIMALS) for v in d["bbox"]],
                    "score": round(float(d["score"]), SCORE_DECIMALS),
                }
            )
    return entries, dropped


def submission_name(split: str, method: str) -> str:
    """`detections_<split>_<method>_results.json`; the name's fields are separated by underscores."""
    if not split or any(c in split for c in "_/\\ \t"):
        raise UserError(f"--split {split!r} must be a split name such as test-dev2017 (no underscore, slash or space)")
    if not method or any(c in method for c in "/\\ \t") or method.startswith("."):
        raise UserError(f"--method {method!r} must be a short name such as detkit-r101 (no slash or space)")
    return f"detections_{split}_{method}_results.json"


def write_submission(
    entries: list[dict], output_dir: str | os.PathLike, *, split: str, method: str
) -> tuple[Path, Path]:
    """Write the json and a zip holding exactly that json (at the zip's root); returns both paths."""
    name = submission_name(split, method)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path = output_dir / name
    zip_path = json_path.with_suffix(".zip")
    write_json(json_path, entries, allow_nan=False, separators=(",", ":"))
    write_atomically(zip_path, lambda f: _zip_one(f, json_path))
    return json_path, zip_path


def _zip_one(f, path: Path) -> None:
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.write(path, arcname=path.name)


def make_submission(
    results_path: str | os.PathLike,
    image_info_path: str | os.PathLike,
    *,
    split: str,
    method: str,
    output_dir: str | os.PathLike | None = None,
    subset: bool = False,
) -> tuple[Path, Path, list[str]]:
    """tools/make_submission.py: check a saved results file, then write the leaderboard json and zip.

    Args:
        output_dir: where the files go; None: beside `results_path`.
        subset: drop detections on images that the image-info file does not hold, instead of
            refusing them (a run over all of test2017 submitted as test-dev2017).

    Returns:
        (json path, zip path, lines of information for the user).

    Raises:
        UserError: a missing or malformed file, a bad split or method name, or a results file with
            problems (`validate_submission`), all listed in the message; nothing is written then.
    """
    name = submission_name(split, method)  # a bad name fails before the long reads
    read_image_info(image_info_path)  # a bad image-info file fails before the results are read
    results = read_json(results_path, "results file")
    notes = []
    if subset and isinstance(results, list):
        results, dropped = keep_images(results, image_info_path)
        if dropped:
            notes.append(f"--subset: dropped {dropped} detections on images outside {Path(image_info_path).name}")
    problems = validate_submission(results, image_info_path, max_per_image=None)
    if problems:
        listing = "".join(f"\n  - {p}" for p in problems)
        raise UserError(f"{results_path} cannot be submitted ({len(problems)} problem(s), nothing written):{listing}")
    entries, dropped = format_submission(results)
    if dropped:
        notes.append(f"kept the {MAX_DETECTIONS_PER_IMAGE} highest-scored detections per image: dropped {dropped}")
    problems = validate_submission(entries, image_info_path)
    if problems:  # format_submission should never produce these
        raise RuntimeError(f"{name}: the formatted submission is invalid: {problems}")
    notes.extend(submission_notes(entries, image_info_path))
    json_path, zip_path = write_submission(
        entries, Path(results_path).parent if output_dir is None else output_dir, split=split, method=method
    )
    write_sidecar(json_path, results=str(results_path), image_info=str(image_info_path), split=split, method=method)
    return json_path, zip_path, notes


# ---------------------------------------------------------------------------------------------
# Offline evaluation


def make_cocoeval(coco_gt, coco_dt, *, backend: str = "pycocotools"):
    """A bbox COCOeval over pycocotools `COCO` objects, from pycocotools or faster-coco-eval.

    Both expose `params`, `evaluate()`, `accumulate()`, `summarize()`, `stats` (12 numbers) and
    `eval["precision"]` (T, R, K, A, M) with the same meaning; faster-coco-eval computes them in C++.
    """
    if backend == "pycocotools":
        from pycocotools.cocoeval import COCOeval

        return COCOeval(coco_gt, coco_dt, iouType="bbox")
    if backend == "faster_coco_eval":
        try:
            from faster_coco_eval import COCOeval_faster
        except ImportError:
            raise UserError(
                "the faster_coco_eval backend needs the faster-coco-eval package: pip install faster-coco-eval"
            ) from None
        return COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=print)
    raise UserError(f"unknown COCO evaluation backend {backend!r}; choose one of {', '.join(COCO_BACKENDS)}")


def cocoeval_stats(coco_gt, results: list[dict], *, backend: str = "pycocotools", quiet: bool = True):
    """pycocotools' 12 summary numbers (fractions, -1: nothing to measure) and the precision array
    (T, R, K, A, M) of `results` against `coco_gt` (every image and category), with `backend`."""
    out = io.StringIO() if quiet else None
    with contextlib.redirect_stdout(out) if quiet else contextlib.nullcontext():
        coco_dt = coco_gt.loadRes([dict(r, bbox=list(r["bbox"])) for r in results])
        evaluator = make_cocoeval(coco_gt, coco_dt, backend=backend)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.asarray(evaluator.stats[:12], dtype=np.float64), np.asarray(evaluator.eval["precision"])


def metrics_path_for(results_path: str | os.PathLike) -> Path:
    """`metrics.json` beside the results; `detections_1.json` -> `metrics_1.json` (test_net's naming)."""
    results_path = Path(results_path)
    stem = results_path.stem
    name = "metrics" + stem[len("detections") :] if stem.startswith("detections") else "metrics"
    return results_path.with_name(name + ".json")


def check_result_ids(results: list[dict], dataset, where: str) -> None:
    """Every result names an image and a category of `dataset`, else a one-line `UserError`."""
    image_ids = set(dataset.image_ids)
    category_ids = set(dataset.category_ids)
    for i, r in enumerate(results):
        if r["image_id"] not in image_ids:
            kind = "file stems such as '000005'" if hasattr(dataset, "year") else "the json's integer ids"
            raise UserError(
                f"detection {i} has image_id {r['image_id']!r}, which {where} does not hold (its ids are {kind}); "
                "evaluate against the dataset the detections were made on"
            )
        if r["category_id"] not in category_ids:
            raise UserError(
                f"detection {i} has category_id {r['category_id']!r}, not one of {where}'s category ids "
                f"{_short_list(sorted(category_ids))}; results use the dataset's ids, not class indices"
            )


def evaluate_saved_results(
    cfg,
    results_path: str | os.PathLike,
    *,
    dataset_index: int = 0,
    backend: str = "pycocotools",
    metrics_path: str | os.PathLike | None = None,
    config_path: str | None = None,
) -> tuple[dict, Path]:
    """tools/evaluate.py: score a saved results file against `data.test[dataset_index]`, no model.

    COCO-format sets are scored by `detkit.evaluation.coco.evaluate_results`, VOC sets by
    `detkit.evaluation.voc.evaluate_voc_results` (the rule of the set's year), both over every
    image of the set, as tools/test_net.py does. Prints the same tables; writes the metrics to
    `metrics_path` (default `metrics_path_for(results_path)`) with a `.meta.json` sidecar.

    Returns:
        (metrics dict in percent, the metrics file's path).
    """
    from detkit.data.build import build_dataset
    from detkit.evaluation.coco import evaluate_results
    from detkit.evaluation.voc import evaluate_voc_results

    specs = cfg.data.test
    if not isinstance(specs, list) or not specs:
        raise UserError("data.test is empty: name the dataset the detections were made on")
    if not 0 <= dataset_index < len(specs):
        raise UserError(f"--dataset-index {dataset_index} is out of range: data.test has {len(specs)} dataset(s)")
    where = f"data.test[{dataset_index}]"
    results = load_results(results_path)  # missing / malformed file -> UserError
    dataset = build_dataset(specs[dataset_index], cfg=cfg, is_train=False, name=where)
    check_result_ids(results, dataset, where)

    if hasattr(dataset, "year") and hasattr(dataset, "annotations"):  # VOC
        if backend != "pycocotools":
            print(f"note: --backend applies to COCO-format sets; {where} is a VOC set, scored by the VOC rule")
        metrics = evaluate_voc_results(
            results,
            dataset.annotations,
            dataset.class_names,
            None,  # the rule of the set's year
            image_ids=list(dataset.image_ids),
            year=dataset.year,
        )
    else:
        if not getattr(dataset, "has_annotations", True):
            raise UserError(
                f"{where} has no annotations (an image-info file such as test-dev): there is nothing to evaluate "
                "against; make a leaderboard submission with tools/make_submission.py instead"
            )
        # The default call stays valid whether or not evaluate_results takes a backend.
        extra = {} if backend == "pycocotools" else {"backend": backend}
        metrics = evaluate_results(
            dataset.coco, results, dataset.class_names, dataset.category_ids, img_ids=list(dataset.image_ids), **extra
        )

    metrics_path = Path(metrics_path) if metrics_path is not None else metrics_path_for(results_path)
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(metrics_path, metrics, indent=2)
    write_sidecar(
        metrics_path,
        command="evaluate",
        config=config_path,
        results=str(results_path),
        dataset=dict(specs[dataset_index]),
        backend=backend,
        results_meta=read_sidecar(results_path),
    )
    return metrics, metrics_path


# ---------------------------------------------------------------------------------------------
# Provenance sidecars


def sidecar_path(path: str | os.PathLike) -> Path:
    """`detections.json` -> `detections.meta.json`."""
    path = Path(path)
    return path.with_name(path.stem + ".meta.json")


def _git_commit() -> str | None:
    """The commit of detkit's source checkout, '+dirty' when it has changes; None outside git."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "") if head else None


def write_sidecar(path: str | os.PathLike, **info) -> Path:
    """Write `<stem>.meta.json` beside `path`: the file's name, creation time (UTC, ISO 8601),
    detkit version, git commit, and `info` (config path, weights, ...; Paths and other objects are
    written as strings). Returns the sidecar's path."""
    import detkit  # here, not at the top: detkit/__init__ may still be importing this module

    path = Path(path)
    record = {
        "file": path.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "detkit_version": getattr(detkit, "__version__", None),
        "git_commit": _git_commit(),
        **info,
    }
    target = sidecar_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_json(target, record, indent=2, default=str)
    return target


def read_sidecar(path: str | os.PathLike) -> dict | None:
    """The sidecar of `path` as a dict, or None when there is none (or it is unreadable)."""
    target = sidecar_path(path)
    try:
        data = json.loads(target.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
