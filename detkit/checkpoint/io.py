"""Detkit checkpoints: written atomically, read with `torch.load(weights_only=True)` only.

A checkpoint is a dict with at least `model` (a state_dict). Training checkpoints add `optimizer`,
`iteration` (the number of finished iterations), `rng` (python, numpy, torch and CUDA generator
states, as plain lists and tensors) and `config` (the merged config as a YAML string).
"""

import random
import re
from pathlib import Path

import numpy as np
import torch

from detkit.atomic_write import write_atomically
from detkit.errors import UserError

CHECKPOINT_PATTERN = re.compile(r"^model_(\d{7})\.pth$")


def checkpoint_name(iteration: int) -> str:
    return f"model_{iteration:07d}.pth"


def save_checkpoint(path: str | Path, state: dict) -> None:
    """`torch.save(state)` written atomically: a crash never leaves a partial checkpoint."""
    write_atomically(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint dict safely; any problem with the file is a `UserError` naming it."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a directory: give the checkpoint file in it, e.g. {path / 'model_final.pth'}")
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated, or holding objects that weights_only refuses
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot read checkpoint {path}: {reason[:200]} (is the file complete and a detkit checkpoint?)") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise UserError(f"{path} is not a detkit checkpoint: expected a dict with a 'model' state_dict")
    return state


def find_last_checkpoint(output_dir: str | Path) -> Path | None:
    """The `model_XXXXXXX.pth` with the highest iteration in `output_dir`, or None."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))]
    return max(found)[1] if found else None


def get_rng_state() -> dict:
    """All generator states as types that `weights_only` loading accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.copy()), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_model_weights(model: torch.nn.Module, state: dict, source: str | Path) -> None:
    """Load a checkpoint's `model` state_dict into `model`; mismatched keys or shapes are a `UserError`."""
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        detail = " ".join(line.strip() for line in str(e).strip().splitlines()[:3])
        raise UserError(f"checkpoint {source} does not fit this model (wrong config?): {detail[:300]}") from None
