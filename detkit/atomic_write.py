"""Atomic file writes: a temporary file beside the target, flushed to disk, then renamed over it.

A crash at any point leaves either the previous file or the complete new one, never a partial one.
Checkpoints, detections, metrics and submission files all go through `write_atomically`.
"""

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call `write(binary file)` on a temporary file in `path`'s folder, fsync, then rename it to `path`.
    The file gets the permissions a plain `open(path, "w")` would give (0666 less the umask), not mkstemp's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it: set and restore
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, data, **dumps_kwargs) -> None:
    """`json.dumps(data, **dumps_kwargs)` written atomically (the text is built before the file is opened)."""
    text = json.dumps(data, **dumps_kwargs)
    write_atomically(path, lambda f: f.write(text.encode()))
