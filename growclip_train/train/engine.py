"""The one place that calls ``deepspeed.initialize``: ZeRO config, optimizer and schedule.

The JSON in ``growclip_train/ds_configs/zero<stage>.json`` (package data; ``ds_configs/`` at the top
of a checkout is the same folder) is merged with the run's values ("auto" fields) and
the final config is written into the phase folder, so every run records what DeepSpeed saw.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from growclip_train.config import TrainConfig
from growclip_ds.errors import InputError
from growclip_train.accelerator import on_cpu
from growclip_train.log import log

DS_CONFIG_DIR = Path(__file__).resolve().parents[1] / "ds_configs"   # shipped inside the package


def monitor_config(monitors: list[str], out_dir: Path) -> dict:
    """DeepSpeed's monitor sections for ``train.monitor``: TensorBoard in ``<out_dir>/tb``, CSV files in
    ``<out_dir>/csv``, Weights & Biases (offline unless ``WANDB_MODE`` is set) grouped by phase folder."""
    cfg = {}
    if "tensorboard" in monitors:
        cfg["tensorboard"] = {"enabled": True, "output_path": str(out_dir), "job_name": "tb"}
    if "csv" in monitors:
        cfg["csv_monitor"] = {"enabled": True, "output_path": str(out_dir), "job_name": "csv"}
    if "wandb" in monitors:
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_DIR", str(out_dir))
        cfg["wandb"] = {"enabled": True, "project": "growclip_ds", "group": str(out_dir)}
    return cfg


def build_ds_config(train: TrainConfig, world_size: int, base: str | Path | None = None,
                    monitor_dir: Path | None = None) -> dict:
    """DeepSpeed config = ds_configs/zero<stage>.json with the "auto" fields filled from ``train`` (and
    ``zero_optimization.contiguous_gradients`` from the accelerator), and its monitors (``train.monitor``)
    writing under ``monitor_dir``."""
    path = Path(base) if base else DS_CONFIG_DIR / f"zero{train.zero_stage}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: DeepSpeed config missing (train.zero_stage={train.zero_stage})")
    cfg = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
    if cfg.get("zero_optimization", {}).get("stage", train.zero_stage) != train.zero_stage:
        raise InputError(f"{path}: zero_optimization.stage differs from train.zero_stage={train.zero_stage}")
    auto = {"train_batch_size": train.global_batch, "train_micro_batch_size_per_gpu": train.micro_batch,
            "gradient_accumulation_steps": train.grad_accum(world_size), "gradient_clipping": train.grad_clip}
    for k, v in auto.items():
        if cfg.get(k, "auto") == "auto":
            cfg[k] = v
    zero = cfg.setdefault("zero_optimization", {})
    zero["stage"] = train.zero_stage
    if zero.get("contiguous_gradients") == "auto":
        # copying each gradient into one buffer spares a GPU allocator fragmentation; on the CPU it is only a
        # copy, 4-12% of a ZeRO-2 step (docs/benchmarks/open_clip_gap_cpu_2026-12-07.md)
        zero["contiguous_gradients"] = not on_cpu()
    if monitor_dir is not None:
        cfg.update(monitor_config(train.monitors, Path(monitor_dir)))
    if train.precision == "bf16":
        cfg["bf16"] = {"enabled": True}
    elif train.precision == "fp16":
        cfg["fp16"] = {"enabled": True, "initial_scale_power": 16}
    if train.precision != "fp32" and on_cpu():
        log.warning(f"train.precision={train.precision} on CPU runs several times slower "
                    "than fp32 (no bf16 instructions on most CPUs)")
    return cfg


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on normally initialised tensors (matrices, kernels, embeddings, positions) only:
    not on biases, norm gains, gates or logit_scale; decided by each parameter's declared role."""
    from growclip_ds.model.roles import param_specs

    specs = param_specs(model)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if specs[name].decays else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, train.weight_decay)
    if train.optimizer == "lamb":
        # timm's LAMB semantics with trust ratios that stay per-tensor under ZeRO (DeepSpeed's own
        # Lamb is CUDA-only, and a client LAMB would see flat partitions); DeepSpeed clips globally.
        from growclip_train.train.lamb import PartitionedLamb

        return PartitionedLamb(groups, lr=train.lr, betas=tuple(train.betas), eps=train.eps)
    fused = {} if on_cpu() else {"fused": True}
    return torch.optim.AdamW(groups, lr=train.lr, betas=tuple(train.betas), eps=train.eps, **fused)


def cosine_with_warmup(total_steps: int, warmup_steps: int):
    """lr multiplier: linear warm-up from 0, then cosine decay to 0 at ``total_steps``."""
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


def span_of_step_schedule(total_steps: int, span: tuple[float, float], warmup_frac: float):
    """lr multiplier of a phase that continues one schedule over its whole growth step
    (``growth.schedule=step``): the phase covers the fraction ``span`` of the step's FLOP budget; the step
    warms up linearly over its first ``warmup_frac`` and decays by a cosine to 0 at its end."""
    a, b = span

    def f(step: int) -> float:
        x = a + (b - a) * step / max(1, total_steps)
        if x < warmup_frac:
            return (x + 1e-3) / (warmup_frac + 1e-3)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (x - warmup_frac) / max(1e-9, 1 - warmup_frac))))
    return f


def build_engine(model: torch.nn.Module, train: TrainConfig, world_size: int, total_steps: int,
                 out_dir: Path | None = None, ds_config_file: str | None = None, universal: bool = False,
                 span: tuple[float, float] | None = None):
    """(engine, optimizer, scheduler) for ``model``; the config is saved as ``out_dir/ds_config.json``.
    ``universal``: the engine will load a universal checkpoint (a resume at another world size).
    ``span``: the phase's part of a step-long schedule (``span_of_step_schedule``) instead of its own."""
    import deepspeed

    ds_cfg = build_ds_config(train, world_size, ds_config_file, monitor_dir=out_dir)
    if universal:
        ds_cfg.setdefault("checkpoint", {})["load_universal"] = True
    if out_dir is not None and int(os.environ.get("RANK", "0")) == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "ds_config.json").write_text(json.dumps(ds_cfg, indent=2))
    opt = build_optimizer(model, train)
    mult = cosine_with_warmup(total_steps, train.warmup_steps) if span is None else \
        span_of_step_schedule(total_steps, span, train.warmup_inherited)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, mult)
    engine, opt, _, sched = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched, config=ds_cfg)
    from growclip_train.train.lamb import attach_to_engine

    attach_to_engine(engine)
    return engine, opt, sched
