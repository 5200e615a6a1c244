"""Evaluating a step's model, one way for every caller: the step's own evaluation (phases.finish_step),
``growclip-ds eval``, Patching's alpha sweep (methods.patch_step) and the benchmarks' selection scores.

    growclip-ds eval runs/demo/step4                 # the config and data root the step recorded

``recorded_config`` is what a command that takes a run or step folder starts from: the config the
step ran with (``step<t>/config.json``), so that its data root, tokenizer and evaluation sets are the
run's own and not a preset's.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from growclip_ds.config import ArchConfig, replace

from growclip_train.config import RunConfig
from growclip_train.presets import load_config
from growclip_train.rundir import CONFIG, RunDir


def recorded_config_file(folder) -> Path | None:
    """The config a step folder ran with, or a run folder's newest one; None when nothing is recorded."""
    folder = Path(folder)
    if (folder / CONFIG).is_file():
        return folder / CONFIG
    files = [s.config_file for s in RunDir(folder).steps() if s.config_file.is_file()]
    return files[-1] if files else None


def config_for(folder, config: str | None, overrides: list[str], fallback: str, command: str) -> RunConfig:
    """A folder command's config: the recorded one (``--set`` applied on top), unless ``--config`` names
    another, which is said on stderr; ``fallback`` (a preset) where the folder records none."""
    recorded = recorded_config_file(folder) if folder else None
    if config is None:
        return load_config(str(recorded) if recorded else fallback, overrides)
    if recorded:
        print(f"{command}: --config {config} replaces the config {recorded} recorded", file=sys.stderr)
    return load_config(config, overrides)


def evaluator(cfg: RunConfig, arch: ArchConfig, role: str = "test", kinds: tuple | None = None,
              device=None, progress: bool = False) -> Callable[[dict], dict]:
    """state dict of ``arch`` -> evaluation result; the sets and the tokenizer are loaded once."""
    from growclip_ds.data.tokenizer import load_tokenizer
    from growclip_ds.eval.evaluate import EvalSets, evaluate
    from growclip_ds.factory import build

    if device is None:
        from growclip_train.accelerator import accelerator_device
        device = accelerator_device()
    sets = EvalSets(cfg.data, arch.image_size, role=role, **({"kinds": kinds} if kinds else {}))
    tok = load_tokenizer(cfg, arch)
    return lambda state: evaluate(build(state, arch, device), sets, tok, progress=progress)


def with_run_tokenizer(cfg: RunConfig, step_dir) -> RunConfig:
    """``cfg`` reading the vocabulary the run trained with (its ``<run>/tokenizer`` copy), where there is one."""
    from growclip_ds.model_folder import run_tokenizer_dir

    tok = run_tokenizer_dir(step_dir)
    return replace(cfg, data=replace(cfg.data, tokenizer=str(tok))) if tok.exists() else cfg


def evaluate_step(step_dir, cfg: RunConfig | None = None, role: str = "test", device=None,
                  progress: bool = False) -> dict:
    """A finished step folder's model on ``role``'s sets (default: with the config the step recorded)."""
    from growclip_ds.model_folder import read_model

    step_dir = Path(step_dir)
    if cfg is None:
        recorded = recorded_config_file(step_dir)
        if recorded is None:
            raise FileNotFoundError(f"{step_dir}: no {CONFIG} recorded; pass the config the step ran with")
        cfg = load_config(str(recorded))
    cfg = with_run_tokenizer(cfg, step_dir)
    state, arch = read_model(step_dir)
    return evaluator(cfg, arch, role, device=device, progress=progress)(state)
