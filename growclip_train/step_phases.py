"""A growth step's phases: their order, the Table 5 component each belongs to, and what each trains and
costs. The one count behind ``growclip-ds plan``, ``plan --cluster``, benchmarks/cost.py and reproduce.py.

    for c in step_costs(cfg, t=2, prev=arch1, n_t=256):
        print(c.phase, c.samples, c.flops)          # supernet, sample, gas, final

Samples are what the trainer runs: whole optimizer steps of ``train.global_batch`` (train/schedule.py).
FLOPs per sample are the model's training FLOPs (3 x forward, what MFU counts), or with ``recompute``
what the hardware executes under gradient checkpointing. GAS scores encoder variants, not candidates
(space.variants): its cost is a whole-phase figure (``samples`` = 1).
"""
from __future__ import annotations

from dataclasses import dataclass

from growclip_ds.config import ArchConfig

from growclip_train.config import RunConfig
from growclip_ds.growth import space
from growclip_ds.model.flops import hardware_train_flops, image_flops, text_flops
from growclip_train.rundir import PIM1, PIM3
from growclip_train.train.schedule import plan_steps

ABLATIONS = (PIM1, "st", "gas", PIM3)   # Table 5's components (--ablate)
# the phases of a step t >= 2 in order, each with the Table 5 component that switches it off (--ablate);
# PIM@1 runs at the start of ``supernet`` and PIM@3 at the start of ``final`` (rundir.PIM1 / PIM3 records)
GROWTH_PHASES = ("supernet", "sample", "gas", "final")
COMPONENT = {"supernet": "st", "sample": "gas", "gas": "gas", "final": None}
SUPERNET_PHASES = ("supernet", "sample")          # the phases that train the supernet, in order
PAPER_SPLIT = {"supernet": 2, "sample": 2, "final": 26}   # the paper's 30 epochs over a growth step's phases


@dataclass(frozen=True)
class PhaseCost:
    phase: str
    arch: ArchConfig | None       # what it trains (sample: the supernet; final: None while the choice is open)
    samples: float
    flops_per_sample: float
    flops_range: tuple[float, float] | None = None   # final before GAS: cheapest and costliest candidate

    @property
    def flops(self) -> float:
        return self.samples * self.flops_per_sample


def growth_phases(ablate: set = frozenset(), candidate: int | None = None) -> list[str]:
    """The training phases a growth step runs (a given ``candidate`` needs no sampling or GAS)."""
    return [p for p in GROWTH_PHASES
            if COMPONENT[p] not in ablate and not (candidate is not None and p in ("sample", "gas"))]


def phases_before(ablate: set) -> tuple[str, ...]:
    """The phases of a step upstream of its first switched-off component: the same in a run with those
    ablations as in the full method's (benchmarks/reproduce.py copies them instead of training again)."""
    out = []
    for p, component in [(PIM1, PIM1)] + [(p, COMPONENT[p]) for p in GROWTH_PHASES[:-1]]:
        if component in ablate:
            break
        out.append(p)
    return tuple(out)


def split_epochs(epochs: float) -> list[str]:
    """Config overrides that give a step ``epochs`` passes in all, split as the paper splits 30."""
    total = sum(PAPER_SPLIT.values())
    return [f"train.epochs={epochs}"] + [f"growth.{p}_epochs={epochs * share / total:.6g}"
                                         for p, share in PAPER_SPLIT.items()]


def phase_samples(cfg: RunConfig, n_t: float, epochs: float | None) -> int:
    """Samples a phase of ``epochs`` passes over ``n_t`` samples trains: whole global batches (None: the
    step-1 rule, ``train.epochs`` or ``train.num_samples``)."""
    return plan_steps(cfg, int(n_t), epochs)[1] * cfg.train.global_batch


def gas_flops(prev: ArchConfig, cfg: RunConfig, images: int, texts: int = 0) -> float:
    """GAS's forward FLOPs: every encoder variant over the selection images (image side) or texts."""
    return float(sum(images * image_flops(c) if kind == "img" else texts * text_flops(c)
                     for kind, _, c in space.variants(prev, cfg.growth)))


def step_costs(cfg: RunConfig, t: int, prev: ArchConfig | None, n_t: float, chosen: ArchConfig | None = None,
               recompute: bool = False, gas_images: int = 0, gas_texts: int = 0,
               ablate: set = frozenset()) -> list[PhaseCost]:
    """Every phase of step ``t`` (data D^t of ``n_t`` samples) growing from ``prev``: step 1 trains
    ``cfg.arch``; later steps the supernet, sampled candidates, GAS and ``chosen`` (None: not chosen yet)."""
    fl = lambda a: float(hardware_train_flops(a, recompute))  # noqa: E731
    if t == 1:
        return [PhaseCost("train", cfg.arch, phase_samples(cfg, n_t, None), fl(cfg.arch))]
    g = cfg.growth
    sup, cands = space.supernet(prev, g), space.candidates(prev, g)
    each = [fl(c) for c in cands]
    planned = g.planned(t)   # growth.plan: a fixed net, no supernet phases and no search
    if planned is not None:
        ablate, chosen = set(ablate) | {"st"}, chosen or cands[planned]
    out = []
    for p in growth_phases(ablate, planned):
        if p == "gas":
            out.append(PhaseCost("gas", None, 1, gas_flops(prev, cfg, gas_images, gas_texts)))
            continue
        n = phase_samples(cfg, n_t, getattr(g, f"{p}_epochs"))
        if p == "supernet":
            out.append(PhaseCost(p, sup, n, fl(sup)))
        elif p == "sample":
            out.append(PhaseCost(p, sup, n, sum(each) / len(each)))   # one uniform draw per iteration
        else:
            out.append(PhaseCost(p, chosen, n, fl(chosen)) if chosen is not None else
                       PhaseCost(p, None, n, (min(each) + max(each)) / 2, (min(each), max(each))))
    return out
