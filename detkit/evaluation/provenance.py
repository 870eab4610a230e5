"""Provenance sidecars: `<stem>.meta.json` beside a results, metrics or submission file.

`write_sidecar(path, **info)` records the file's name, creation time, detkit version and git commit,
plus what the caller knows (config, weights, dataset, ...); `read_sidecar` reads one back.
"""

import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from detkit.atomic_write import write_json
from detkit.errors import UserError
from detkit.json_file import read_json
from detkit.version import __version__


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
    path = Path(path)
    record = {
        "file": path.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "detkit_version": __version__,
        "git_commit": _git_commit(),
        **info,
    }
    target = sidecar_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_json(target, record, indent=2, default=str)
    return target


def read_sidecar(path: str | os.PathLike) -> dict | None:
    """The sidecar of `path` as a dict, or None when there is none (or it is unreadable)."""
    try:
        data = read_json(sidecar_path(path), "sidecar")
    except (UserError, OSError):
        return None
    return data if isinstance(data, dict) else None
