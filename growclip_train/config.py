"""The run config: one ``RunConfig`` (architecture, training, data, growth, method) per run.

Configs come from a preset name or a JSON file plus ``--set section.field=value`` overrides
(``presets.load_config``), and are validated before any process group starts: a bad value raises one
``ConfigError`` naming the field. The architecture, data and growth sections are the library's
(``growclip_ds/config.py``); training and the baselines' constants are the trainer's, here.
"""
from __future__ import annotations

import importlib.util
import math
import typing
from dataclasses import asdict, dataclass, field, fields

from growclip_ds.config import ArchConfig, ConfigError, DataConfig, GrowthConfig, replace  # noqa: F401
from growclip_ds.config_fields import _check, _from_dict


MATCH_MODES = ("epochs", "flops")
MONITORS = {"tensorboard": "tensorboard", "csv": None, "wandb": "wandb"}   # name -> package it needs




@dataclass(frozen=True)
class TrainConfig:
    """How one phase trains (docs/method.md section 5 gives the paper's values)."""

    global_batch: int = 1536
    micro_batch: int = 96
    lr: float = 0.01
    weight_decay: float = 1e-4
    warmup_steps: int = 4000          # linear warm-up of a phase trained from scratch
    warmup_inherited: float = 0.05    # warm-up of a phase that starts from trained weights: this fraction
                                      # of its steps, at most warmup_steps (train/schedule.py: warmup_for)
    epochs: float = 30.0          # passes over D^t; ignored when num_samples > 0
    num_samples: int = 0          # total samples to train on; 0 means use epochs
    match: str = "epochs"         # "epochs": a phase trains its epochs over its data, at its own model's cost;
                                  # "flops": every step t of every method spends F_t = epochs x N^t x
                                  # flops_per_sample FLOPs (a bigger model sees fewer samples; train/budget.py)
    flops_per_sample: float = 0.0  # match=flops: the training FLOPs of one sample that F_t counts in;
                                  # 0: those of the configured (step-1) architecture
    optimizer: str = "lamb"       # "lamb" (timm, as the paper) or "adamw"
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-6
    grad_clip: float = 1.0        # 0 disables clipping
    zero_stage: int = 2
    precision: str = "fp32"       # "fp32" (CPU), "bf16" or "fp16" (GPU)
    seed: int = 0
    checkpoint_every: int = 0     # optimizer steps between checkpoints; 0: by time only (and at the end)
    checkpoint_every_minutes: float = 30.0   # wall minutes between checkpoints; 0: by steps only
    keep_checkpoints: int = 3     # verified checkpoints kept per phase (the newest; 0: all)
    max_nonfinite: int = 10       # NaN/inf-loss steps in a row before the phase aborts (train/nonfinite.py)
    collective_timeout_s: float = 1800.0   # how long a collective waits for a peer (a hung rank, a lost node)
                                  # before every waiting rank stops with exit code 6 (growclip_train/exit_codes.py)
    log_every: int = 10
    grad_checkpointing: bool = False
    monitor: str = "tensorboard"  # DeepSpeed's monitors, comma-separated: tensorboard, csv, wandb (offline unless
                                  # WANDB_MODE says otherwise); written in each phase folder; "" for none

    def validate(self, prefix: str = "train") -> "TrainConfig":
        for f in ("global_batch", "micro_batch"):
            v = getattr(self, f)
            _check(isinstance(v, int) and v >= 1, f"{prefix}.{f}", "must be an integer >= 1", v)
        _check(self.global_batch % self.micro_batch == 0, f"{prefix}.global_batch",
               f"must be a multiple of micro_batch={self.micro_batch}", self.global_batch)
        _check(self.lr > 0 and math.isfinite(self.lr), f"{prefix}.lr", "must be a positive number", self.lr)
        for f in ("warmup_steps", "num_samples", "grad_clip", "checkpoint_every", "checkpoint_every_minutes",
                  "keep_checkpoints", "max_nonfinite"):
            _check(getattr(self, f) >= 0, f"{prefix}.{f}", "must be >= 0", getattr(self, f))
        _check(self.weight_decay >= 0, f"{prefix}.weight_decay", "must be >= 0", self.weight_decay)
        _check(self.collective_timeout_s > 0, f"{prefix}.collective_timeout_s", "must be > 0 seconds",
               self.collective_timeout_s)
        _check(0 <= self.warmup_inherited <= 1, f"{prefix}.warmup_inherited", "must be in [0, 1]",
               self.warmup_inherited)
        _check(self.eps > 0 and math.isfinite(self.eps), f"{prefix}.eps", "must be a positive finite number", self.eps)
        _check(math.isfinite(self.epochs) and self.epochs >= 0, f"{prefix}.epochs", "must be a finite number >= 0",
               self.epochs)
        _check(self.epochs > 0 or self.num_samples > 0, f"{prefix}.epochs",
               "must be > 0 unless num_samples > 0", self.epochs)
        _check(self.match in MATCH_MODES, f"{prefix}.match", f"must be one of {', '.join(MATCH_MODES)}", self.match)
        _check(self.flops_per_sample >= 0, f"{prefix}.flops_per_sample", "must be >= 0", self.flops_per_sample)
        _check(self.optimizer in ("lamb", "adamw"), f"{prefix}.optimizer", "must be 'lamb' or 'adamw'",
               self.optimizer)
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"{prefix}.betas",
               "must be two numbers in [0, 1)", self.betas)
        _check(self.zero_stage in (0, 1, 2, 3), f"{prefix}.zero_stage", "must be 0, 1, 2 or 3", self.zero_stage)
        _check(self.precision in ("fp32", "bf16", "fp16"), f"{prefix}.precision",
               "must be 'fp32', 'bf16' or 'fp16'", self.precision)
        _check(self.log_every >= 1, f"{prefix}.log_every", "must be >= 1", self.log_every)
        for m in self.monitors:
            _check(m in MONITORS, f"{prefix}.monitor", f"each must be one of {', '.join(MONITORS)}", self.monitor)
            need = MONITORS[m]
            _check(need is None or importlib.util.find_spec(need) is not None, f"{prefix}.monitor",
                   f"{m} needs the {need} package (pip install {need})", self.monitor)
        return self

    @property
    def monitors(self) -> list[str]:
        return [m.strip() for m in self.monitor.split(",") if m.strip()]

    def grad_accum(self, world_size: int, prefix: str = "train") -> int:
        """Gradient accumulation steps so that micro_batch x world x accum == global_batch."""
        per_step = self.micro_batch * world_size
        _check(self.global_batch % per_step == 0, f"{prefix}.global_batch",
               f"must be a multiple of micro_batch x world_size = {self.micro_batch} x {world_size}",
               self.global_batch)
        return self.global_batch // per_step


