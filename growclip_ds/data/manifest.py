"""The growth manifest: which shard belongs to which growth step, and N^t = |D^t|.

``manifest.parquet`` has one row per shard: ``shard`` (path relative to the manifest's folder),
``step`` (1..T), ``num_samples`` (training samples) and ``holdout`` (keys carved out of it into the
held-out evaluation sets, never trained on). D^t is every shard with step <= t, as in the paper's
random equal split of CC12M into 4 parts. ``growclip-ds data split`` (data/split.py) writes it for a
user's img2dataset folder, ``data make`` for the built-in corpus.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .shards import atomic_write_table

MANIFEST = "manifest.parquet"


@dataclass(frozen=True)
class ShardEntry:
    path: Path
    step: int
    num_samples: int
    holdout: tuple = ()


class Manifest:
    def __init__(self, root: Path, entries: list[ShardEntry]):
        self.root, self.entries = Path(root), entries

    @property
    def num_steps(self) -> int:
        return max(e.step for e in self.entries)

    def shards(self, steps) -> list[ShardEntry]:
        """Shards of the given steps (an int t means D^t = steps 1..t)."""
        steps = set(range(1, steps + 1)) if isinstance(steps, int) else set(steps)
        return [e for e in self.entries if e.step in steps]

    def num_samples(self, steps) -> int:
        return sum(e.num_samples for e in self.shards(steps))

    @property
    def holdout(self) -> frozenset:
        """Keys of the held-out evaluation samples: the loader never yields them."""
        return frozenset(k for e in self.entries for k in e.holdout)

    def check_files(self) -> None:
        missing = [e.path for e in self.entries if not e.path.exists()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} shard(s) named in {self.root / MANIFEST} are missing, "
                                    f"first: {missing[0]}. Restore them or rebuild the manifest "
                                    f"(growclip-ds data split).")

    @classmethod
    def load(cls, root) -> "Manifest":
        root = Path(root)
        path = root / MANIFEST
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: make the built-in data (growclip-ds data make "
                                    f"--root {root}) or split your shards (growclip-ds data split {root})")
        t = pq.read_table(path).to_pylist()
        return cls(root, [ShardEntry(root / r["shard"], int(r["step"]), int(r["num_samples"]),
                                     tuple(r.get("holdout") or ())) for r in t])

    def save(self) -> Path:
        # relative to the manifest's folder, ".." allowed: a derived manifest (benchmarks/headroom.py's D^t as
        # one step) points at shards it does not copy
        rows = [{"shard": os.path.relpath(e.path, self.root), "step": e.step, "num_samples": e.num_samples,
                 "holdout": list(e.holdout)} for e in self.entries]
        path = self.root / MANIFEST
        atomic_write_table(pa.Table.from_pylist(rows), path)
        return path
