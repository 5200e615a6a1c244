"""Replay mixtures: which growth steps a phase reads, how often it draws from each, and which
samples of a step are in its replay buffer (TiC-CLIP's Cumulative methods, docs/method.md section 7).

A mixture is a list of sources. The next training sample comes from source s with probability
``weight_s`` (a seeded draw per sample, so the proportions hold at any shard size); inside a source,
samples stream from its shards as usual. A source's ``keep`` fraction makes it a fixed buffer: a
sample is in it when a seeded hash of its key falls below ``keep``, so the buffer is the same on
every rank, epoch and resume, and a smaller ``keep`` later gives a subset of the earlier buffer
(Cumulative-Exp "halves the old data" without re-drawing it). Samples outside the buffer are
skipped before decoding; their bytes are still read (at scale, write the buffer as its own shards).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    steps: tuple                  # growth steps whose shards this source reads
    weight: float                 # probability that a training sample is drawn from this source
    keep: float = 1.0             # fraction of those steps' samples in the buffer (1: all of them)

    def label(self) -> str:
        steps = f"step {self.steps[0]}" if len(self.steps) == 1 else f"steps {self.steps[0]}-{self.steps[-1]}"
        return steps if self.keep >= 1 else f"{steps} (buffer {self.keep:.3g})"


def in_buffer(key: str, keep: float, seed: int) -> bool:
    """Whether the sample ``key`` is in a buffer holding the fraction ``keep`` of its step."""
    if keep >= 1:
        return True
    h = int.from_bytes(hashlib.blake2b(f"{seed}/{key}".encode(), digest_size=8).digest(), "big")
    return h < keep * 2 ** 64


def replay_mixture(kind: str, t: int, sizes: dict, buffer: int = 0, new_weight: float = 0.0) -> list[Source]:
    """The sources of step t for a data ``kind``:

    - ``"all"``: D^t, every sample of steps 1..t equally likely;
    - ``"new"``: step t only;
    - ``"exp"`` / ``"equal"``: step t plus a buffer of ``buffer`` old samples (0: N of step t),
      split over the old steps halving with age (t-1 gets 1/2, t-2 1/4, ..., step 1 the rest) or
      equally. ``sizes[j]`` is the number of samples of step j. Sampling weights follow the sizes
      (new data : buffer of each old step), or give the new data ``new_weight`` and the buffer the rest.
    """
    if kind == "all":
        return [Source(tuple(range(1, t + 1)), 1.0)]
    if kind == "new" or t == 1:
        return [Source((t,), 1.0)]
    if kind not in ("exp", "equal"):
        raise ValueError(f"unknown data kind {kind!r}; one of all, new, exp, equal")
    d = buffer or sizes[t]
    old = list(range(1, t))
    if kind == "equal":
        share = {j: d / len(old) for j in old}
    else:
        share = {j: d / 2 ** (t - j) for j in old[1:]}
        share[1] = d - sum(share.values())
    keep = {j: min(1.0, share[j] / sizes[j]) for j in old}
    amount = {t: float(sizes[t]), **{j: keep[j] * sizes[j] for j in old}}
    if new_weight > 0:
        old_total = sum(amount[j] for j in old)
        weights = {t: new_weight, **{j: (1 - new_weight) * amount[j] / old_total for j in old}}
    else:
        weights = {j: a / sum(amount.values()) for j, a in amount.items()}
    return [Source((j,), weights[j], 1.0 if j == t else keep[j]) for j in old + [t]]
