"""The one training function every phase, baseline and method runs, configured by a ``Phase``.

A phase says which architecture to build, which weights to start from, which growth steps' data
to read (or a replay mixture of them), how many samples to train on, and, where a method needs it,
which sub-architecture each iteration uses (supernet training) or which frozen model to distil
from (LwF). Everything else (engine, data order, checkpoints, resume, logging, cost) is shared.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..config import ArchConfig, RunConfig, replace
from .. import faults
from ..distributed import accelerator_device, any_ranks, barrier, check_same, rank_world
from ..data.loader import EpochPlan, Liveness, make_loader
from ..data.manifest import Manifest
from ..data.mixture import Source
from ..data.tokenizer import load_tokenizer
from ..loss import clip_loss, lwf_kl
from ..factory import build
from ..model import GrowCLIP
from ..model.flops import forward_flops, train_flops
from . import checkpoint, nonfinite, preempt
from .cadence import Cadence
from .engine import build_engine
from .metrics import MetricsLogger


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
    warmup: str = "scratch"                    # "scratch" | "inherited" | "none": see ``warmup_for``
    teacher: tuple | None = None               # (state dict, arch) of a frozen model to distil from (LwF)
    distill_weight: float = 0.0


def mixture_sources(manifest: Manifest, mixture: list[Source]) -> tuple[list, int]:
    """Loader sources [(shards, weight, keep)] of a mixture and the samples one pass over it holds."""
    sources = [([e.path for e in manifest.shards(list(src.steps))], src.weight, src.keep) for src in mixture]
    for src, (shards, _, _) in zip(mixture, sources):
        if not shards:
            raise ValueError(f"{manifest.root}: the manifest has no shards for steps {list(src.steps)}")
    return sources, round(sum(src.keep * manifest.num_samples(list(src.steps)) for src in mixture))


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


WARMUPS = ("scratch", "inherited", "none")


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


def run_phase(cfg: RunConfig, phase: Phase, run_dir: Path, progress: bool = True,
              stop_after: int | None = None) -> dict:
    """Train one phase to its end (resuming from its last checkpoint); returns its summary.

    ``stop_after``: checkpoint and return once this many optimizer steps are done (a planned stop:
    preemption drills and resume tests); the summary then has ``stopped=True``."""
    rank, world = rank_world()
    phase_dir = Path(run_dir) / f"step{phase.growth_step}" / phase.name
    ckpt_dir = phase_dir / "checkpoints"
    manifest = Manifest.load(cfg.data.root)
    manifest.check_files()
    shards = [e.path for e in manifest.shards(phase.data_steps)]
    if not shards:
        raise ValueError(f"{cfg.data.root}: the manifest has no shards for steps {phase.data_steps}")
    n_samples = manifest.num_samples(phase.data_steps)
    sources = []
    if phase.mixture and (len(phase.mixture) > 1 or phase.mixture[0].keep < 1):
        sources, n_samples = mixture_sources(manifest, phase.mixture)
    tok = load_tokenizer(cfg, phase.arch)
    t = cfg.train
    accum = t.grad_accum(world)
    per_epoch, total = plan_steps(cfg, n_samples, phase.epochs, phase.num_samples)
    teacher, teacher_flops = None, 0
    if phase.teacher is not None:
        teacher_flops = forward_flops(phase.teacher[1])
        teacher = build(*phase.teacher)
        teacher.eval().requires_grad_(False)

    model = GrowCLIP(phase.arch, seed=t.seed)
    if phase.init_state is not None:
        model.load_state_dict(phase.init_state, strict=True)
    model.set_grad_checkpointing(t.grad_checkpointing)
    tag = [checkpoint.pick_tag(ckpt_dir) if rank == 0 else None]   # one rank reads and verifies the files
    if world > 1:
        torch.distributed.broadcast_object_list(tag, src=0)
    tag = tag[0]
    saved_world = checkpoint.read_meta(ckpt_dir / tag)["world_size"] if tag else world
    resized = saved_world != world and t.zero_stage > 0   # ZeRO partitions: load a universal conversion
    engine, _, sched = build_engine(model, replace(t, warmup_steps=warmup_for(t, phase.warmup, total)), world, total,
                                    phase_dir, universal=resized)
    if teacher is not None:
        teacher.to(engine.device)

    meta = checkpoint.resume(engine, ckpt_dir, tag, universal=resized) or {}
    step = meta.get("global_step", 0)
    check_same(step, "resumed optimizer step", f"the start of {phase_dir}")
    if resized and rank == 0:
        print(f"[growclip_ds] resumed {ckpt_dir / tag} (world size {saved_world}) at world size {world}; "
              "the rest of this epoch reads freshly seeded per-rank streams", flush=True)
    samples_seen = meta.get("samples_seen", 0)
    flops_done = meta.get("train_flops", 0)
    device_s = meta.get("device_s", 0.0)
    counted = meta.get("samples_by_source", [0] * max(1, len(sources)))   # all ranks, up to the resume
    local_counts = torch.zeros(len(counted), dtype=torch.long)                 # this rank, since then

    def by_source() -> list[int]:
        total_counts = local_counts.clone()
        if world > 1:
            torch.distributed.all_reduce(total_counts)
        return [a + b for a, b in zip(counted, total_counts.tolist())]
    data_state = {} if resized else meta.get("data_state", {})
    stream_tag = f"resized{step}" if resized else ""
    log = MetricsLogger(phase_dir, rank, total, step, desc=f"step{phase.growth_step}/{phase.name}",
                        enabled=progress, log_every=t.log_every)
    base_meta = {"arch": phase.arch.to_dict(), "growth_step": phase.growth_step, "phase": phase.name,
                 "data_steps": phase.data_steps, "world_size": world}

    def save(step_now: int, state: dict) -> None:
        checkpoint.save(engine, ckpt_dir, step_now, {**base_meta, "global_step": step_now,
                                                     "samples_seen": samples_seen, "data_state": state,
                                                     "train_flops": flops_done, "device_s": device_s,
                                                     "samples_by_source": by_source()},
                        keep=t.keep_checkpoints)
        cadence.saved()

    cadence = Cadence(t.checkpoint_every, t.checkpoint_every_minutes)
    guard = nonfinite.Guard(t.max_nonfinite, str(phase_dir), latest=lambda: checkpoint.latest_tag(ckpt_dir))
    liveness = Liveness(cfg.data.max_bad_in_row, cfg.data.max_idle_minutes * 60)
    skipped = {"bad": 0, "raw": 0}   # undecodable samples and samples read, this rank, since (re)start

    losses: list[float] = []
    last_saved = step if meta else -1
    if stop_after == 0 and step == 0:  # a planned stop before training: checkpoint the initial weights
        save(0, {"epoch": 0, "raw_done": []})
        log.close()
        return {"phase": phase.name, "stopped": True, "ckpt_dir": str(ckpt_dir), "total_steps": total,
                "samples_seen": 0, "losses": []}
    while step < total:
        epoch, in_epoch = divmod(step, per_epoch)
        resume_state = data_state if data_state.get("epoch") == epoch else {}
        raw_done = list(resume_state.get("raw_done", []))
        if raw_done and len(raw_done) != max(1, cfg.data.num_workers):
            raise ValueError(f"data.num_workers={cfg.data.num_workers} differs from the checkpoint's "
                             f"{len(raw_done)} workers; resume with the same data.num_workers")
        plan = EpochPlan(shards=shards, seed=t.seed, epoch=epoch, rank=rank, world=world,
                         micro_batch=t.micro_batch, batches=per_epoch * accum, num_workers=cfg.data.num_workers,
                         resample=cfg.data.resample, shuffle_buffer=cfg.data.shuffle_buffer,
                         start_batch=in_epoch * accum, raw_done=raw_done,
                         stream_tag=stream_tag if in_epoch else "", sources=sources,
                         exclude=manifest.holdout, liveness=liveness)
        raw_done = raw_done or [0] * max(1, cfg.data.num_workers)
        bad = {}
        it = iter(make_loader(plan, phase.arch.image_size, tok))
        while step < total and step // per_epoch == epoch:
            extra, active = {}, phase.arch
            if phase.sampler is not None:
                active = phase.sampler(step)
                engine.module.set_arch(active)
                if hasattr(phase.sampler, "index"):
                    extra["subnet"] = phase.sampler.index(step)
            t_wait = 0.0
            loss_sum = 0.0
            t0 = time.perf_counter()
            for _ in range(accum):
                tw = time.perf_counter()
                batch = next(it)
                t_wait += time.perf_counter() - tw
                raw_done[batch["role"]] = batch["raw_done"]
                bad[batch["role"]] = (batch["bad_samples"], batch["bad_shards"])
                img, txt, scale = engine(batch["images"], batch["tokens"])
                loss = clip_loss(img, txt, scale)
                if teacher is not None:
                    with torch.no_grad():
                        old = teacher(batch["images"].to(engine.device), batch["tokens"].to(engine.device))
                    loss = loss + phase.distill_weight * lwf_kl(img, txt, scale, *old)
                local_counts += torch.bincount(batch["sources"], minlength=len(counted))
                engine.backward(loss)
                engine.step()
                loss_sum += loss.item()
            step += 1
            samples_seen += t.global_batch
            flops_done += t.global_batch * (train_flops(active) + teacher_flops)
            device_s += (time.perf_counter() - t0) * world
            losses.append(loss_sum / accum)
            state = {"epoch": epoch, "raw_done": list(raw_done)}
            log.step(step, loss=loss_sum / accum, lr=sched.get_last_lr()[0], step_time=time.perf_counter() - t0,
                     wait_time=t_wait, samples=t.global_batch, samples_seen=samples_seen,
                     bad_samples=sum(b[0] for b in bad.values()), bad_shards=sum(b[1] for b in bad.values()),
                     **extra)
            faults.hit("train", step)
            faults.delay()
            bad_loss, preempted, due = any_ranks(not math.isfinite(loss_sum), preempt.asked(run_dir),
                                                 cadence.due(step))
            guard.after_step(step, bad_loss, engine.module, last_step=step == total)
            preempted = preempted and step < total
            if ((due and step < total) or step == stop_after or preempted) and not bad_loss:
                check_same(step + faults.skew("datastep"), "optimizer step", f"the checkpoint of {phase_dir}")
                save(step, state)
                last_saved = step
            if (step == stop_after or preempted) and step < total:
                log.close()
                return {"phase": phase.name, "stopped": True, "preempted": preempted, "ckpt_dir": str(ckpt_dir),
                        "total_steps": total, "samples_seen": samples_seen, "losses": losses}
        data_state = {}
        skipped["bad"] += sum(b[0] for b in bad.values())
        skipped["raw"] += sum(raw_done) - sum(resume_state.get("raw_done", []))
    if last_saved != total:
        save(total, {"epoch": (total - 1) // per_epoch, "raw_done": []})
    log.close()
    bad_fraction = skipped_fraction(skipped, cfg.data.warn_bad_fraction, str(phase_dir))
    barrier()
    return {"phase": phase.name, "stopped": False, "nonfinite_steps": guard.total, "bad_fraction": bad_fraction, "ckpt_dir": str(ckpt_dir), "total_steps": total,
            "samples_seen": samples_seen, "train_flops": flops_done, "num_samples_data": n_samples,
            "device_s": device_s, "losses": losses,
            "samples_by_source": {src.label(): n for src, n in zip(phase.mixture or [], by_source())}}


def skipped_fraction(skipped: dict, warn_above: float, where: str) -> float:
    """Fraction of samples read that could not be decoded, over all ranks; warns above ``warn_above``."""
    t = torch.tensor([skipped["bad"], skipped["raw"]], dtype=torch.float64)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    frac = float(t[0] / t[1]) if t[1] else 0.0
    if frac > warn_above and rank_world()[0] == 0:
        print(f"[growclip_ds] WARNING {where}: {int(t[0])} of {int(t[1])} samples read ({100 * frac:.1f}%) could "
              f"not be decoded and were skipped (data.warn_bad_fraction={warn_above})", flush=True)
    return frac


def finish_step(cfg: RunConfig, run_dir: Path, growth_step: int, ckpt_dir: Path | None, arch: ArchConfig,
                extra: dict | None = None, state: dict | None = None) -> dict:
    """Consolidate the phase's last checkpoint (or write ``state``) into ``<run>/step<t>/`` and
    evaluate it on all ranks."""
    from ..eval.evaluate import EvalSets, evaluate

    rank, _ = rank_world()
    out = Path(run_dir) / f"step{growth_step}"
    bad = []
    if rank == 0:
        sd = state if state is not None else checkpoint.consolidated_state_dict(ckpt_dir)
        bad = nonfinite.nonfinite_tensors(sd)
        if not bad:
            checkpoint.write_model(out, sd, arch, extra)
    if any_ranks(bool(bad))[0]:
        raise nonfinite.NonFiniteError(f"{ckpt_dir or out}: the model to consolidate holds NaN/inf "
                                       f"({', '.join(bad[:3]) or 'see rank 0'}); not written, step not finished")
    barrier()
    sd, arch = checkpoint.read_model(out)
    model = build(sd, arch, accelerator_device())
    result = evaluate(model, EvalSets(cfg.data, arch.image_size), load_tokenizer(cfg, arch))
    if rank == 0:
        checkpoint.atomic_write_text(out / "eval.json", json.dumps(result, indent=1))
    barrier()
    return result
