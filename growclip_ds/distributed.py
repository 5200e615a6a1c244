"""Rank helpers that work with or without a process group (a plain process is rank 0 of 1)."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

SHM_PREFIX = "deepspeed_allreduce_buffer"


def accelerator_env(env: dict) -> dict:
    """``env`` with DeepSpeed's accelerator decided: the CPU accelerator only on a machine without
    CUDA (an explicit DS_ACCELERATOR wins). The one place this is decided: the CLI's launches and
    the launcher's ranks both call it."""
    if "DS_ACCELERATOR" not in env and not torch.cuda.is_available():
        env["DS_ACCELERATOR"] = "cpu"
    return env


def accelerator_device() -> torch.device:
    """The device DeepSpeed's engine of this rank runs on ("cpu" with the CPU accelerator, "cuda:N"
    on a GPU): where evaluation, GAS and growth measurements run too."""
    from deepspeed.accelerator import get_accelerator

    return torch.device(get_accelerator().current_device_name())


class RankDisagreement(RuntimeError):
    """Ranks hold different values of something that must be identical (subnet, data step, ...)."""


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any rank (one all-reduce)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def any_ranks(*flags: bool) -> tuple[bool, ...]:
    """Each flag true on every rank if true on any rank: several agreements in one all-reduce."""
    if not (dist.is_available() and dist.is_initialized()):
        return tuple(bool(f) for f in flags)
    t = torch.tensor([int(bool(f)) for f in flags])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in t.tolist())


def check_same(value: int, what: str, where: str) -> None:
    """Abort with every rank's value unless all ranks hold the same ``value`` (one all-gather)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    mine = torch.tensor([value], dtype=torch.long)
    every = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine)
    vals = [int(v) for v in every]
    if len(set(vals)) > 1:
        by_rank = ", ".join(f"rank {r}: {v}" for r, v in enumerate(vals))
        raise RankDisagreement(f"ranks hold different {what}s at {where} ({by_rank}); "
                               "every rank must run the same seed, step, config and checkpoint")


def release_shm_buffer() -> None:
    """Unlink this rank's DeepSpeed shared-memory all-reduce buffer.

    On CPU with all ranks on one machine, DeepSpeed (0.19.8, ops/csrc/cpu/comm/shm.cpp) creates a
    /dev/shm buffer of ~68 MB per rank at init and never unlinks it: each job left world x 68 MB of
    RAM behind (measured here: 313 buffers, 21 GB, after a few hundred test launches, until the
    machine thrashed). Call it after the last collective that may use the buffer, then barrier
    before any rank starts a new process group under the same MASTER_PORT (a new generation
    re-creates the name; unlinking then would split the ranks' buffers)."""
    rank = os.environ.get("RANK", "0")
    name = f"{SHM_PREFIX}_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_{os.environ.get('MASTER_PORT', '')}_{rank}"
    Path("/dev/shm", name).unlink(missing_ok=True)
