"""Multi-process training with PyTorch's own engine: `torchrun` sets RANK / WORLD_SIZE / LOCAL_RANK, we
join the process group (NCCL on GPUs, gloo on CPU) and wrap the model in DistributedDataParallel.

Without those variables everything here is a no-op and detkit runs in one process.
"""

import io
import os

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device_name: str) -> str:
    """Join the process group when started by torchrun. Returns the device to use ("cuda:<local rank>"
    for CUDA runs, else `device_name`)."""
    if not launched_by_torchrun() or dist.is_initialized():
        return device_name
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return f"cuda:{local_rank}" if use_cuda else "cpu"


def all_gather(obj) -> list:
    """Every process's `obj` in rank order ([obj] in a single process).

    `obj` is made of what checkpoints hold (tensors, numbers, strings, lists, tuples, dicts): it travels
    as `torch.save` bytes and is read back with `weights_only=True`, so no process unpickles code.
    """
    num = world_size()
    if num == 1:
        return [obj]
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    data = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8).to(device)
    size = torch.tensor([data.numel()], device=device)
    sizes = [torch.zeros_like(size) for _ in range(num)]
    dist.all_gather(sizes, size)
    longest = max(int(s) for s in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[: data.numel()] = data
    parts = [torch.empty_like(padded) for _ in range(num)]
    dist.all_gather(parts, padded)
    return [
        torch.load(io.BytesIO(part[: int(n)].cpu().numpy().tobytes()), weights_only=True)
        for part, n in zip(parts, sizes)
    ]


def any_process(flag: bool) -> bool:
    """True when `flag` is true in any process (one small all-reduce; `flag` itself in a single process)."""
    if world_size() == 1:
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()
