"""Output files of the scripts: checked writable before any slow work starts."""

from pathlib import Path

from detkit.errors import UserError


def ensure_writable(path: Path, what: str) -> None:
    """Create the parent folders and make sure `path` can be written, before any slow work starts."""
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder: give a file name")
    folder = next((p for p in path.absolute().parents if p.exists()), None)
    if folder is not None and not folder.is_dir():
        raise UserError(f"cannot write {what} {path}: {folder} is a file, not a folder")
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab"):
            pass
    except OSError as e:
        raise UserError(f"cannot write {what} {path}: {e.strerror or e}") from None
    if not existed:
        path.unlink()
