"""Resume a phase at another world size through DeepSpeed universal checkpoints.

A ZeRO checkpoint is cut into per-rank partitions, so plain ``load_checkpoint`` refuses another
world size. Rank 0 converts the (verified) checkpoint once (``ds_to_universal``: one folder per parameter
with its fp32 weights and optimizer moments) into ``<tag>_universal/``, and the new engine,
configured with ``checkpoint.load_universal``, re-partitions it. A known failure of that path is a
load that silently leaves the fresh initialization in place, so ``check_loaded`` compares what the
engine holds with what the conversion wrote: every weight exactly, and the optimizer moments
through their summed squares over all partitions.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from growclip_ds.fileio import atomic_path
from growclip_train.log import log



def saved_world(meta: dict) -> int:
    """The world size a checkpoint was saved at (from its metadata)."""
    return int(meta.get("world_size", 1))


def convert(ckpt_dir: Path, tag: str, out_tag: str) -> Path:
    """Convert ``<ckpt_dir>/<tag>`` (verified by the caller) into ``<ckpt_dir>/<out_tag>``: written under a
    temporary name, then renamed; the caller signs it (``checkpoint.universal_conversion``)."""
    src, out = Path(ckpt_dir) / tag, Path(ckpt_dir) / out_tag
    log.info(f"world size changed: converting {src} to a universal checkpoint")
    with atomic_path(out) as tmp:
        cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(src),
               "--output_folder", str(tmp), "--inject_missing_state", "--num_extract_workers", "1",
               "--num_merge_workers", "1"]
        res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "DS_ACCELERATOR": "cpu"})
        if res.returncode:
            raise RuntimeError(f"ds_to_universal failed on {src} (exit {res.returncode}):\n{res.stderr[-2000:]}")
        for f in src.glob("mp_rank_*_model_states.pt"):   # the engine reads its module states from here
            shutil.copy2(f, tmp / f.name)
        shutil.rmtree(out, ignore_errors=True)             # a conversion that failed its verification
    return out


def _load(path: Path) -> torch.Tensor:
    return torch.load(path, map_location="cpu", weights_only=True)["param"].float()


def _partition_square_sum(engine, key: str) -> float:
    """Sum of squares of optimizer state ``key`` over this rank's partitions (padding is zero)."""
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    total = 0.0
    for group in inner.param_groups:
        for p in group["params"]:
            st = inner.state.get(p, {})
            if key in st:
                total += float(st[key].double().pow(2).sum())
    return total


def check_loaded(engine, folder: Path, rtol: float = 1e-5) -> None:
    """Raise unless the engine's weights and optimizer moments are the converted checkpoint's."""
    zero = folder / "zero"
    stage = engine.zero_optimization_stage()
    for name, p in engine.module.named_parameters():
        want = _load(zero / name / "fp32.pt")
        if stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters([p]):
                have = p.detach().float().clone()
        else:
            have = p.detach().float()
        if have.shape != want.shape or not torch.equal(have, want):
            diff = (have - want).abs().max().item() if have.shape == want.shape else "shape"
            raise RuntimeError(f"universal resume from {folder}: weight {name} differs from the checkpoint "
                               f"(max diff {diff}); the load did not take effect")
    for key in ("exp_avg", "exp_avg_sq"):
        files = list(zero.glob(f"*/{key}.pt"))
        if not files:
            continue
        want = sum(float(_load(f).double().pow(2).sum()) for f in files)
        have = torch.tensor([_partition_square_sum(engine, key)], dtype=torch.float64)
        if stage > 0 and dist.is_initialized():
            dist.all_reduce(have)
        if abs(have.item() - want) > rtol * max(want, 1e-30):
            raise RuntimeError(f"universal resume from {folder}: optimizer {key} sum of squares {have.item():.6e} "
                               f"!= checkpoint's {want:.6e}; the optimizer state was not restored")