@dataclass(frozen=True)
class MethodConfig:
    """Constants of the baselines and TiC-CLIP's methods (growclip_train/methods.py says what each does)."""

    step_samples: int = 0             # C, TiC's per-step budget in samples; 0: train.epochs x N^1
    sap_shrink: float = 0.5           # SAP: w = shrink * w_old + noise * w_rand
    sap_noise: float = 0.01
    buffer_size: int = 0              # Cumulative-Exp/-Equal replay buffer D in samples; 0: N of the new step
    new_data_weight: float = 0.0      # sampling weight of the new data against the buffer; 0: by sizes
    lwf_weight: float = 1.0           # LwF: loss = CLIP loss + lwf_weight * KL(old || new)
    patch_alphas: str = "0.25,0.5,0.75,1.0"   # Patching: candidates for alpha (weight of the new model)
    patch_select: str = "old"         # Patching: alpha maximises mean R@1 on "old" steps (< t) or "seen" (<= t)

    def alphas(self) -> list[float]:
        return [float(a) for a in self.patch_alphas.split(",") if a.strip()]

    def validate(self, prefix: str = "method") -> "MethodConfig":
        _check(self.step_samples >= 0, f"{prefix}.step_samples", "must be >= 0", self.step_samples)
        _check(self.sap_shrink >= 0 and self.sap_noise >= 0, f"{prefix}.sap_shrink",
               "sap_shrink and sap_noise must be >= 0", (self.sap_shrink, self.sap_noise))
        _check(self.buffer_size >= 0, f"{prefix}.buffer_size", "must be >= 0", self.buffer_size)
        _check(0 <= self.new_data_weight < 1, f"{prefix}.new_data_weight", "must be in [0, 1)",
               self.new_data_weight)
        _check(self.lwf_weight >= 0, f"{prefix}.lwf_weight", "must be >= 0", self.lwf_weight)
        try:
            ok = bool(self.alphas()) and all(0 <= a <= 1 for a in self.alphas())
        except ValueError:
            ok = False
        _check(ok, f"{prefix}.patch_alphas", "must be a comma list of numbers in [0, 1]", self.patch_alphas)
        _check(self.patch_select in ("old", "seen"), f"{prefix}.patch_select", "must be 'old' or 'seen'",
               self.patch_select)
        return self


SECTIONS = ("arch", "train", "data", "growth", "method")   # a run config's sections, in order


@dataclass(frozen=True)
class RunConfig:
    arch: ArchConfig = field(default_factory=ArchConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    growth: GrowthConfig = field(default_factory=GrowthConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    name: str = "custom"

    def validate(self) -> "RunConfig":
        for sec in SECTIONS:
            getattr(self, sec).validate()
        a, g = self.arch, self.growth   # growth must stay inside what the architecture can express
        _check(a.stem == "conv" or g.delta_conv_layers == 0, "growth.delta_conv_layers",
               "must be 0 with arch.stem='patch' (no conv stem to deepen)", g.delta_conv_layers)
        _check(g.schedule == "phase" or self.train.match == "flops", "growth.schedule",
               "'step' needs train.match=flops (the step's schedule is laid over its FLOP budget)", g.schedule)
        _check(a.stem_residual or g.inherit != "preserve" or g.delta_conv_layers == 0, "growth.delta_conv_layers",
               "must be 0 with arch.stem_residual=false and growth.inherit=preserve (a plain conv layer cannot "
               "start as the identity): set it to 0, or arch.stem_residual=true", g.delta_conv_layers)
        _check(a.tower == "growclip" or g.delta_shared_blocks == 0, "growth.delta_shared_blocks",
               "must be 0 with arch.tower='clip' (CLIP's towers share no blocks)", g.delta_shared_blocks)
        _check(a.tower == "growclip" or g.inherit != "preserve" or not (g.delta_img_heads or g.delta_txt_heads),
               "growth.inherit", "'preserve' keeps CLIP's towers' function only when they deepen: set "
               "growth.inherit=pim, or growth.delta_img_heads=0 and growth.delta_txt_heads=0", g.inherit)
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"{sorted(unknown)[0]}: unknown config section; known: {', '.join(SECTIONS)}, name")
        types = typing.get_type_hints(cls)
        return cls(arch=ArchConfig.from_dict(d.get("arch", {}), "arch"),
                   **{sec: _from_dict(types[sec], d.get(sec, {}), sec) for sec in SECTIONS[1:]},
                   name=d.get("name", "custom"))
