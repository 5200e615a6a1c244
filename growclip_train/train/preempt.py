"""Preemption: stop at the next optimizer step with a checkpoint, then exit with ``PREEMPTED_EXIT``.

Two ways to ask, both for SLURM: SIGTERM or SIGUSR1 to a rank process (SLURM's preemption signal,
``--signal``), or a file ``<run-dir>/STOP`` (the batch script creates it when its own shell gets
the signal; it works across nodes on a shared filesystem). A STOP older than this launch (left by a
killed job) is ignored, with a warning at start (``stale_stop``). Ranks agree with one all-reduce per
step, so they all stop after the same step and nobody waits in a collective for a missing peer.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from growclip_train import exit_codes
from growclip_train.log import log


PREEMPTED_EXIT = exit_codes.PREEMPTED   # launchers/slurm/*.sbatch requeue the job on this exit code
STOP_FILE = "STOP"
_signalled = False
LAUNCH_T0 = "GROWCLIP_LAUNCH_T0"   # when this launch began (set once, kept across the phase re-executions)
SLACK_S = 5.0                      # clock differences between nodes on a shared filesystem


def mark_launch() -> None:
    os.environ.setdefault(LAUNCH_T0, str(time.time()))


def _launched() -> float:
    return float(os.environ.get(LAUNCH_T0, "0"))


def stale_stop(run_dir: Path) -> Path | None:
    """The run's STOP file if it is older than this launch (so it is ignored), else None."""
    f = Path(run_dir) / STOP_FILE
    try:
        return f if f.stat().st_mtime < _launched() - SLACK_S else None
    except FileNotFoundError:
        return None


def _handler(signum, frame) -> None:
    global _signalled
    _signalled = True
    log.warning(f"got signal {signal.Signals(signum).name}: checkpointing after this step")


def install() -> None:
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, _handler)


def asked(run_dir: Path) -> bool:
    """This rank's view: signalled, or the stop file exists (agree with ``any_ranks`` before acting)."""
    if _signalled:
        return True
    try:
        return (Path(run_dir) / STOP_FILE).stat().st_mtime >= _launched() - SLACK_S
    except FileNotFoundError:
        return False

