"""What every command does first: parse the common flags, load the config, seed, log to a file, and
turn user errors into one line on stderr with exit status 2."""

import argparse
import functools
import logging
import random
import sys
from pathlib import Path

import numpy as np

from detkit.errors import UserError

logger = logging.getLogger("detkit")


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a usage error on one line (exit status 2, as argparse does)."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def seed_everything(seed: int) -> None:
    import torch  # here, not above: the demos with --onnx import this module on machines without torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup_logging(output_dir: Path | None = None, filename: str = "log.txt", console: bool = True) -> None:
    """Log INFO to stderr (warnings only with `console=False`) and, with an output folder, append to
    `output_dir/filename`."""
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S"))
    stream.setLevel(logging.INFO if console else logging.WARNING)
    logger.addHandler(stream)
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(output_dir / filename)
        file_handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        logger.addHandler(file_handler)


def default_output_dir(config_path: str) -> Path:
    """`output/<config file stem>` (contract)."""
    return Path("output") / Path(config_path).stem


def user_errors_exit(main):
    """Decorator for a command's main(): UserError -> 'error: ...' on stderr and exit 2; Ctrl-C -> exit 130."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper
