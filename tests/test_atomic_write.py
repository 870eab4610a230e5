"""detkit.atomic_write: all or nothing, with ordinary file permissions."""

import os
import stat

import pytest

from detkit.atomic_write import write_atomically, write_json


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"AP": 1.0})

    def fail(f):
        f.write(b"partial")
        raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError):
        write_atomically(path, fail)
    assert path.read_text() == '{"AP": 1.0}'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_files_get_the_permissions_of_a_plain_open(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", [1])
        with open(tmp_path / "b.json", "w") as f:
            f.write("[1]")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "a.json").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o644  # readable by a web server, not 0600
