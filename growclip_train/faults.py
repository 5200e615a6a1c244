"""Fault injection for the reliability tests: kill this process with SIGKILL at a named point.

    GROWCLIP_FAULT="save@1:4"     # rank 1 dies inside the checkpoint save of step 4
    GROWCLIP_FAULT="train@0:3"    # rank 0 dies after optimizer step 3, before any save
    GROWCLIP_FAULT="consolidate@0" / "gas@1:2" (after its 2nd variant file)

    GROWCLIP_FAULT="datastep@1"   # rank 1 reports an optimizer step one ahead (ranks disagree)
    GROWCLIP_FAULT="stale@1"      # rank 1 trains with another lr (a stale config on its node)
    GROWCLIP_FAULT="nospace@1:4"  # rank 1's writes of the checkpoint of step 4 fail with ENOSPC
    GROWCLIP_FAULT_DELAY=0.4      # sleep 0.4 s after every optimizer step (time for a test's signal)

Kill points: train, save, consolidate, gas. Unset (the normal case), each call is a dict lookup.
"""
from __future__ import annotations

import errno
import os
import signal
import time
from growclip_train.log import log

ENV = "GROWCLIP_FAULT"


def _named(point: str, count: int | None = None) -> bool:
    """Whether ``GROWCLIP_FAULT`` names ``point`` on this rank (and, where it gives one, this ``count``)."""
    spec = os.environ.get(ENV, "")
    where, _, n = spec.partition(":")
    name, _, rank = where.partition("@")
    from growclip_ds.distributed import rank_world

    return bool(spec) and name == point and int(rank or 0) == rank_world()[0] and (not n or count == int(n))


def hit(point: str, count: int | None = None) -> None:
    """SIGKILL this process at ``point`` where the fault spec names it."""
    if not os.environ.get(ENV) or not _named(point, count):   # the normal case: one dict lookup
        return
    from growclip_ds.distributed import rank_world

    log.warning(f"fault injection: SIGKILL at {point}"
                f"{'' if count is None else ' ' + str(count)} on rank {rank_world()[0]}")
    os.kill(os.getpid(), signal.SIGKILL)


def skew(point: str) -> int:
    """1 on the rank named by ``GROWCLIP_FAULT="<point>@<rank>"``, else 0 (a value off by one)."""
    return int(_named(point))


def delay() -> None:
    if os.environ.get(f"{ENV}_DELAY"):
        time.sleep(float(os.environ[f"{ENV}_DELAY"]))


def disk_full(engine, count: int) -> None:
    """``nospace@R:N``: on rank R, make the checkpoint of step N fail inside DeepSpeed's file writes,
    where a full disk fails (after DeepSpeed's own barriers have begun, as a real ENOSPC would)."""
    if not _named("nospace", count):
        return
    ce = engine.checkpoint_engine
    real = ce.save

    def save(state_dict, path, *a, **k):
        if "optim_states" in str(path):
            raise OSError(errno.ENOSPC, f"No space left on device (injected): {path}")
        return real(state_dict, path, *a, **k)
    ce.save = save
