"""FLOP budgets: every method spends the same compute at each growth step (``train.match=flops``).

TiC-CLIP's framing, with the budget of step t set by the data: F_t = ``train.epochs`` x N^t x u, where
u (``train.flops_per_sample``, default: the analytic training FLOPs of one sample through the
configured step-1 architecture) is what training from scratch on D^t costs per pass. A fixed
architecture spends F_t as samples (a model twice as costly per sample sees half as many); GrowCLIP
splits it over its phases by the shares ``growth.supernet_epochs : sample_epochs : final_epochs``, and
its final phase gets what the earlier phases left, so the step as a whole lands on F_t to within one
optimizer step of the chosen net.

    F = step_flops(cfg, n_t)                          # F_t
    steps = steps_for_flops(F, gb, lambda i: train_flops(arch))
"""
from __future__ import annotations

from typing import Callable

from growclip_train.config import RunConfig
from growclip_ds.errors import InputError
from growclip_ds.model.flops import train_flops


def flops_unit(cfg: RunConfig) -> float:
    """u: the training FLOPs of one sample that budgets count in."""
    return cfg.train.flops_per_sample or float(train_flops(cfg.arch))


def step_flops(cfg: RunConfig, n_samples: int) -> float:
    """F_t for a step whose data D^t holds ``n_samples`` samples."""
    return cfg.train.epochs * n_samples * flops_unit(cfg)


def growth_shares(cfg: RunConfig, phases: list[str]) -> dict[str, float]:
    """The fraction of F_t each of GrowCLIP's training phases gets (of those the step runs)."""
    g = cfg.growth
    weight = {"supernet": g.supernet_epochs, "sample": g.sample_epochs, "final": g.final_epochs}
    total = sum(weight[p] for p in phases)
    return {p: weight[p] / total for p in phases}


def steps_for_flops(budget: float, global_batch: int, flops_of_step: Callable[[int], float]) -> int:
    """The number of optimizer steps whose summed FLOPs come closest to ``budget`` (at least 1);
    ``flops_of_step(i)`` is the per-sample training FLOPs of iteration i's architecture."""
    if budget <= 0:
        raise InputError(f"FLOP budget {budget:.3g}: must be > 0 (an earlier phase spent the step's budget; "
                         "give the final phase a larger share, growth.final_epochs)")
    spent, n = 0.0, 0
    while True:
        f = global_batch * flops_of_step(n)
        if n > 0 and spent + f / 2 > budget:   # one more step would overshoot by more than it undershoots now
            return n
        spent += f
        n += 1
