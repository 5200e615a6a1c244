"""Preemption: stop at the next optimizer step with a checkpoint, then exit with ``PREEMPTED_EXIT``.

Two ways to ask, both for SLURM: SIGTERM or SIGUSR1 to a rank process (SLURM's preemption signal,
``--signal``), or a file ``<run-dir>/STOP`` (the batch script creates it when its own shell gets
the signal; it works across nodes on a shared filesystem). Ranks agree with one all-reduce per
step, so they all stop after the same step and nobody waits in a collective for a missing peer.
"""
from __future__ import annotations

import signal
from pathlib import Path

from ..distributed import any_rank

PREEMPTED_EXIT = 3          # launchers/slurm/*.sbatch requeue the job on this exit code
STOP_FILE = "STOP"
_signalled = False


def _handler(signum, frame) -> None:
    global _signalled
    _signalled = True
    print(f"[growclip_ds] got signal {signal.Signals(signum).name}: checkpointing after this step", flush=True)


def install() -> None:
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, _handler)


def asked(run_dir: Path) -> bool:
    """This rank's view: signalled, or the stop file exists (agree with ``any_ranks`` before acting)."""
    return _signalled or (Path(run_dir) / STOP_FILE).exists()


def requested(run_dir: Path) -> bool:
    """True on every rank once any rank was signalled or the stop file exists (collective)."""
    return any_rank(asked(run_dir))
