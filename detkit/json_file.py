"""Reading a JSON file the user gave: a missing or malformed file is one `UserError` line.

The one JSON reader of the package (annotation jsons, results files, image-info files, sidecars);
writing goes through `detkit.atomic_write.write_json`.
"""

import json
import os
from pathlib import Path
from typing import Any

from detkit.errors import UserError


def read_json(path: str | os.PathLike, what: str, *, hint: str = "") -> Any:
    """The parsed content of `path`.

    Args:
        what: names the file in messages ("results file", "COCO annotation file", ...).
        hint: appended to the malformed-file message (how to fix it), e.g. "write it with test_net.py".

    Raises:
        UserError: `{what} not found: {path}`, or `{what} {path} is not valid JSON (...)`.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{what} {path} is not valid JSON ({e})" + (f"; {hint}" if hint else "")) from None
