"""Reads a pickle that may hold only numpy arrays and plain containers; anything else is refused unrun.

Model-zoo `.pkl` files (detectron2's `{"model": {name: array}, "__author__": ...}`, MSRA/Caffe2's
`{name: array}`) are pickles, and `pickle.load` runs whatever callable a file names. This unpickler
resolves only the globals in `ALLOWED` below, the ones numpy and pickle themselves write for arrays,
scalars, dtypes and containers (found by tracing `pickle.dumps` of such data at protocols 0-5 under
numpy 1.x and 2.x names, and Python 2's names for the same objects). Any other global (`os.system`,
`builtins.eval`, a class of some package) raises a `UserError` before it is called, so a hostile file
costs one error line and runs nothing.

How numpy pickles an ndarray (numpy/_core/src/multiarray/methods.c, `array_reduce_ex`):
  - protocol < 5, or a non-contiguous array: `_reconstruct(ndarray, (0,), b"b")` makes an empty array,
    then `ndarray.__setstate__((1, shape, dtype, is_fortran, raw bytes))` fills it; `dtype` is itself
    `numpy.dtype("f4", False, True)` plus a `__setstate__` tuple;
  - protocol 5: `_frombuffer(buffer, dtype, shape, order)`;
  - numpy scalars: `scalar(dtype, raw bytes)`;
  - protocols 0-2 write `bytes` as `_codecs.encode(text, "latin1")`.
Python 2 pickles (the MSRA ImageNet files) store raw bytes as `str`: they need `encoding="latin1"`,
which `load_pickle` always uses (Python 3 pickles are unaffected by it).
"""

import _codecs
import collections
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from detkit.errors import UserError

try:  # numpy >= 2 keeps these in numpy._core; numpy 1.x in numpy.core
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """`_codecs.encode` as pickles of bytes use it (protocols 0-2), and only that use."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} (only latin1 rebuilds bytes)")
    return _codecs.encode(text, encoding, errors)


def _dtype(*args: Any) -> np.dtype:
    dtype = np.dtype(*args)
    if dtype.hasobject:  # an object array would let the file smuggle arbitrary objects into "weights"
        raise pickle.UnpicklingError(f"numpy dtype {dtype} holds Python objects, not numbers")
    return dtype


# (module, name) as written in the file -> the object it is allowed to mean. Nothing else resolves.
ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy.core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _latin1_encode,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,  # Python 2 and protocols 0-2 name builtins this way
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("__builtin__", "bytearray"): bytearray,
}


class RefusedGlobal(pickle.UnpicklingError):
    """The file names a global outside `ALLOWED`; `qualname` is what it asked for."""

    def __init__(self, qualname: str):
        super().__init__(qualname)
        self.qualname = qualname


class SafeUnpickler(pickle.Unpickler):
    """A `pickle.Unpickler` whose `find_class` knows only `ALLOWED`; persistent ids are refused too."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise RefusedGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids (torch's legacy format, not a plain pickle)")


def load_pickle(path: str | Path) -> Any:
    """Unpickle `path` with `SafeUnpickler` (encoding latin1, for Python 2 files).

    Raises a one-line `UserError` naming the file: for a global outside `ALLOWED` ("refusing to load
    os.system from FILE"), and for a truncated or corrupt pickle.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return SafeUnpickler(f, encoding="latin1").load()
    except RefusedGlobal as e:
        raise UserError(
            f"refusing to load {e.qualname} from {path}: a weights .pkl may hold only numpy arrays and plain "
            "containers (the file may be hostile; nothing in it was run)"
        ) from None
    except OSError as e:
        raise UserError(f"cannot read weights file {path}: {e.strerror or e}") from None
    except Exception as e:  # EOFError, UnpicklingError, ValueError from numpy's setstate, ...: a bad file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot unpickle weights file {path}: {reason[:200]} (truncated or not a weights pickle?)") from None
