"""Fault injection for the reliability tests: kill this process with SIGKILL at a named point.

    GROWCLIP_FAULT="save@1:4"     # rank 1 dies inside the checkpoint save of step 4
    GROWCLIP_FAULT="train@0:3"    # rank 0 dies after optimizer step 3, before any save
    GROWCLIP_FAULT="consolidate@0" / "gas@1:2" (after its 2nd variant file)

    GROWCLIP_FAULT="datastep@1"   # rank 1 reports an optimizer step one ahead (ranks disagree)

Kill points: train, save, consolidate, gas. Unset (the normal case), each call is a dict lookup.
"""
from __future__ import annotations

import os
import signal

ENV = "GROWCLIP_FAULT"


def hit(point: str, count: int | None = None) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    where, _, n = spec.partition(":")
    name, _, rank = where.partition("@")
    from .distributed import rank_world

    if name == point and int(rank or 0) == rank_world()[0] and (not n or count == int(n)):
        print(f"[growclip_ds] fault injection: SIGKILL at {point}"
              f"{'' if count is None else ' ' + str(count)} on rank {rank_world()[0]}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


def skew(point: str) -> int:
    """1 on the rank named by ``GROWCLIP_FAULT="<point>@<rank>"``, else 0 (a value off by one)."""
    spec = os.environ.get(ENV, "")
    name, _, rank = spec.partition(":")[0].partition("@")
    from .distributed import rank_world

    return int(name == point and int(rank or 0) == rank_world()[0])
