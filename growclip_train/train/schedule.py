"""How long a phase trains and how it warms up: pure functions of the config and the data size."""
from __future__ import annotations

import math

from growclip_train.config import RunConfig

WARMUPS = ("scratch", "inherited", "none")


def plan_steps(cfg: RunConfig, num_samples: int, epochs: float | None,
               budget: int | None = None) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps) of a phase over ``num_samples`` samples,
    for ``epochs`` passes or a ``budget`` of samples."""
    gb = cfg.train.global_batch
    per_epoch = max(1, num_samples // gb)
    if budget is not None:
        return per_epoch, max(1, round(budget / gb))
    if cfg.train.num_samples > 0 and epochs is None:
        return per_epoch, max(1, cfg.train.num_samples // gb)
    return per_epoch, max(1, round((epochs if epochs is not None else cfg.train.epochs) * per_epoch))


def warmup_for(train, kind: str, total_steps: int) -> int:
    """Warm-up steps of a phase. "scratch" (fresh weights): ``train.warmup_steps``. "inherited" (the
    phases of a growth step, TWP, SAP: trained weights, fresh optimizer moments): a short re-warm-up
    of ``train.warmup_inherited`` x the phase's steps, at most ``warmup_steps``, so the first Adam/LAMB
    steps of fresh moments cannot throw away what was inherited, while a short phase is not spent
    warming up (at paper scale 4000 steps were half of phase 1). "none" (TiC-CLIP's warm-started
    methods, their finding): no warm-up."""
    if kind not in WARMUPS:
        raise ValueError(f"phase warm-up {kind!r}: must be one of {WARMUPS}")
    if kind == "scratch":
        return train.warmup_steps
    if kind == "inherited":
        return min(train.warmup_steps, math.ceil(train.warmup_inherited * total_steps))
    return 0
