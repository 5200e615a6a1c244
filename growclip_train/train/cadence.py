"""When to checkpoint, and which checkpoints to keep.

A phase checkpoints every ``train.checkpoint_every`` optimizer steps and/or every
``train.checkpoint_every_minutes`` of wall time (the default for every preset: a kill never costs
more than that), and at its end. After each verified save the oldest checkpoints beyond
``train.keep_checkpoints`` are deleted, never the one ``latest`` names: disk use stays bounded, and
each phase's final checkpoint (the last one it writes) is kept.
"""
from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

TAG = re.compile(r"^global_step(\d+)$")


class Cadence:
    """``due(step)``: this rank's view of whether a checkpoint is due (ranks agree before saving:
    their clocks differ). ``saved()`` restarts the clock."""

    def __init__(self, every_steps: int, every_minutes: float, clock=time.monotonic):
        self.every_steps, self.every_s, self.clock = every_steps, every_minutes * 60, clock
        self.last = clock()

    def due(self, step: int) -> bool:
        by_steps = bool(self.every_steps) and step % self.every_steps == 0
        by_time = self.every_s > 0 and self.clock() - self.last >= self.every_s
        return by_steps or by_time

    def saved(self) -> None:
        self.last = self.clock()


def step_tags(ckpt_dir: Path) -> list[str]:
    """Checkpoint folders of a phase (``global_step<N>``), oldest first."""
    tags = [d.name for d in Path(ckpt_dir).glob("global_step*") if d.is_dir() and TAG.match(d.name)]
    return sorted(tags, key=lambda t: int(TAG.match(t).group(1)))


def retain(ckpt_dir: Path, keep: int, latest: str) -> list[str]:
    """Delete all but the ``keep`` newest checkpoints (and ``latest``) with their universal
    conversions; returns the deleted tags. ``keep`` = 0 keeps everything."""
    if keep <= 0:
        return []
    tags = step_tags(ckpt_dir)
    doomed = [t for t in tags[:-keep] if t != latest]
    for t in doomed:
        for d in (Path(ckpt_dir) / t, Path(ckpt_dir) / f"{t}_universal"):
            shutil.rmtree(d, ignore_errors=True)
    return doomed
