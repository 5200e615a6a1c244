"""What one growth step runs: an ordered list of phases on the shared trainer (docs/method.md section 5).

Step 1: ``train`` (the step-1 architecture from scratch on D^1).
Step t >= 2: ``supernet`` (PIM from step t-1 into the supernet, train it), ``sample`` (one candidate
per iteration), ``gas`` (score all 64, choose), ``final`` (PIM into the choice, train it).

Each phase runs in a process of its own (the launcher re-executes itself between phases), starts
from a consolidated model on disk and ends with one: the hand-off between phases, steps, world
sizes and ZeRO stages always goes through full fp32 weights. A phase is done when its run-folder
record says so (``rundir``), so a re-run resumes at the first unfinished phase (and, inside it, at
the last DeepSpeed checkpoint). ``ablate`` switches components off as in the paper's Table 5:
``pim1``/``pim3``: plain inheritance (beta=1, gamma=0) instead of PIM; ``st``: no supernet
fine-tuning; ``gas``: a seeded random candidate instead of GAS (and no supernet sampling).
``candidate``: grow into this candidate index instead of running GAS (the paper's Table 9).

Other methods (baselines, TiC-CLIP's) use the same phases: ``nas`` runs growclip's with fresh
initial weights; the rest run one ``train`` phase built by methods.py (Patching adds ``patch``).
Each phase name maps to one function (``PHASES``).
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch

from growclip_ds import model_folder
from growclip_ds.config import ArchConfig
from growclip_train.config import RunConfig
from growclip_ds.data.manifest import Manifest
from growclip_ds.data.tokenizer import load_tokenizer
from growclip_ds.distributed import any_ranks, barrier, rank_world
from growclip_ds.errors import InputError
from growclip_ds.factory import build
from growclip_ds.growth import space
from growclip_ds.model.init import name_seed
from growclip_train import faults, methods
from growclip_train.accelerator import accelerator_device
from growclip_train.gas import run_gas
from growclip_train.growth_step import GrowthStep
from growclip_train.rundir import PIM3, RunDir, StepDir
from growclip_train.step_phases import growth_phases
from growclip_train.train import budget, checkpoint
from growclip_train.train.trainer import Phase, PhaseResult, run_phase


def _consolidate_fault() -> None:
    """Fault injection between a consolidated model's write and its rename (``GROWCLIP_FAULT=consolidate@R``)."""
    faults.hit("consolidate")


def phases_for(step: int, ablate: set, method: str = "growclip", candidate: int | None = None) -> list[str]:
    recipe = methods.get(method)
    if step == 1:
        return ["train"]
    if not recipe.grows:
        return ["train", "patch"] if recipe.patch else ["train"]
    return growth_phases(ablate, candidate)


def pending_phases(run: RunDir, step: int, ablate: set, method: str = "growclip",
                   candidate: int | None = None) -> list[str]:
    """Phases still to run; the last one (which writes the step's model and evaluation) is pending
    until the step is finished."""
    s, phases = run.step(step), phases_for(step, ablate, method, candidate)
    return [p for i, p in enumerate(phases)
            if not (s.phase(p).finished and (i < len(phases) - 1 or s.finished))]


