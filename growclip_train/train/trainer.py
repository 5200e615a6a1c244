"""The one trainer every phase, baseline and method runs, configured by a ``Phase``.

A phase says which architecture to build, which weights to start from, which growth steps' data
to read (or a replay mixture of them), how many samples to train on, and, where a method needs it,
which sub-architecture each iteration uses (supernet training) or which frozen model to distil
from (LwF). Everything else (engine, data order, checkpoints, resume, logging, cost) is the
``Trainer``'s:

    result = Trainer(cfg, phase, run_dir).run()      # a PhaseResult; resumes from the last checkpoint
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from growclip_train import faults
from growclip_ds.config import ArchConfig, replace
from growclip_train.config import RunConfig
from growclip_ds.data.loader import EpochPlan, Liveness, make_loader
from growclip_ds.data.manifest import Manifest
from growclip_ds.data.mixture import Source
from growclip_ds.data.tokenizer import load_tokenizer
from growclip_ds.distributed import any_ranks, barrier, check_same, rank_world
from growclip_ds.errors import InputError
from growclip_ds.factory import build
from growclip_ds.loss import clip_loss, lwf_kl
from growclip_ds.model import GrowCLIP
from growclip_ds.model.flops import forward_flops, train_flops
from growclip_train.rundir import RunDir
from growclip_train.train import nonfinite, preempt
from growclip_train.train.budget import steps_for_flops
from growclip_train.train.checkpoint_manager import CheckpointManager
from growclip_train.train.engine import build_engine
from growclip_train.train.metrics import MetricsLogger
from growclip_train.train.schedule import plan_steps, warmup_for
from growclip_train.log import log


@dataclass
class Phase:
    name: str                                  # folder name under <run>/step<t>/
    growth_step: int
    arch: ArchConfig                           # architecture the model is built at
    data_steps: object                         # int t (D^t) or an explicit list of steps
    init_state: dict | None = None             # starting weights; None: fresh init from the seed
    sampler: Callable[[int], ArchConfig] | None = None   # iteration -> active sub-architecture
    epochs: float | None = None                # overrides train.epochs for this phase
    mixture: list[Source] | None = None        # replay mixture instead of plain ``data_steps``
    num_samples: int | None = None             # sample budget; overrides epochs
    flops_budget: float | None = None          # training-FLOP budget (train.match=flops); overrides both
    schedule_span: tuple | None = None         # (start, end) of the step's budget: one lr schedule per step
    warmup: str = "scratch"                    # "scratch" | "inherited" | "none": schedule.warmup_for
    teacher: tuple | None = None               # (state dict, arch) of a frozen model to distil from (LwF)
    distill_weight: float = 0.0


@dataclass
class TrainState:
    """What a checkpoint records of the phase so far, restored as saved on resume. The model and
    optimizer are DeepSpeed's; no random state is needed: data order, subnet draws and PIM are
    functions of (seed, step), and the model has no dropout."""

    step: int = 0
    samples_seen: int = 0
    train_flops: float = 0
    device_s: float = 0.0                      # step time x ranks, summed over resumes
    samples_by_source: list = field(default_factory=list)   # all ranks, up to this checkpoint
    data: dict = field(default_factory=dict)   # {"epoch", "raw_done": samples read per loader worker}

    @classmethod
    def from_meta(cls, meta: dict, n_sources: int) -> "TrainState":
        return cls(meta.get("global_step", 0), meta.get("samples_seen", 0), meta.get("train_flops", 0),
                   meta.get("device_s", 0.0), meta.get("samples_by_source", [0] * n_sources), meta.get("data_state", {}))

    def to_meta(self) -> dict:
        return {"global_step": self.step, "samples_seen": self.samples_seen, "train_flops": self.train_flops,
                "device_s": self.device_s, "samples_by_source": self.samples_by_source, "data_state": self.data}


@dataclass
class PhaseResult:
    """How a phase ended and what it cost (``cost`` is its phase record, ``rundir``)."""

    phase: str
    stopped: bool                              # a planned stop or a preemption: checkpointed, not finished
    ckpt_dir: Path | None = None
    total_steps: int = 0
    samples_seen: int = 0
    train_flops: float = 0
    device_s: float = 0.0
    losses: list = field(default_factory=list)
    preempted: bool = False
    nonfinite_steps: int = 0
    bad_fraction: float = 0.0
    samples_by_source: dict = field(default_factory=dict)
    device: str = ""                           # the engine's device
    setup_s: float = 0.0                       # data, engine build and resume, before the first step
    save_s: float = 0.0                        # checkpoint writes

    def cost(self, wall_s: float) -> dict:
        rec = asdict(self)
        for k in ("phase", "stopped", "ckpt_dir", "losses", "preempted", "total_steps"):
            rec.pop(k)
        return {"wall_s": wall_s, "steps": self.total_steps, **rec}


class Trainer:
    """One phase on one DeepSpeed engine, from its last checkpoint to its end (or a stop)."""

    def __init__(self, cfg: RunConfig, phase: Phase, run_dir, progress: bool = True, stop_after: int | None = None):
        self.cfg, self.phase, self.progress, self.stop_after = cfg, phase, progress, stop_after
        self.rank, self.world = rank_world()
        self.run_dir = RunDir(run_dir)
        self.dir = self.run_dir.step(phase.growth_step).phase(phase.name)
        self.ckpt_dir = self.dir.checkpoints
        self.losses: list[float] = []
        self.skipped = {"bad": 0, "raw": 0}   # undecodable samples and samples read, this rank, since (re)start

    # ------------------------------------------------------------------ setup
    def setup_data(self) -> None:
        cfg, phase = self.cfg, self.phase
        self.manifest = m = Manifest.load(cfg.data.root)
        m.check_files()
        self.shards = [e.path for e in m.shards(phase.data_steps)]
        if not self.shards:
            raise InputError(f"{cfg.data.root}: the manifest has no shards for steps {phase.data_steps}")
        self.n_samples, self.sources = m.num_samples(phase.data_steps), []
        if phase.mixture and (len(phase.mixture) > 1 or phase.mixture[0].keep < 1):
            self.sources, self.n_samples = mixture_sources(m, phase.mixture)
        self.tok = load_tokenizer(cfg, phase.arch)
        self.accum = cfg.train.grad_accum(self.world)
        self.teacher_flops = forward_flops(phase.teacher[1]) if phase.teacher is not None else 0   # LwF's frozen model
        self.per_epoch, self.total = plan_steps(cfg, self.n_samples, phase.epochs, phase.num_samples)
        if phase.flops_budget is not None:
            self.total = steps_for_flops(phase.flops_budget, cfg.train.global_batch, self.flops_of_step)

    def flops_per_sample(self, arch) -> float:
        """Training FLOPs of one sample on ``arch`` (with LwF's frozen teacher's forward): the one formula."""
        return train_flops(arch) + self.teacher_flops

    def flops_of_step(self, iteration: int) -> float:
        """Per-sample training FLOPs of an iteration's architecture (a sampled candidate or the phase's)."""
        arch_at = getattr(self.phase.sampler, "arch_at", None)
        return self.flops_per_sample(arch_at(iteration) if arch_at else self.phase.arch)

    def setup_engine(self) -> None:
        t, phase = self.cfg.train, self.phase
        model = GrowCLIP(phase.arch, seed=t.seed)
        if phase.init_state is not None:
            model.load_state_dict(phase.init_state, strict=True)
        model.set_grad_checkpointing(t.grad_checkpointing)
        self.ckpt = CheckpointManager(self.ckpt_dir, t, self.world)
        self.ckpt.pick()   # ckpt.resized: ZeRO partitions of another world size, loaded by a universal conversion
        warm = replace(t, warmup_steps=warmup_for(t, phase.warmup, self.total))
        self.engine, _, self.sched = build_engine(model, warm, self.world, self.total, self.dir.path,
                                                  universal=self.ckpt.resized, span=phase.schedule_span)
        self.teacher = None
        if phase.teacher is not None:
            self.teacher = build(*phase.teacher, device=self.engine.device).eval().requires_grad_(False)
        if self.ckpt.resized and self.rank == 0:
            log.info(f"resuming {self.ckpt_dir / self.ckpt.tag} (world size {self.ckpt.saved_world}) at world size "
                     f"{self.world}; the rest of this epoch reads freshly seeded per-rank streams")

    def resume(self) -> None:
        meta = self.ckpt.load(self.engine) or {}
        self.state = TrainState.from_meta(meta, max(1, len(self.sources)))
        if self.ckpt.resized:
            self.state.data = {}
        check_same(self.state.step, "resumed optimizer step", f"the start of {self.dir.path}")
        self.stream_tag = f"resized{self.state.step}" if self.ckpt.resized else ""
        self.local_counts = torch.zeros(len(self.state.samples_by_source), dtype=torch.long)  # this rank, since

    def start_books(self) -> None:
        """Progress and metrics, checkpoint clock, non-finite guard, data liveness."""
        t, data = self.cfg.train, self.cfg.data
        self.log = MetricsLogger(self.dir.path, self.rank, self.total, self.state.step, enabled=self.progress,
                                 desc=f"step{self.phase.growth_step}/{self.phase.name}", log_every=t.log_every,
                                 monitor=self.engine.monitor)
        self.ckpt.start_clock()
        self.guard = nonfinite.Guard(t.max_nonfinite, str(self.dir.path), latest=self.ckpt.latest)
        self.liveness = Liveness(data.max_bad_in_row, data.max_idle_minutes * 60)

    # ------------------------------------------------------------------ the loop
    def run(self) -> PhaseResult:
        t0, self.save_s = time.time(), 0.0
        self.setup_data()
        self.setup_engine()
        self.resume()
        self.setup_s = time.time() - t0
        self.start_books()
        s = self.state
        if self.stop_after == 0 and s.step == 0:   # a planned stop before training: checkpoint the initial weights
            self.save({"epoch": 0, "raw_done": []})
            return self.result(stopped=True)
        while s.step < self.total:
            stop = self.run_epoch(s.step // self.per_epoch)
            if stop is not None:
                return stop
        if self.ckpt.last_saved != self.total:
            self.save({"epoch": (self.total - 1) // self.per_epoch, "raw_done": []})
        self.log.close()
        bad_fraction = skipped_fraction(self.skipped, self.cfg.data.warn_bad_fraction, str(self.dir.path))
        barrier()
        by_source = {src.label(): n for src, n in zip(self.phase.mixture or [], self.samples_by_source())}
        return self.result(stopped=False, bad_fraction=bad_fraction, samples_by_source=by_source)

    def run_epoch(self, epoch: int) -> PhaseResult | None:
        """The steps of one epoch from where the state is; a PhaseResult if the phase stops here."""
        s, d = self.state, self.cfg.data
        resume_state = s.data if s.data.get("epoch") == epoch else {}
        raw_done = list(resume_state.get("raw_done", []))
        if raw_done and len(raw_done) != max(1, d.num_workers):
            raise InputError(f"data.num_workers={d.num_workers} differs from the checkpoint's {len(raw_done)} "
                             "workers; resume with the same data.num_workers")
        in_epoch = s.step - epoch * self.per_epoch
        plan = EpochPlan(shards=self.shards, seed=self.cfg.train.seed, epoch=epoch, rank=self.rank, world=self.world,
                         micro_batch=self.cfg.train.micro_batch, batches=self.per_epoch * self.accum,
                         num_workers=d.num_workers, resample=d.resample, shuffle_buffer=d.shuffle_buffer,
                         start_batch=in_epoch * self.accum, raw_done=raw_done,
                         stream_tag=self.stream_tag if in_epoch else "", sources=self.sources,
                         exclude=self.manifest.holdout, liveness=self.liveness)
        self.raw_done, self.bad = raw_done or [0] * max(1, d.num_workers), {}
        it = iter(make_loader(plan, self.phase.arch.image_size, self.tok))
        while s.step < self.total and s.step // self.per_epoch == epoch:
            self.train_step(it)
            stop = self.after_step()
            if stop is not None:
                return stop
        s.data = {}
        self.skipped["bad"] += sum(b[0] for b in self.bad.values())
        self.skipped["raw"] += sum(self.raw_done) - sum(resume_state.get("raw_done", []))
        return None

    def train_step(self, it) -> None:
        """One optimizer step: ``accum`` micro-batches on the active architecture, then the books."""
        s, t, phase = self.state, self.cfg.train, self.phase
        extra, active = {}, phase.arch
        if phase.sampler is not None:
            active = phase.sampler(s.step)
            self.engine.module.set_arch(active)
            if hasattr(phase.sampler, "index"):
                extra["subnet"] = phase.sampler.index(s.step)
        t_wait, loss_sum, t0 = 0.0, 0.0, time.perf_counter()
        for _ in range(self.accum):
            tw = time.perf_counter()
            batch = next(it)
            t_wait += time.perf_counter() - tw
            loss_sum += self.micro_step(batch)
        s.step += 1
        s.samples_seen += t.global_batch
        s.train_flops += t.global_batch * self.flops_per_sample(active)
        s.device_s += (time.perf_counter() - t0) * self.world
        self.loss = loss_sum / self.accum
        self.losses.append(self.loss)
        self.log.step(s.step, loss=self.loss, lr=self.sched.get_last_lr()[0], step_time=time.perf_counter() - t0,
                      wait_time=t_wait, samples=t.global_batch, samples_seen=s.samples_seen,
                      bad_samples=sum(b[0] for b in self.bad.values()),
                      bad_shards=sum(b[1] for b in self.bad.values()), **extra)

    def micro_step(self, batch: dict) -> float:
        self.raw_done[batch["role"]] = batch["raw_done"]
        self.bad[batch["role"]] = (batch["bad_samples"], batch["bad_shards"])
        img, txt, scale = self.engine(batch["images"], batch["tokens"])
        loss = clip_loss(img, txt, scale)
        if self.teacher is not None:
            with torch.no_grad():
                old = self.teacher(batch["images"].to(self.engine.device), batch["tokens"].to(self.engine.device))
            loss = loss + self.phase.distill_weight * lwf_kl(img, txt, scale, *old)
        self.local_counts += torch.bincount(batch["sources"], minlength=len(self.local_counts))
        self.engine.backward(loss)
        self.engine.step()
        return loss.item()

    def after_step(self) -> PhaseResult | None:
        """Faults, the non-finite guard, the checkpoint cadence and stops, agreed by every rank."""
        step, total = self.state.step, self.total
        faults.hit("train", step)
        faults.delay()
        bad_loss, preempted, due = any_ranks(not math.isfinite(self.loss), preempt.asked(self.run_dir.path),
                                             self.ckpt.due(step))
        self.guard.after_step(step, bad_loss, self.engine.module, last_step=step == total)
        preempted = preempted and step < total
        if ((due and step < total) or step == self.stop_after or preempted) and not bad_loss:
            check_same(step + faults.skew("datastep"), "optimizer step", f"the checkpoint of {self.dir.path}")
            self.save({"epoch": (step - 1) // self.per_epoch, "raw_done": list(self.raw_done)})
        if (step == self.stop_after or preempted) and step < total:
            return self.result(stopped=True, preempted=preempted)
        return None

    # ------------------------------------------------------------------ books
    def samples_by_source(self) -> list[int]:
        """Samples drawn per mixture source, all ranks, in all (a collective)."""
        counts = self.local_counts.clone()
        if self.world > 1:
            torch.distributed.all_reduce(counts)
        return [a + b for a, b in zip(self.state.samples_by_source, counts.tolist())]

    def save(self, data_state: dict) -> None:
        s = self.state
        meta = {"arch": self.phase.arch.to_dict(), "growth_step": self.phase.growth_step, "phase": self.phase.name,
                "data_steps": self.phase.data_steps, "world_size": self.world,
                **dataclasses.replace(s, data=data_state, samples_by_source=self.samples_by_source()).to_meta()}
        t0 = time.time()
        self.ckpt.save(self.engine, s.step, meta)
        self.save_s += time.time() - t0

    def result(self, stopped: bool, **kw) -> PhaseResult:
        if stopped:
            self.log.close()
        s = self.state
        return PhaseResult(self.phase.name, stopped, self.ckpt_dir, self.total, s.samples_seen, s.train_flops, s.device_s,
                           self.losses, nonfinite_steps=self.guard.total, device=str(self.engine.device),
                           setup_s=self.setup_s, save_s=self.save_s, **kw)


def mixture_sources(manifest: Manifest, mixture: list[Source]) -> tuple[list, int]:
    """Loader sources [(shards, weight, keep)] of a mixture and the samples one pass over it holds."""
    sources = [([e.path for e in manifest.shards(list(src.steps))], src.weight, src.keep) for src in mixture]
    for src, (shards, _, _) in zip(mixture, sources):
        if not shards:
            raise InputError(f"{manifest.root}: the manifest has no shards for steps {list(src.steps)}")
    return sources, round(sum(src.keep * manifest.num_samples(list(src.steps)) for src in mixture))


def skipped_fraction(skipped: dict, warn_above: float, where: str) -> float:
    """Fraction of samples read that could not be decoded, over all ranks; warns above ``warn_above``."""
    t = torch.tensor([skipped["bad"], skipped["raw"]], dtype=torch.float64)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    frac = float(t[0] / t[1]) if t[1] else 0.0
    if frac > warn_above and rank_world()[0] == 0:
        log.warning(f"{where}: {int(t[0])} of {int(t[1])} samples read ({100 * frac:.1f}%) could "
                    f"not be decoded and were skipped (data.warn_bad_fraction={warn_above})")
    return frac


def run_phase(cfg: RunConfig, phase: Phase, run_dir, progress: bool = True, stop_after: int | None = None) -> PhaseResult:
    """Train one phase to its end (resuming from its last checkpoint). ``stop_after``: checkpoint and
    return once this many optimizer steps are done (a planned stop: preemption drills, resume tests)."""
    return Trainer(cfg, phase, run_dir, progress, stop_after).run()
