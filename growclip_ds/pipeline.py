"""What one growth step runs, as a sequence of phases on the shared trainer.

Step 1 trains the configured step-1 architecture from scratch on D^1 and writes
``<run>/step1/{model.safetensors, arch.json, eval.json}``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch.distributed as dist

from .config import RunConfig
from .train.checkpoint import atomic_write_text
from .train.loop import Phase, finish_step, run_phase


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def run_step(cfg: RunConfig, step: int, run_dir: Path, progress: bool = True,
             stop_after: int | None = None) -> dict:
    run_dir = Path(run_dir)
    out = run_dir / f"step{step}"
    if (out / "eval.json").exists():
        if _rank() == 0:
            print(f"[growclip_ds] {out} is complete (eval.json exists); nothing to do")
        return json.loads((out / "eval.json").read_text())
    if _rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.json", json.dumps(cfg.to_dict(), indent=1))
    if step == 1:
        res = run_phase(cfg, Phase("train", 1, cfg.arch, data_steps=1), run_dir, progress, stop_after)
        if res["stopped"]:
            return res
        return finish_step(cfg, run_dir, 1, Path(res["ckpt_dir"]), cfg.arch)
    raise NotImplementedError("growth steps t >= 2 come with the growth pipeline (issue 3)")
