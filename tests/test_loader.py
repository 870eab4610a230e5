import itertools
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from detkit.data.loader import TrainingSampler, build_test_loader, build_train_loader, collate
from detkit.errors import UserError


def _sizes(n=23, seed=0):
    rng = np.random.RandomState(seed)
    return [(int(h), int(w)) for h, w in rng.randint(100, 300, size=(n, 2))]


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_resume_equals_fresh_run():
    sizes = _sizes()
    fresh = _take(TrainingSampler(sizes, batch_size=4, seed=7), 40)  # several epochs
    for k in (0, 1, 5, 13, 27):
        resumed = _take(TrainingSampler(sizes, batch_size=4, seed=7, start_iter=k), 40 - k)
        assert resumed == fresh[k:]
    assert fresh != _take(TrainingSampler(sizes, batch_size=4, seed=8), 40)


def test_every_image_every_epoch_and_shuffled():
    sizes = _sizes()
    s = TrainingSampler(sizes, batch_size=4, seed=0)
    epoch0 = _take(s, s.batches_per_epoch)
    epoch1 = _take(TrainingSampler(sizes, batch_size=4, seed=0, start_iter=s.batches_per_epoch), s.batches_per_epoch)
    assert set(itertools.chain(*epoch0)) == set(range(len(sizes)))
    assert epoch0 != epoch1


def test_aspect_ratio_grouping():
    sizes = _sizes(40)
    landscape = {i for i, (h, w) in enumerate(sizes) if w >= h}
    assert 0 < len(landscape) < 40
    for batch in _take(TrainingSampler(sizes, batch_size=3, seed=1), 50):
        assert len(batch) == 3
        assert len({i in landscape for i in batch}) == 1
    mixed = _take(TrainingSampler(sizes, batch_size=3, seed=1, aspect_ratio_grouping=False), 50)
    assert any(len({i in landscape for i in b}) == 2 for b in mixed)


def test_ranks_are_disjoint_slices_of_the_global_batch():
    sizes = _sizes(50)
    glob = _take(TrainingSampler(sizes, batch_size=6, seed=3), 20)
    per_rank = [_take(TrainingSampler(sizes, batch_size=6, seed=3, rank=r, world_size=3), 20) for r in range(3)]
    for k in range(20):
        parts = [per_rank[r][k] for r in range(3)]
        assert all(len(p) == 2 for p in parts)
        assert sum(parts, []) == glob[k]
        assert len(set(glob[k])) == 6
    with pytest.raises(UserError, match="ims_per_batch"):
        TrainingSampler(sizes, batch_size=5, seed=0, world_size=2)


def test_tiny_dataset_smaller_than_a_batch():
    batches = _take(TrainingSampler([(10, 20), (20, 10), (10, 30)], batch_size=4, seed=0), 6)
    assert all(len(b) == 4 for b in batches)


def test_collate_drops_none():
    img = torch.zeros(3, 2, 2, dtype=torch.uint8)
    images, targets = collate([None, (img, {"image_id": 1}), None, (img, {"image_id": 2})])
    assert len(images) == 2 and [t["image_id"] for t in targets] == [1, 2]
    assert collate([None]) == ([], [])


class _RandomItems(Dataset):
    """Items carry draws from the global RNGs, standing in for random augmentation."""

    def __init__(self, n):
        self.image_sizes = _sizes(n)

    def __len__(self):
        return len(self.image_sizes)

    def __getitem__(self, i):
        if i == 3:
            return None  # an unreadable image
        aug = (float(np.random.rand()), float(torch.rand(())))
        return torch.full((3, 2, 2), i, dtype=torch.uint8), {"index": i, "aug": aug}


def _run(loader, n):
    return [[(t["index"], t["aug"]) for t in targets] for _, targets in itertools.islice(iter(loader), n)]


def test_train_loader_reproducible_and_resumable():
    ds = _RandomItems(12)
    kw = dict(batch_size=2, seed=5, aspect_ratio_grouping=True)
    state = torch.get_rng_state()
    a = _run(build_train_loader(ds, num_workers=0, **kw), 10)
    assert torch.equal(state, torch.get_rng_state())  # the trainer's RNG is left alone
    assert a == _run(build_train_loader(ds, num_workers=0, **kw), 10)
    assert a[4:] == _run(build_train_loader(ds, num_workers=0, start_iter=4, **kw), 6)
    assert all(3 not in [i for i, _ in b] for b in a)  # None dropped
    assert len({aug for b in a for _, aug in b}) == sum(len(b) for b in a)  # fresh draws per sample


def test_train_loader_workers_match_main_process():
    ds = _RandomItems(8)
    kw = dict(batch_size=2, seed=1, aspect_ratio_grouping=False)
    assert _run(build_train_loader(ds, num_workers=1, **kw), 4) == _run(build_train_loader(ds, num_workers=0, **kw), 4)


def test_test_loader_order_and_shards():
    ds = _RandomItems(7)
    order = [t["index"] for _, ts in build_test_loader(ds, batch_size=2) for t in ts]
    assert order == [0, 1, 2, 4, 5, 6]
    shard = [t["index"] for _, ts in build_test_loader(ds, rank=1, world_size=3) for t in ts]
    assert shard == [1, 4]


def test_workers_start_after_the_main_process_used_opencv_threads():
    """A worker forked from a process whose OpenCV thread pool is running must not hang in its set-up (it did:
    cv2.setNumThreads(1) in the child waited for the parent's pool threads). In a subprocess, with a timeout."""
    script = (
        "import cv2, numpy as np, torch\n"
        "from detkit.data.loader import build_train_loader\n"
        "img = np.random.default_rng(0).integers(0, 255, (1500, 1500, 3), dtype=np.uint8)\n"
        "for _ in range(3): cv2.GaussianBlur(cv2.resize(img, (1200, 1200)), (15, 15), 0)\n"
        "class Items(torch.utils.data.Dataset):\n"
        "    image_sizes = [(2, 2)] * 4\n"
        "    def __len__(self): return 4\n"
        "    def __getitem__(self, i): return torch.zeros(3, 2, 2, dtype=torch.uint8), {'index': i}\n"
        "loader = build_train_loader(Items(), batch_size=2, seed=0, num_workers=1, aspect_ratio_grouping=False)\n"
        "batches = iter(loader)\n"
        "print(sorted(t['index'] for _ in range(2) for t in next(batches)[1]))\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[0, 1, 2, 3]"
