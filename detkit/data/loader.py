"""Batching: collate, the infinite training sampler, and the train/test DataLoaders.

Training order is a pure function of `seed`: batch k is the same whether a run starts at 0 or
resumes at k (`start_iter`), and whatever `num_workers` is. Augmentation randomness is too: every
sample is loaded with the global RNGs (random, numpy, torch) seeded from (seed, iteration, slot in
the global batch), so a resumed run sees the same flips and sizes as an uninterrupted one.
"""

import contextlib
import math
import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from detkit.errors import UserError


def collate(batch: list) -> tuple[list[Tensor], list[dict]]:
    """[(image, target) | None, ...] -> ([image, ...], [target, ...]); None items (unreadable images) are dropped."""
    items = [item for item in batch if item is not None]
    return [image for image, _ in items], [target for _, target in items]


def _nonneg(seed: int) -> int:
    return int(seed) % 2**63  # numpy SeedSequence takes non-negative integers


class TrainingSampler(Sampler[list[int]]):
    """Infinite stream of batches of dataset indices, grouped by orientation, sharded over ranks.

    Epoch e shuffles each orientation group (landscape w >= h, portrait w < h; one group when
    `aspect_ratio_grouping` is off) with an RNG seeded from (seed, e), cuts it into global batches of
    `batch_size` (the last one of a group topped up cyclically from that group's own shuffled order,
    so every image is seen each epoch and a batch never mixes groups), and shuffles the batch order.
    The epoch length, sum over groups of ceil(n_g / batch_size), does not depend on the RNG, so
    `start_iter` jumps straight to its epoch: the batches from iteration k equal those a fresh run
    yields at iteration k.

    `batch_size` is the global batch (all ranks); rank r receives the r-th contiguous slice of
    `batch_size // world_size` indices, so ranks get disjoint images of each global batch (unless a
    group is smaller than a batch and had to repeat images).
    """

    def __init__(
        self,
        image_sizes: Sequence[tuple[int, int]],
        *,
        batch_size: int,
        seed: int,
        aspect_ratio_grouping: bool = True,
        start_iter: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if len(image_sizes) == 0:
            raise UserError("the training dataset has no images")
        if batch_size < 1 or batch_size % world_size != 0:
            raise UserError(
                f"solver.ims_per_batch ({batch_size}) must be a positive multiple of the process count ({world_size})"
            )
        if not 0 <= rank < world_size or start_iter < 0:
            raise ValueError(f"need 0 <= rank < world_size and start_iter >= 0, got {rank}, {world_size}, {start_iter}")
        self.batch_size = batch_size
        self.local_batch_size = batch_size // world_size
        self.seed = _nonneg(seed)
        self.start_iter = start_iter
        self.rank = rank
        self.world_size = world_size
        sizes = np.asarray(image_sizes, dtype=np.int64).reshape(-1, 2)
        if aspect_ratio_grouping:
            landscape = sizes[:, 1] >= sizes[:, 0]
            groups = [np.flatnonzero(landscape), np.flatnonzero(~landscape)]
        else:
            groups = [np.arange(len(sizes))]
        self.groups = [g for g in groups if len(g) > 0]
        self.batches_per_epoch = sum(math.ceil(len(g) / batch_size) for g in self.groups)

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """The global batches of one epoch, in order: a list of (batch_size,) index arrays."""
        rng = np.random.default_rng([self.seed, epoch])
        batches: list[np.ndarray] = []
        for group in self.groups:
            order = group[rng.permutation(len(group))]
            padded = np.resize(order, math.ceil(len(group) / self.batch_size) * self.batch_size)  # cyclic top-up
            batches.extend(padded.reshape(-1, self.batch_size))
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self) -> Iterator[list[int]]:
        epoch, offset = divmod(self.start_iter, self.batches_per_epoch)
        lo, hi = self.rank * self.local_batch_size, (self.rank + 1) * self.local_batch_size
        while True:
            for batch in self.epoch_batches(epoch)[offset:]:
                yield batch[lo:hi].tolist()
            epoch, offset = epoch + 1, 0