@dataclass
class PhaseContext:
    """One invocation of one phase of step t: what every phase function gets."""

    cfg: RunConfig
    run: RunDir
    t: int
    recipe: methods.Recipe
    ablate: set
    candidate: int | None
    progress: bool
    stop_after: int | None
    t0: float

    @property
    def step(self) -> StepDir:
        return self.run.step(self.t)

    def growth(self) -> GrowthStep:
        return GrowthStep(self.cfg, self.t, self.run, self.ablate, fresh=self.recipe.init == methods.Init.NAS)

    def train(self, phase: Phase) -> PhaseResult:
        return run_phase(self.cfg, phase, self.run.path, self.progress, self.stop_after)

    def budget_and_span(self, phase: str) -> tuple[float | None, tuple | None]:
        """(FLOP budget, the part of the step's budget it covers) of a phase under ``train.match=flops``
        ((None, None): it trains its epochs). A growth phase gets its share of F_t, the final phase what
        the earlier phases left; the span is for ``growth.schedule=step`` (None: a schedule of its own)."""
        if self.cfg.train.match != "flops":
            return None, None
        total = budget.step_flops(self.cfg, Manifest.load(self.cfg.data.root).num_samples(self.t))
        if self.t == 1 or not self.recipe.grows:
            return total, None
        trained = [p for p in phases_for(self.t, self.ablate, self.recipe.name, self.candidate) if p != "gas"]
        before = trained[:trained.index(phase)]
        spent = sum(self.step.phase(p).read_done().get("train_flops", 0) for p in before)
        mine = total - spent if phase == "final" else budget.growth_shares(self.cfg, trained)[phase] * total
        span = (spent / total, (spent + mine) / total) if self.cfg.growth.schedule == "step" else None
        return mine, span

    def growth_phase(self, name: str, arch, init, **kw) -> Phase:
        """A training phase of a growth step, with its FLOP budget and schedule span where configured."""
        flops, span = self.budget_and_span(name)
        return Phase(name, self.t, arch, self.t, init, flops_budget=flops, schedule_span=span, **kw)

    def mark_done(self, name: str, res: PhaseResult | None = None, **record) -> None:
        self.step.phase(name).mark_done({**(res.cost(time.time() - self.t0) if res else
                                            {"wall_s": time.time() - self.t0}), **record})


def run_phase_of_step(cfg: RunConfig, step: int, run_dir, phase: str, ablate: set = frozenset(),
                      progress: bool = True, stop_after: int | None = None, method: str = "growclip",
                      candidate: int | None = None) -> PhaseResult:
    """Run one phase of one step of a method to its end (or to ``stop_after`` optimizer steps)."""
    if phase not in phases_for(step, ablate, method, candidate):
        raise InputError(f"--phase: unknown phase {phase!r}; step {step} of {method} has "
                         f"{phases_for(step, ablate, method, candidate)}")
    ctx = PhaseContext(cfg, RunDir(run_dir), step, methods.get(method), set(ablate), candidate, progress, stop_after,
                  time.time())
    ctx.step.write_config(cfg)
    return PHASES[phase](ctx)


def _train(ctx: PhaseContext) -> PhaseResult:
    """Step 1 of every method, and the one phase of a non-growing method at t >= 2."""
    cfg, t, recipe = ctx.cfg, ctx.t, ctx.recipe
    if t == 1:
        ph = Phase("train", 1, cfg.arch, data_steps=1, flops_budget=ctx.budget_and_span("train")[0])
    else:
        ph = methods.baseline_phase(cfg, recipe, t, ctx.run)
    res = ctx.train(ph)
    if res.stopped:
        return res
    patch_next = recipe.patch and t > 1
    if patch_next and rank_world()[0] == 0:   # the trained model is the patch phase's input
        model_folder.write_model(ctx.step.phase("train").path, checkpoint.consolidated_state_dict(res.ckpt_dir), ph.arch,
                                 before_publish=_consolidate_fault)
    ctx.mark_done("train", res)
    if not patch_next:
        finish_step(ctx.cfg, ctx.step, res.ckpt_dir, ph.arch, {"chosen_by": recipe.name} if t > 1 else None)
    return res


def _supernet_phase(ctx: PhaseContext, gs: GrowthStep, name: str, init: dict | None, **kw) -> PhaseResult:
    """``supernet`` and ``sample``: train the supernet, then write it as the phase's model."""
    res = ctx.train(ctx.growth_phase(name, gs.super_arch, init, **kw))
    if not res.stopped:
        if rank_world()[0] == 0:
            model_folder.write_model(ctx.step.phase(name).path, checkpoint.consolidated_state_dict(res.ckpt_dir),
                                     gs.super_arch, before_publish=_consolidate_fault)
        ctx.mark_done(name, res)
    return res


def _supernet(ctx: PhaseContext) -> PhaseResult:
    gs = ctx.growth()
    return _supernet_phase(ctx, gs, "supernet", gs.supernet_init(), epochs=ctx.cfg.growth.supernet_epochs,
                           warmup=gs.warmup)


def _sample(ctx: PhaseContext) -> PhaseResult:
    gs, g = ctx.growth(), ctx.cfg.growth
    return _supernet_phase(ctx, gs, "sample", gs.latest_supernet(), sampler=gs.sampler(g.check_every),
                           epochs=g.sample_epochs, warmup="inherited")


