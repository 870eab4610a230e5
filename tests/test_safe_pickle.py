"""The restricted unpickler: rebuilds numpy arrays and containers as numpy/pickle write them, runs nothing else."""

import collections
import pickle
import re

import numpy as np
import pytest

from detkit.checkpoint.safe_pickle import load_pickle
from detkit.errors import UserError
from tests.conftest import python2_pickle


def sample():
    return {
        "__author__": "Detectron2 Model Zoo",
        "model": collections.OrderedDict(
            w=np.arange(24, dtype=np.float32).reshape(2, 3, 4),
            fortran=np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)),
            strided=np.arange(10, dtype=np.int64)[::3],  # non-contiguous: the _reconstruct path even at protocol 5
            big_endian=np.arange(4, dtype=">f4"),
            flags=np.array([True, False]),
        ),
        "scalar": np.float32(2.5),
        "int_scalar": np.int64(7),
        "raw": b"\x00\xffbytes",
        "names": ["a", ("b", 1.5)],
        "set": {1, 2},
        "none": None,
    }


def check_equal(got, want):
    assert type(got) is type(want) or (isinstance(want, dict) and isinstance(got, dict))
    if isinstance(want, np.ndarray):
        assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)
    elif isinstance(want, dict):
        assert list(got) == list(want)
        for k in want:
            check_equal(got[k], want[k])
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want)
        for a, b in zip(got, want):
            check_equal(a, b)
    else:
        assert got == want and type(got) is type(want)


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_round_trip_of_numpy_and_containers_at_every_protocol(tmp_path, protocol):
    """Same objects as plain pickle.loads gives (numpy itself turns '>f4' into native order below protocol 5)."""
    path = tmp_path / f"p{protocol}.pkl"
    data = sample()
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    got = load_pickle(path)
    check_equal(got, pickle.loads(path.read_bytes()))
    for name, array in data["model"].items():
        assert np.array_equal(got["model"][name], array)


def test_numpy_1x_module_names_resolve(tmp_path):
    """Files written under numpy 1.x name `numpy.core.multiarray`; numpy 2 writes `numpy._core.multiarray`."""
    raw = pickle.dumps({"w": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.float32(1.5)}, protocol=2)
    for new, old in [(b"numpy._core.multiarray", b"numpy.core.multiarray")]:
        raw = raw.replace(new, old)
    assert b"numpy.core.multiarray" in raw and b"numpy._core" not in raw
    path = tmp_path / "numpy1.pkl"
    path.write_bytes(raw)
    got = load_pickle(path)
    assert np.array_equal(got["w"], np.arange(6, dtype=np.float32).reshape(2, 3)) and got["s"] == np.float32(1.5)


def test_python2_pickle_with_str_bytes_loads_as_latin1(tmp_path):
    blobs = {"conv1_w": np.random.default_rng(0).normal(size=(4, 3, 2, 2)).astype(np.float32),
             "res_conv1_bn_s": np.linspace(-1, 1, 300).astype(np.float32)}  # 1200 bytes: BINSTRING
    raw = python2_pickle(blobs)
    with pytest.raises(UnicodeDecodeError):  # what plain pickle.loads does without encoding="latin1"
        pickle.loads(raw)
    path = tmp_path / "py2.pkl"
    path.write_bytes(raw)
    got = load_pickle(path)
    assert list(got) == list(blobs)
    for k in blobs:
        assert got[k].dtype == np.float32 and np.array_equal(got[k], blobs[k])


class RunsCode:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path(TARGET).write_text('ran')".replace("TARGET", repr(self.target)),))

    def __init__(self, target):
        self.target = str(target)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_hostile_pickle_is_refused_and_runs_nothing(tmp_path, protocol):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": np.zeros(2)}, "x": RunsCode(marker)}, protocol=protocol))
    with pytest.raises(UserError) as info:
        load_pickle(path)
    message = str(info.value)
    assert re.search(r"refusing to load (__builtin__|builtins)\.exec from", message) and str(path) in message and "\n" not in message
    assert not marker.exists()
    # the same file through plain pickle does run it: the test's hostile file is real
    pickle.loads(path.read_bytes())
    assert marker.read_text() == "ran"


@pytest.mark.parametrize(
    "payload, refused",
    [
        (b"cos\nsystem\n(S'echo hi'\ntR.", "os.system"),  # protocol 0, the classic
        (b"\x80\x02cposix\nsystem\nq\x00.", "posix.system"),
        (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n.", "torch._utils._rebuild_tensor_v2"),  # not a plain pickle
    ],
)
def test_other_globals_are_refused_by_name(tmp_path, payload, refused):
    path = tmp_path / "bad.pkl"
    path.write_bytes(payload)
    with pytest.raises(UserError, match=f"refusing to load {refused} from .*bad.pkl"):
        load_pickle(path)


def test_object_arrays_and_non_latin1_codecs_are_refused(tmp_path):
    path = tmp_path / "objects.pkl"
    path.write_bytes(pickle.dumps({"w": np.array([1, "x"], dtype=object)}, protocol=2))
    with pytest.raises(UserError, match="holds Python objects"):
        load_pickle(path)
    # _codecs.encode is allowed only to rebuild bytes (latin1), not as a general transform
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x06\x00\x00\x00base64\x86R.")
    with pytest.raises(UserError, match="only latin1"):
        load_pickle(path)


def test_truncated_and_missing_files_are_one_line_errors(tmp_path):
    path = tmp_path / "cut.pkl"
    path.write_bytes(pickle.dumps(sample(), protocol=4)[:100])
    with pytest.raises(UserError, match=r"cannot unpickle weights file .*cut.pkl"):
        load_pickle(path)
    with pytest.raises(UserError, match="cannot read weights file"):
        load_pickle(tmp_path / "absent.pkl")
