"""Tensor-parallel process-group set-up from the `torchrun` environment, and the checks every
layer runs before its first collective.

`torchrun` (single node or `--nnodes N`) exports RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT; `init_tensor_parallel()` turns them into a process group: NCCL when CUDA is present,
gloo on CPU. Every collective on the group is bounded by `timeout`, so a rank whose peer died gets
an error instead of waiting forever."""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT = timedelta(seconds=60)


@dataclass(frozen=True)
class TPGroup:
    """Where this process sits in its tensor-parallel group.

    group: the ProcessGroup the layers' collectives run on (None means the default group; with
    world == 1 no collective ever runs). device: where this rank keeps its shards."""
    rank: int
    world: int
    group: dist.ProcessGroup | None = None
    device: torch.device = torch.device("cpu")

    @staticmethod
    def single(device: torch.device | str = "cpu") -> "TPGroup":
        """The trivial group of one process: TP layers built with it run no collectives."""
        return TPGroup(0, 1, None, torch.device(device))


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    if value is None:
        raise RuntimeError(f"{name} is not set: launch with torchrun (or set RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)")
    try:
        return int(value)
    except ValueError:
        raise RuntimeError(f"{name}={value!r} is not an integer") from None


def init_tensor_parallel(backend: str | None = None, timeout: timedelta | float = DEFAULT_TIMEOUT) -> TPGroup:
    """Join (or reuse) the default process group described by the torchrun environment and return
    this rank's TPGroup spanning all ranks.

    backend: "nccl" | "gloo" | None (None: nccl when CUDA is available, else gloo).
    timeout: seconds or timedelta; bounds every collective, so a dead peer raises, never hangs."""
    if not isinstance(timeout, timedelta):
        timeout = timedelta(seconds=float(timeout))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"backend must be 'nccl', 'gloo' or None, got {backend!r}")
    if not dist.is_initialized():
        rank, world = _env_int("RANK"), _env_int("WORLD_SIZE")
        if not 0 <= rank < world:
            raise RuntimeError(f"RANK={rank} is outside WORLD_SIZE={world}")
        dist.init_process_group(backend=backend, rank=rank, world_size=world, timeout=timeout)
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return TPGroup(dist.get_rank(), dist.get_world_size(), None, device)


def check_group(rank: int, world: int, group: dist.ProcessGroup | None, what: str) -> None:
    """Raise ValueError unless (rank, world), what the shards were cut for, is where this process
    really sits in `group`. Runs before any collective, so a mismatch cannot deadlock peers."""
    if not isinstance(world, int) or world < 1:
        raise ValueError(f"{what}: world must be an int >= 1, got {world!r}")
    if not isinstance(rank, int) or not 0 <= rank < world:
        raise ValueError(f"{what}: rank must be an int in [0, {world}), got {rank!r}")
    if world == 1:
        return
    if not dist.is_initialized():
        raise RuntimeError(f"{what}: world={world} needs an initialized process group; call init_tensor_parallel() first")
    run_world, run_rank = dist.get_world_size(group), dist.get_rank(group)
    if run_world != world:
        raise ValueError(f"{what}: shards were cut for world size {world} but this run's process group has {run_world} ranks")
    if run_rank != rank:
        raise ValueError(f"{what}: this shard is for rank {rank} but this process is rank {run_rank} of the group")
