"""Rank helpers that work with or without a process group (a plain process is rank 0 of 1)."""
from __future__ import annotations

import torch
import torch.distributed as dist


class RankDisagreement(RuntimeError):
    """Ranks hold different values of something that must be identical (subnet, data step, ...)."""


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


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
