"""Supernet training draws one candidate per iteration, identically on every rank (phase 2a).

The draw is a pure function of (seed, t, phase, iteration), so ranks agree without any
communication and a resumed run draws what the interrupted one would have. Every
``check_every`` iterations the ranks compare their draws with one small all-gather and abort,
naming the ranks and the iteration, if they differ: left alone, ranks running different subnets
make DeepSpeed ZeRO-3 die with a bare SIGABRT a step or two later.

Skipped layers: DeepSpeed gives the weights a sampled candidate does not use zero gradients
(not None), so the optimizer still applies momentum and decoupled weight decay to them. We keep
that behaviour (the same at ZeRO 0-3, and what resume reproduces); with AdamW an unused matrix
shrinks by lr*weight_decay per step while its moments are zero, with LAMB by lr per step.
tests/test_growth_pipeline.py checks the exact update.
"""
from __future__ import annotations

import os

from ..config import ArchConfig, GrowthConfig
from ..distributed import check_same, rank_world
from . import space

FAULT_ENV = "GROWCLIP_FAULT_SUBNET_RANK"  # fault injection: this rank draws a different candidate


def check_same_across_ranks(value: int, iteration: int, what: str = "subnet candidate") -> None:
    check_same(value, what, f"iteration {iteration}")


class SubnetSampler:
    def __init__(self, prev: ArchConfig, growth: GrowthConfig, seed: int, step: int, phase: str, check_every: int):
        self.prev, self.growth, self.seed, self.step, self.phase = prev, growth, seed, step, phase
        self.check_every = check_every
        fault = os.environ.get(FAULT_ENV)
        self.fault = fault is not None and int(fault) == rank_world()[0] and rank_world()[1] > 1

    def index(self, iteration: int) -> int:
        idx = space.sample_index(self.seed, self.step, self.phase, iteration)
        return (idx + 1) % space.NUM_CANDIDATES if self.fault else idx

    def arch_at(self, iteration: int) -> ArchConfig:
        """The candidate of an iteration, without the cross-rank check (for planning a FLOP budget)."""
        return space.candidate(self.prev, self.growth, space.sample_index(self.seed, self.step, self.phase, iteration))

    def __call__(self, iteration: int) -> ArchConfig:
        idx = self.index(iteration)
        if iteration % self.check_every == 0:
            check_same_across_ranks(idx, iteration)
        return space.candidate(self.prev, self.growth, idx)
