"""The library's config sections: architecture (``arch.py``), data and growth, typed and validated.

A bad value raises one ``ConfigError`` naming the field. The run config that bundles these with the
training and method sections, and the presets, belong to the trainer (``growclip_train/config.py``,
``growclip_train/presets.py``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields

from .arch import ArchConfig  # noqa: F401  (part of this module's API)
from .config_fields import ConfigError, _check  # noqa: F401  (ConfigError is part of this module's API)


@dataclass(frozen=True)
class DataConfig:
    """Where the image-text shards are and how they are read."""

    root: str = "data/builtin"        # folder holding manifest.parquet (or img2dataset shards)
    tokenizer: str = ""               # tokenizer folder; empty: <root>/tokenizer
    eval: tuple[dict, ...] = ()       # evaluation sets [{name, path, kind, role}]; empty: <root>/eval/sets.json
    num_workers: int = 0              # DataLoader workers per rank
    resample: bool = True             # draw shards with replacement (seeded per epoch/rank/worker)
    shuffle_buffer: int = 256
    max_bad_in_row: int = 1000        # undecodable samples in a row before a rank stops (0: no bound)
    max_idle_minutes: float = 10.0    # minutes without a decodable sample before a rank stops (0: no bound)
    warn_bad_fraction: float = 0.01   # warn at the end of a phase when more samples than this were skipped
    # built-in corpus generator (growclip-ds data make)
    corpus: str = "v2"                # "v2": later steps need capacity (data/scenes_v2.py); "v1": the 2026-11 corpus
    num_steps: int = 4                # T, growth steps of the built-in corpus
    samples_per_step: int = 2048
    shard_size: int = 256
    eval_per_class: int = 40          # held-out images per class of each zero-shot task
    retrieval_size: int = 400

    def validate(self, prefix: str = "data") -> "DataConfig":
        _check(bool(self.root), f"{prefix}.root", "must name a folder", self.root)
        _check(self.corpus in ("v1", "v2"), f"{prefix}.corpus", "must be 'v1' or 'v2'", self.corpus)
        for f in ("num_steps", "samples_per_step", "shard_size", "eval_per_class", "retrieval_size"):
            v = getattr(self, f)
            _check(isinstance(v, int) and v >= 1, f"{prefix}.{f}", "must be an integer >= 1", v)
        _check(self.num_workers >= 0, f"{prefix}.num_workers", "must be >= 0", self.num_workers)
        _check(self.shuffle_buffer >= 0, f"{prefix}.shuffle_buffer", "must be >= 0", self.shuffle_buffer)
        _check(self.max_bad_in_row >= 0, f"{prefix}.max_bad_in_row", "must be >= 0", self.max_bad_in_row)
        _check(self.max_idle_minutes >= 0, f"{prefix}.max_idle_minutes", "must be >= 0", self.max_idle_minutes)
        _check(0 <= self.warn_bad_fraction <= 1, f"{prefix}.warn_bad_fraction", "must be in [0, 1]",
               self.warn_bad_fraction)
        from .eval.sets import SetSpec

        try:
            names = [(s.role, s.name) for s in (SetSpec.parse(d, f"{prefix}.eval") for d in self.eval)]
        except ValueError as e:
            raise ConfigError(str(e)) from None
        _check(len(set(names)) == len(names), f"{prefix}.eval", "set names must be unique within a role", names)
        return self


INHERIT_MODES = ("pim", "preserve")
SELECT_RULES = ("paper", "compute")


@dataclass(frozen=True)
class GrowthConfig:
    """Growth space deltas and PIM/GAS constants (docs/method.md sections 3-5)."""

    delta_img_blocks: int = 4
    delta_img_heads: int = 4
    delta_conv_layers: int = 2
    delta_txt_blocks: int = 4
    delta_txt_heads: int = 4
    delta_shared_blocks: int = 4
    beta: float = 0.3
    gamma: float = 0.001
    alpha: float = 0.5
    select: str = "paper"             # GAS's rule: "paper": A + alpha x size term; "compute": A - compute_penalty
                                      # x log2(FLOPs per sample / the step t-1 model's), what a candidate is
                                      # expected to lose by seeing fewer samples under a FLOP budget (growclip_train/gas.py)
    compute_penalty: float = 0.05     # select=compute: selection accuracy lost per halving of the samples seen
    copy_logit_scale: bool = True
    pim_scope: str = "all"            # "all" tensors, or "weights" only (norms and biases copied)
    inherit: str = "pim"              # "pim": the paper's rule (beta, gamma); "preserve": the grown model
                                      # starts computing the old function (growth/preserve.py)
    preserve_gamma: float = 0.0       # inherit=preserve: exploration term gamma x w_rand on inherited weights
    schedule: str = "phase"           # "phase": each phase warms up and decays its own lr; "step" (train.match=flops):
                                      # one schedule over the step's FLOP budget that the phases continue
    supernet_epochs: float = 2.0      # phase 1: supernet fine-tuning
    sample_epochs: float = 2.0        # phase 2a: one sampled candidate per iteration
    final_epochs: float = 26.0        # phase 3: the chosen architecture
    check_every: int = 50             # phase 2a: compare the drawn candidate across ranks every K steps
    plan: str = ""                    # growth steps 2..T, comma-separated: "gas" (search, the paper) or a candidate
                                      # index 0..63 grown into without search (the step trains only that net,
                                      # inherited from the step t-1 model); "" = gas at every step. E.g. "0,0,18":
                                      # no growth at steps 2-3, image and text heads grown at step 4

    def plan_items(self) -> list[str]:
        return [x.strip() for x in self.plan.split(",")] if self.plan else []

    def planned(self, step: int) -> int | None:
        """The candidate growth step ``step`` grows into without search, or None (GAS chooses)."""
        items = self.plan_items()
        k = step - 2
        return int(items[k]) if 0 <= k < len(items) and items[k] != "gas" else None

    def validate(self, prefix: str = "growth") -> "GrowthConfig":
        for f in fields(self):
            if f.name.startswith("delta_"):
                v = getattr(self, f.name)
                _check(isinstance(v, int) and v >= 0, f"{prefix}.{f.name}", "must be an integer >= 0", v)
        _check(self.beta >= 0 and self.gamma >= 0, f"{prefix}.beta", "beta and gamma must be >= 0",
               (self.beta, self.gamma))
        _check(self.alpha >= 0, f"{prefix}.alpha", "must be >= 0", self.alpha)
        _check(self.select in SELECT_RULES, f"{prefix}.select", f"must be one of {', '.join(SELECT_RULES)}",
               self.select)
        _check(self.schedule in ("phase", "step"), f"{prefix}.schedule", "must be 'phase' or 'step'", self.schedule)
        _check(self.compute_penalty >= 0, f"{prefix}.compute_penalty", "must be >= 0", self.compute_penalty)
        _check(self.preserve_gamma >= 0, f"{prefix}.preserve_gamma", "must be >= 0", self.preserve_gamma)
        _check(self.pim_scope in ("all", "weights"), f"{prefix}.pim_scope", "must be 'all' or 'weights'",
               self.pim_scope)
        _check(self.inherit in INHERIT_MODES, f"{prefix}.inherit", f"must be one of {', '.join(INHERIT_MODES)}",
               self.inherit)
        for f in ("supernet_epochs", "sample_epochs", "final_epochs"):
            _check(getattr(self, f) > 0, f"{prefix}.{f}", "must be > 0", getattr(self, f))
        _check(self.check_every >= 1, f"{prefix}.check_every", "must be >= 1", self.check_every)
        items = self.plan_items()
        _check(all(x == "gas" or (x.isdigit() and int(x) < 64) for x in items), f"{prefix}.plan",
               "must be a comma list of 'gas' or candidate indices 0..63, one per growth step from step 2", self.plan)
        return self


def replace(cfg, **changes):
    """dataclasses.replace that re-validates frozen configs."""
    out = dataclasses.replace(cfg, **changes)
    return out.validate() if hasattr(out, "validate") else out
