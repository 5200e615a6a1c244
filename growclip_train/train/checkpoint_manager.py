"""The checkpoints of one phase, as the trainer sees them: which one to resume, at what world size it was
saved, when the next one is due, and saving it (the mechanics are checkpoint.py's, cadence.py's and
universal.py's). As torchtitan's CheckpointManager: the trainer asks, this decides.

    ckpt = CheckpointManager(phase_dir / "checkpoints", cfg.train, world)
    ckpt.pick()                      # before the engine: rank 0 verifies, every rank gets its choice
    meta = ckpt.load(engine)         # None when the phase starts fresh
    if ckpt.due(step): ckpt.save(engine, step, meta)
"""
from __future__ import annotations

from pathlib import Path

import torch

from growclip_ds.distributed import rank_world
from growclip_train.train import checkpoint, universal
from growclip_train.train.cadence import Cadence


class CheckpointManager:
    def __init__(self, ckpt_dir: Path, train, world: int):
        self.dir, self.train, self.world = Path(ckpt_dir), train, world
        self.tag: str | None = None          # the checkpoint to resume (None: start fresh)
        self.saved_world = world
        self.resized = False                 # saved at another world size under ZeRO: load a universal conversion
        self.last_saved = -1                 # the optimizer step of the newest checkpoint of this phase
        self.cadence = Cadence(train.checkpoint_every, train.checkpoint_every_minutes)

    def pick(self) -> str | None:
        """The newest checkpoint that verifies, chosen on rank 0 (which reports and sets aside refused ones)
        and broadcast; a refusal of every checkpoint raises CheckpointError on every rank."""
        choice = [None, None]
        if rank_world()[0] == 0:
            try:
                choice[0] = checkpoint.pick_tag(self.dir)
            except checkpoint.CheckpointError as e:
                choice[1] = str(e)
        if self.world > 1:
            torch.distributed.broadcast_object_list(choice, src=0)
        if choice[1]:
            raise checkpoint.CheckpointError(choice[1])
        self.tag = choice[0]
        if self.tag:
            self.saved_world = universal.saved_world(checkpoint.read_meta(self.dir / self.tag))
        self.resized = self.saved_world != self.world and self.train.zero_stage > 0
        return self.tag

    def load(self, engine) -> dict | None:
        """Load the picked checkpoint into ``engine``; its metadata, or None when there is none."""
        meta = checkpoint.resume(engine, self.dir, self.tag, universal=self.resized)
        self.last_saved = meta.get("global_step", 0) if meta else -1
        return meta

    def start_clock(self) -> None:
        """Time-based checkpoints count from here (training starts)."""
        self.cadence.saved()

    def due(self, step: int) -> bool:
        """This rank's view (ranks agree before saving: their clocks differ)."""
        return self.cadence.due(step)

    def save(self, engine, step: int, meta: dict) -> None:
        checkpoint.save(engine, self.dir, step, meta, keep=self.train.keep_checkpoints)
        self.cadence.saved()
        self.last_saved = step

    def latest(self) -> str | None:
        return checkpoint.latest_tag(self.dir)
