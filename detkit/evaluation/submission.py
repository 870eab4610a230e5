"""COCO leaderboard submissions (test-dev / test-challenge) from a saved detections file.

The server takes a zip holding one json named `detections_<split>_<method>_results.json`, a list
of `{image_id, category_id, bbox, score}` in the COCO results format:
  - `image_id`: an id of the split's image-info json (`image_info_test-dev2017.json`); an image
    without detections is allowed (it only costs recall);
  - `category_id`: COCO's original ids (1..90 with gaps), never contiguous class indices;
  - `bbox`: `[x, y, w, h]` floats in pixels, (0, 0) the image's top-left corner. COCO asks for
    floats and recommends rounding to a tenth of a pixel only to keep files small; detkit keeps
    2 decimals (1/100 pixel, as in `detections.json`), which leaves AP unchanged and zips well;
  - `score`: a float, rounded to 5 decimals;
  - at most 100 detections per image: AP is measured on the 100 highest-scored detections of
    each image, so `format_submission` keeps those and drops the rest.
"""

import math
import os
import zipfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from detkit.atomic_write import write_atomically, write_json
from detkit.errors import UserError
from detkit.evaluation.provenance import write_sidecar
from detkit.evaluation.results import BBOX_DECIMALS, RESULT_KEYS, SCORE_DECIMALS, is_number
from detkit.json_file import read_json

MAX_DETECTIONS_PER_IMAGE = 100  # COCO's maxDets for AP
_EXAMPLES = 3  # how many offending entries a problem message quotes


# ---------------------------------------------------------------------------------------------
# Reading files


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


def short_list(values, limit: int = 8) -> str:
    """`[a, b, c, ...]`: the first `limit` values, for messages."""
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
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(is_number(v) for v in bbox):
            note("bbox", f"entry {i} bbox {bbox!r}")
        elif not all(math.isfinite(v) for v in bbox):
            note("finite", f"entry {i} bbox {bbox!r}")
        elif bbox[2] < 0 or bbox[3] < 0:
            note("negative", f"entry {i} bbox {bbox!r}")
        if not is_number(score) or not math.isfinite(score):
            note("score", f"entry {i} score {score!r}")
    if max_per_image is not None:
        for image_id, n in per_image.items():
            if n > max_per_image:
                note("count", f"image {image_id} has {n}")

    categories = short_list(sorted(category_ids))
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
            f"{len(empty)} images have no detection (allowed: they only cost recall), e.g. {short_list(empty, 5)}"
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