def _gas(ctx: PhaseContext) -> PhaseResult:
    from growclip_ds.eval.evaluate import selection_sets
    from growclip_ds.model import param_count

    gs, cfg = ctx.growth(), ctx.cfg
    sd, arch = model_folder.read_model(gs.latest_supernet_dir())
    model = build(sd, arch, accelerator_device())
    with torch.no_grad():
        idx, chosen = run_gas(model, gs.prev_arch, cfg.growth, selection_sets(cfg.data, arch.image_size),
                              load_tokenizer(cfg, arch), ctx.step, param_count(gs.prev_arch), gs.n_prev, gs.n_now,
                              ctx.progress)
    ctx.step.write_choice(chosen, "gas", idx)
    ctx.mark_done("gas", index=idx, device=str(next(model.parameters()).device))
    return PhaseResult("gas", stopped=False)


def _final(ctx: PhaseContext) -> PhaseResult:
    gs = ctx.growth()
    chosen = gs.choice() if ctx.step.has_choice else _fixed_choice(gs, ctx.candidate)
    init = None if gs.fresh else gs.grown_init(PIM3, gs.latest_supernet_dir(), gs.super_arch, chosen)
    res = ctx.train(ctx.growth_phase("final", chosen, init, epochs=ctx.cfg.growth.final_epochs, warmup=gs.warmup))
    if not res.stopped:
        how = ctx.step.read_choice()
        ctx.mark_done("final", res)
        finish_step(ctx.cfg, ctx.step, res.ckpt_dir, chosen, {"chosen_by": how.get("chosen_by"), "index": how.get("index")})
    return res


def _patch(ctx: PhaseContext) -> PhaseResult:
    state, how = methods.patch_step(ctx.cfg, ctx.t, ctx.run, ctx.progress)
    arch = model_folder.read_arch(ctx.step.phase("train").path)
    ctx.mark_done("patch", **how)
    finish_step(ctx.cfg, ctx.step, None, arch, {"chosen_by": "patching", "alpha": how["alpha"]}, state=state)
    return PhaseResult("patch", stopped=False)


PHASES = {"train": _train, "supernet": _supernet, "sample": _sample, "gas": _gas, "final": _final, "patch": _patch}


def _fixed_choice(gs: GrowthStep, candidate: int | None) -> ArchConfig:
    """No GAS: the given candidate (Table 9), or one drawn uniformly with a seed of (seed, t) (GAS
    ablated), written as the choice."""
    if candidate is None:
        idx, how = random.Random(name_seed(gs.cfg.train.seed, f"random-choice/t{gs.t}")).randrange(
            space.NUM_CANDIDATES), "random"
    else:
        idx, how = candidate, "fixed"
    arch = space.candidate(gs.prev_arch, gs.cfg.growth, idx)
    gs.dir.write_choice(arch, how, idx)
    return arch


def finish_step(cfg: RunConfig, step: StepDir, ckpt_dir, arch: ArchConfig, extra: dict | None = None,
                state: dict | None = None) -> dict:
    """Consolidate the phase's last checkpoint (or write ``state``) as the step's model and
    evaluate it on all ranks: the step is finished."""
    from growclip_train.step_eval import evaluator

    refused, t0 = "", time.time()
    if rank_world()[0] == 0:
        sd = state if state is not None else checkpoint.consolidated_state_dict(ckpt_dir)
        try:
            model_folder.write_model(step.path, sd, arch, extra,   # refuses a state holding NaN/inf
                                     before_publish=_consolidate_fault)
        except model_folder.NonFiniteError as e:
            refused = str(e)
    if any_ranks(bool(refused))[0]:
        why = refused or f"{step.path}: the model to consolidate holds NaN/inf (see rank 0)"
        raise model_folder.NonFiniteError(f"{why}; step not finished")
    barrier()
    t1 = time.time()
    sd, arch = model_folder.read_model(step.path)
    result = evaluator(cfg, arch)(sd)
    step.write_finish({"consolidate_s": t1 - t0, "eval_s": time.time() - t1})   # rank 0's times
    step.write_eval(result)
    return result
