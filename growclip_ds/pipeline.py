"""What one growth step runs: an ordered list of phases on the shared trainer (GROWCLIP.md section 5).

Step 1: ``train`` (the step-1 architecture from scratch on D^1).
Step t >= 2: ``supernet`` (PIM from step t-1 into the supernet, train it), ``sample`` (one candidate
per iteration), ``gas`` (score all 64, choose), ``final`` (PIM into the choice, train it).

Each phase runs in a process of its own (the launcher re-executes itself between phases), starts
from a consolidated model on disk and ends with one: the hand-off between phases, steps, world
sizes and ZeRO stages always goes through full fp32 weights. A phase is done when its
``done.json`` exists, so a re-run resumes at the first unfinished phase (and, inside it, at the last
DeepSpeed checkpoint). ``ablate`` switches components off as in the paper's Table 5:
``pim1``/``pim3``: plain inheritance (beta=1, gamma=0) instead of PIM; ``st``: no supernet
fine-tuning; ``gas``: a seeded random candidate instead of GAS (and no supernet sampling).
``candidate``: grow into this candidate index instead of running GAS (the paper's Table 9).

Other methods (baselines, TiC-CLIP's) use the same phases: ``nas`` runs growclip's with fresh
initial weights; the rest run one ``train`` phase built by methods.py (Patching adds ``patch``).
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from .config import ArchConfig, RunConfig
from .data.manifest import Manifest
from . import methods
from .distributed import accelerator_device, barrier, rank_world
from .growth import space
from .growth.gas import run_gas
from .growth.kept import describe as describe_kept, measure_kept
from .growth.pim import pim
from .growth.preserve import preserve
from .model import param_count
from .model.init import name_seed
from .train import checkpoint
from .data.tokenizer import load_tokenizer
from .factory import build
from .train.loop import Phase, finish_step, run_phase

ABLATIONS = ("pim1", "st", "gas", "pim3")


def phases_for(step: int, ablate: set, method: str = "growclip", candidate: int | None = None) -> list[str]:
    recipe = methods.get(method)
    if step == 1:
        return ["train"]
    if recipe.init not in ("grow", "nas"):
        return ["train", "patch"] if recipe.patch else ["train"]
    out = [] if "st" in ablate else ["supernet"]
    out += [] if "gas" in ablate or candidate is not None else ["sample", "gas"]
    return out + ["final"]


def step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / f"step{step}"


def step_finished(run_dir: Path, step: int) -> bool:
    return (step_dir(run_dir, step) / "eval.json").exists()


def is_done(run_dir: Path, step: int, phase: str) -> bool:
    return (step_dir(run_dir, step) / phase / "done.json").exists()


def pending_phases(run_dir: Path, step: int, ablate: set, method: str = "growclip",
                   candidate: int | None = None) -> list[str]:
    """Phases still to run; the last one (which writes the step's model and eval.json) is pending
    until eval.json exists."""
    phases = phases_for(step, ablate, method, candidate)
    return [p for i, p in enumerate(phases)
            if not (is_done(run_dir, step, p) and (i < len(phases) - 1 or step_finished(run_dir, step)))]


def _mark_done(run_dir: Path, step: int, phase: str, info: dict) -> None:
    if rank_world()[0] == 0:
        checkpoint.atomic_write_text(step_dir(run_dir, step) / phase / "done.json", json.dumps(info, indent=1))
    barrier()


def _shared_init(path: Path, make) -> dict:
    """Rank 0 computes a starting state dict (PIM) and saves it; every rank loads the same file."""
    if rank_world()[0] == 0 and not path.exists():
        sd, arch = make()
        checkpoint.write_model(path.parent, sd, arch, {"role": "initial weights"}, name=path.name)
    barrier()
    return load_file(str(path))


class GrowthStep:
    """The inputs of growth step t >= 2, read from the run folder and the manifest."""

    def __init__(self, cfg: RunConfig, step: int, run_dir: Path, ablate: set, fresh: bool = False):
        self.cfg, self.t, self.run_dir, self.ablate, self.fresh = cfg, step, Path(run_dir), ablate, fresh
        self.dir = step_dir(run_dir, step)
        self.prev_dir = step_dir(run_dir, step - 1)
        self.prev_arch = checkpoint.read_arch(self.prev_dir)
        self.super_arch = space.supernet(self.prev_arch, cfg.growth)
        m = Manifest.load(cfg.data.root)
        self.n_prev, self.n_now = m.num_samples(step - 1), m.num_samples(step)

    @property
    def warmup(self) -> str:
        """Phases that start from inherited weights re-warm up briefly; NAS's fresh ones fully."""
        return "scratch" if self.fresh else "inherited"

    def pim_seed(self, tag: str) -> int:
        return name_seed(self.cfg.train.seed, f"pim/t{self.t}/{tag}") % (2 ** 31)

    def inheritance(self, which: str) -> dict:
        """How PIM@1 / PIM@3 inherits: the configured mode, or plain inheritance when ablated."""
        g = self.cfg.growth
        if which in self.ablate:
            return {"inherit": "plain", "beta": 1.0, "gamma": 0.0}
        if g.inherit == "preserve":
            return {"inherit": "preserve", "gamma": g.preserve_gamma}
        return {"inherit": "pim", "beta": g.beta, "gamma": g.gamma, "scope": g.pim_scope}

    def _grow(self, src_dir: Path, src_arch: ArchConfig, dst: ArchConfig, which: str):
        sd, _ = checkpoint.read_model(src_dir)
        how, seed = self.inheritance(which), self.pim_seed(which)
        if how["inherit"] == "preserve":
            return preserve(sd, src_arch, dst, seed, how["gamma"]), dst
        g = self.cfg.growth
        return pim(sd, src_arch, dst, how["beta"], how["gamma"], seed, g.copy_logit_scale, g.pim_scope), dst

    def grown_init(self, which: str, src_dir: Path, src_arch: ArchConfig, dst: ArchConfig) -> dict:
        """PIM@1 / PIM@3's output, computed once by rank 0 and loaded by every rank; the first time,
        what it keeps of the source is measured and written to ``step<t>/<which>/done.json``."""
        folder = self.dir / which
        state = _shared_init(folder / "model.safetensors", lambda: self._grow(src_dir, src_arch, dst, which))
        flag = [(folder / "done.json").exists() if rank_world()[0] == 0 else None]
        if rank_world()[1] > 1:
            torch.distributed.broadcast_object_list(flag, src=0)
        if not flag[0]:
            t0 = time.time()
            old = build(checkpoint.read_model(src_dir)[0], src_arch, accelerator_device())
            old.set_arch(dst if which == "pim3" else src_arch)   # pim3: the choice as it was inside the supernet
            kept = measure_kept(old, build(state, dst, accelerator_device()), self.fixed_batch(), self.selection_sets(),
                                self.tokenizer())
            if rank_world()[0] == 0:
                print(f"[growclip_ds] step {self.t} {which} ({self.inheritance(which)['inherit']}): "
                      f"{describe_kept(kept)}", flush=True)
            _mark_done(self.run_dir, self.t, which, {**self.inheritance(which), "kept": kept,
                                                       "wall_s": time.time() - t0})
        return state

    def tokenizer(self):
        return load_tokenizer(self.cfg, self.super_arch)

    def selection_sets(self):
        from .eval.evaluate import selection_sets

        return selection_sets(self.cfg.data, self.super_arch.image_size)

    def fixed_batch(self) -> dict:
        """The first min(global batch, 256) samples of step t's new data in shard order (training data
        of this step that the step t-1 model has not seen): what growth is scored on."""
        from .data.loader import first_samples

        m = Manifest.load(self.cfg.data.root)
        return first_samples([e.path for e in m.shards([self.t])], min(self.cfg.train.global_batch, 256),
                             self.super_arch.image_size, self.tokenizer(), exclude=m.holdout)

    def supernet_init(self) -> dict | None:
        """PIM@1: the step t-1 model grown into the supernet (NAS: none, a fresh init)."""
        if self.fresh:
            return None
        return self.grown_init("pim1", self.prev_dir, self.prev_arch, self.super_arch)

    def latest_supernet_dir(self) -> Path:
        """The most trained supernet so far: after sampling, after fine-tuning, or PIM@1's output."""
        for phase in ("sample", "supernet"):
            if is_done(self.run_dir, self.t, phase):
                return self.dir / phase
        if self.fresh:
            raise RuntimeError(f"{self.dir}: NAS has no trained supernet yet; run its supernet phase first")
        self.supernet_init()
        return self.dir / "pim1"

    def latest_supernet(self) -> dict:
        return checkpoint.read_model(self.latest_supernet_dir())[0]

    def sampler(self, check_every: int):
        from .growth.sampling import SubnetSampler

        return SubnetSampler(self.prev_arch, self.cfg.growth, self.cfg.train.seed, self.t, "sample", check_every)

    def choice(self) -> ArchConfig:
        d = json.loads((self.dir / "arch.json").read_text())
        return ArchConfig.from_dict({k: v for k, v in d.items() if k in ArchConfig.__dataclass_fields__})


def run_phase_of_step(cfg: RunConfig, step: int, run_dir: Path, phase: str, ablate: set = frozenset(),
                      progress: bool = True, stop_after: int | None = None, method: str = "growclip",
                      candidate: int | None = None) -> dict:
    """Run one phase of one step of a method to its end (or to ``stop_after`` optimizer steps)."""
    run_dir = Path(run_dir)
    d = step_dir(run_dir, step)
    t0 = time.time()
    if rank_world()[0] == 0:
        d.mkdir(parents=True, exist_ok=True)
        checkpoint.atomic_write_text(d / "config.json", json.dumps(cfg.to_dict(), indent=1))
    if step == 1:
        res = run_phase(cfg, Phase("train", 1, cfg.arch, data_steps=1), run_dir, progress, stop_after)
        if not res["stopped"]:
            _mark_done(run_dir, step, phase, _cost(res, t0))
            finish_step(cfg, run_dir, 1, Path(res["ckpt_dir"]), cfg.arch)
        return res
    recipe = methods.get(method)
    if recipe.init not in ("grow", "nas"):
        return _run_baseline(cfg, recipe, step, run_dir, phase, progress, stop_after, t0)
    gs = GrowthStep(cfg, step, run_dir, ablate, fresh=recipe.init == "nas")
    g = cfg.growth
    if phase == "supernet":
        res = run_phase(cfg, Phase("supernet", step, gs.super_arch, step, gs.supernet_init(), epochs=g.supernet_epochs,
                                   warmup=gs.warmup), run_dir, progress, stop_after)
    elif phase == "sample":
        sampler = gs.sampler(g.check_every)
        res = run_phase(cfg, Phase("sample", step, gs.super_arch, step, gs.latest_supernet(), sampler=sampler,
                                   epochs=g.sample_epochs, warmup="inherited"), run_dir, progress, stop_after)
    elif phase == "gas":
        return _run_gas(cfg, gs, progress, t0)
    elif phase == "final":
        chosen = gs.choice() if (d / "arch.json").exists() else _fixed_choice(gs, candidate)
        init = None if gs.fresh else gs.grown_init("pim3", gs.latest_supernet_dir(), gs.super_arch, chosen)
        res = run_phase(cfg, Phase("final", step, chosen, step, init, epochs=g.final_epochs, warmup=gs.warmup),
                        run_dir, progress, stop_after)
        if not res["stopped"]:
            how = json.loads((d / "arch.json").read_text())
            _mark_done(run_dir, step, phase, _cost(res, t0))
            finish_step(cfg, run_dir, step, Path(res["ckpt_dir"]), chosen,
                        {"chosen_by": how.get("chosen_by"), "index": how.get("index")})
        return res
    else:
        raise ValueError(f"--phase: unknown phase {phase!r}; step {step} has {phases_for(step, ablate)}")
    if not res["stopped"]:
        if rank_world()[0] == 0:
            checkpoint.write_model(d / phase, checkpoint.consolidated_state_dict(Path(res["ckpt_dir"])), gs.super_arch)
        _mark_done(run_dir, step, phase, _cost(res, t0))
    return res


def _cost(res: dict, t0: float) -> dict:
    """What a training phase cost: wall seconds of this run of it; samples, analytic FLOPs, measured
    device-seconds (step time x ranks, summed over resumes) and samples per data source in all."""
    return {"wall_s": time.time() - t0, "steps": res["total_steps"], "samples_seen": res["samples_seen"],
            "train_flops": res["train_flops"], "device_s": res["device_s"],
            "samples_by_source": res.get("samples_by_source", {}),
            "nonfinite_steps": res.get("nonfinite_steps", 0), "bad_fraction": res.get("bad_fraction", 0.0)}


def _fixed_choice(gs: GrowthStep, candidate: int | None) -> ArchConfig:
    """No GAS: the given candidate (Table 9), or one drawn uniformly with a seed of (seed, t) (GAS
    ablated), written as the choice."""
    if candidate is None:
        idx, how = random.Random(name_seed(gs.cfg.train.seed, f"random-choice/t{gs.t}")).randrange(
            space.NUM_CANDIDATES), "random"
    else:
        idx, how = candidate, "fixed"
    arch = space.candidate(gs.prev_arch, gs.cfg.growth, idx)
    if rank_world()[0] == 0:
        checkpoint.atomic_write_text(gs.dir / "arch.json", json.dumps(
            {**arch.to_dict(), "params": param_count(arch), "chosen_by": how, "index": idx}, indent=1))
    barrier()
    return arch


def _run_baseline(cfg: RunConfig, recipe, step: int, run_dir: Path, phase: str, progress: bool,
                  stop_after: int | None, t0: float) -> dict:
    """The ``train`` phase of a non-growing method (and Patching's ``patch``)."""
    d = step_dir(run_dir, step)
    if phase == "patch":
        state, how = methods.patch_step(cfg, step, run_dir, progress)
        arch = checkpoint.read_arch(d / "train")
        _mark_done(run_dir, step, phase, {"wall_s": time.time() - t0, **how})
        finish_step(cfg, run_dir, step, None, arch, {"chosen_by": "patching", "alpha": how["alpha"]}, state=state)
        return {"phase": phase, "stopped": False}
    if phase != "train":
        raise ValueError(f"--phase: unknown phase {phase!r}; {recipe.name} has {phases_for(step, set(), recipe.name)}")
    ph = methods.baseline_phase(cfg, recipe, step, run_dir, _shared_init)
    res = run_phase(cfg, ph, run_dir, progress, stop_after)
    if not res["stopped"]:
        if recipe.patch and rank_world()[0] == 0:   # the trained model is the patch phase's input
            checkpoint.write_model(d / "train", checkpoint.consolidated_state_dict(Path(res["ckpt_dir"])), ph.arch)
        _mark_done(run_dir, step, phase, _cost(res, t0))
        if not recipe.patch:
            finish_step(cfg, run_dir, step, Path(res["ckpt_dir"]), ph.arch, {"chosen_by": recipe.name})
    return res


def _run_gas(cfg: RunConfig, gs: GrowthStep, progress: bool, t0: float) -> dict:
    from .eval.evaluate import selection_sets

    sd, arch = checkpoint.read_model(gs.latest_supernet_dir())
    model = build(sd, arch, accelerator_device())
    sets = selection_sets(cfg.data, arch.image_size)
    with torch.no_grad():
        idx, chosen = run_gas(model, gs.prev_arch, cfg.growth, sets, load_tokenizer(cfg, arch), gs.dir,
                              param_count(gs.prev_arch), gs.n_prev, gs.n_now, progress)
    if rank_world()[0] == 0:
        checkpoint.atomic_write_text(gs.dir / "arch.json", json.dumps(
            {**chosen.to_dict(), "params": param_count(chosen), "chosen_by": "gas", "index": idx}, indent=1))
    _mark_done(gs.run_dir, gs.t, "gas", {"wall_s": time.time() - t0, "index": idx})
    return {"phase": "gas", "stopped": False, "index": idx}