def sample_seed(seed: int, iteration: int, slot: int) -> int:
    """The augmentation seed of the sample in position `slot` of global batch `iteration`."""
    return int(np.random.SeedSequence([_nonneg(seed), iteration, slot]).generate_state(1)[0])


class _SeededBatches:
    """Wraps a TrainingSampler: each index becomes (index, sample_seed(seed, iteration, global slot))."""

    def __init__(self, sampler: TrainingSampler, seed: int):
        self.sampler = sampler
        self.seed = seed

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        first_slot = self.sampler.rank * self.sampler.local_batch_size
        for it, batch in enumerate(self.sampler, start=self.sampler.start_iter):
            yield [(idx, sample_seed(self.seed, it, first_slot + j)) for j, idx in enumerate(batch)]


@contextlib.contextmanager
def _seeded_rngs(seed: int):
    """Seed random, numpy and torch for the block, then restore their previous states."""
    saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.random.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed would also reseed CUDA
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])


class SeededDataset(Dataset):
    """`dataset[(index, seed)]` loads `dataset[index]` with the global RNGs seeded from `seed`.

    Other attributes (class_names, image_sizes, ...) are those of the wrapped dataset.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        with _seeded_rngs(seed):
            return self.dataset[index]

    def __getattr__(self, name: str):
        if name == "dataset":  # not set yet (unpickling): avoid recursing
            raise AttributeError(name)
        return getattr(self.dataset, name)


def _worker_init(worker_id: int) -> None:
    # Workers run side by side: one thread each keeps them from oversubscribing the cores. OpenCV: 0 runs its
    # functions sequentially; 1 would reconfigure the thread pool the worker inherited by fork from a parent that
    # had used it, and that waits forever for threads that do not exist in the child (OpenCV 5.0, pthreads).
    import cv2

    cv2.setNumThreads(0)
    torch.set_num_threads(1)


def build_train_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    seed: int,
    num_workers: int,
    aspect_ratio_grouping: bool,
    start_iter: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """Infinite training loader yielding (list[Tensor (3, H, W) uint8], list[target dict]) per iteration.

    `batch_size` is the global batch (solver.ims_per_batch); this rank gets batch_size // world_size
    images per iteration (fewer when an image is unreadable). `dataset.image_sizes` [(h, w)] drives
    the aspect-ratio grouping; a dataset without it is batched ungrouped.
    """
    sizes = getattr(dataset, "image_sizes", None)
    if sizes is None:
        sizes, aspect_ratio_grouping = [(1, 1)] * len(dataset), False
    sampler = TrainingSampler(
        sizes,
        batch_size=batch_size,
        seed=seed,
        aspect_ratio_grouping=aspect_ratio_grouping,
        start_iter=start_iter,
        rank=rank,
        world_size=world_size,
    )
    return DataLoader(
        SeededDataset(dataset),
        batch_sampler=_SeededBatches(sampler, seed),
        num_workers=num_workers,
        collate_fn=collate,
        persistent_workers=num_workers > 0,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        # Without a generator the DataLoader draws worker seeds from torch's global RNG, which would
        # make the model's own random draws depend on num_workers.
        generator=torch.Generator().manual_seed(_nonneg(seed)),
    )


def build_test_loader(
    dataset: Dataset, *, batch_size: int = 1, num_workers: int = 0, rank: int = 0, world_size: int = 1
) -> DataLoader:
    """Loader over `dataset` in order; with world_size > 1 this rank gets indices rank, rank + world_size, ..."""
    indices = list(range(rank, len(dataset), world_size))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=indices,
        num_workers=num_workers,
        collate_fn=collate,
        worker_init_fn=_worker_init if num_workers > 0 else None,
    )
