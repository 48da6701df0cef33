"""torch.distributed in one place: this process's rank and the world size, joining the process
group under torchrun, rank 0's value on every rank, barriers, reductions and leaving. Every
helper is a no-op (or the single-process answer) when no process group is initialised, so callers
need no branch of their own. Imports nothing of fastadv's."""

from __future__ import annotations

import os
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def _dist():
    import torch.distributed as dist

    return dist


def is_initialized() -> bool:
    """Whether this process belongs to an initialised process group."""
    dist = _dist()
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, the number of ranks): (0, 1) outside a process group."""
    if not is_initialized():
        return 0, 1
    dist = _dist()
    return dist.get_rank(), dist.get_world_size()


def launched_world_size() -> int:
    """The number of processes torchrun started (WORLD_SIZE; 1 when not under torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device: torch.device) -> tuple[int, torch.device]:
    """Under torchrun (WORLD_SIZE > 1): joins the process group (nccl on GPUs, gloo on CPUs),
    one GPU per local rank. Returns (rank, the device this rank uses)."""
    if launched_world_size() <= 1:
        return 0, device
    dist = _dist()
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), device


def shared(value: T) -> T:
    """Rank 0's value on every rank (a folder name with a time stamp, say)."""
    if not is_initialized():
        return value
    dist = _dist()
    box = [value if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_lists(values: list[T]) -> list[T]:
    """Every rank's list, concatenated in rank order (picklable items: file names, say)."""
    if not is_initialized():
        return values
    dist = _dist()
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, values)
    return [value for part in gathered for value in part]


def barrier() -> None:
    """Waits for every rank."""
    if is_initialized():
        _dist().barrier()


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """The sum (op="sum") or maximum (op="max") of `tensor` over ranks, on `tensor`'s device
    (reduced on the process group's device: the current GPU under nccl, the CPU under gloo)."""
    if not is_initialized():
        return tensor
    dist = _dist()
    ops: dict[str, Any] = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
    moved = tensor.to("cuda" if dist.get_backend() == "nccl" else "cpu", copy=True)
    dist.all_reduce(moved, op=ops[op])
    return moved.to(tensor.device)


def destroy() -> None:
    """Leaves the process group, if this process joined one."""
    if is_initialized():
        _dist().destroy_process_group()
