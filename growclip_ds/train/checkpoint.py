"""Checkpoints: DeepSpeed's own layout for resuming, consolidated safetensors for growth and eval.

- ``<phase>/checkpoints/global_step<N>/`` + ``latest``: written by ``engine.save_checkpoint`` (which
  moves ``latest`` only after the save completes) with our metadata in the client state.
- ``<step>/model.safetensors`` + ``arch.json``: all ZeRO partitions merged by DeepSpeed's
  zero_to_fp32 machinery, written under a temporary name and then ``os.replace``d.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..config import ArchConfig
from ..model import param_count


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def latest_tag(ckpt_dir: Path) -> str | None:
    f = Path(ckpt_dir) / "latest"
    return f.read_text().strip() if f.exists() else None


def save(engine, ckpt_dir: Path, global_step: int, meta: dict) -> str:
    tag = f"global_step{global_step}"
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"growclip": meta})
    return tag


def resume(engine, ckpt_dir: Path) -> dict | None:
    """Load the ``latest`` checkpoint if there is one; returns our metadata or None."""
    if latest_tag(ckpt_dir) is None:
        return None
    path, client = engine.load_checkpoint(str(ckpt_dir))
    if path is None:
        raise RuntimeError(f"{ckpt_dir}: 'latest' names {latest_tag(ckpt_dir)!r} but it could not be loaded")
    return client["growclip"]


def consolidated_state_dict(ckpt_dir: Path, tag: str | None = None) -> dict[str, torch.Tensor]:
    """fp32 state dict with all ZeRO partitions merged (any stage, any world size)."""
    ckpt_dir = Path(ckpt_dir)
    tag = tag or latest_tag(ckpt_dir)
    folder = ckpt_dir / tag
    if any(folder.glob("*optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        sd = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    else:  # ZeRO-0: the module's full weights are in the model states file
        states = torch.load(folder / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
        sd = states["module"]
    return {k: v.detach().float().contiguous() for k, v in sd.items()}


def write_model(out_dir: Path, state_dict: dict, arch: ArchConfig, extra: dict | None = None,
                name: str = "model.safetensors") -> None:
    """``model.safetensors`` + ``arch.json`` (architecture fields plus "params"), atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / (name + ".tmp")
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(tmp))
    os.replace(tmp, out_dir / name)
    atomic_write_text(out_dir / "arch.json",
                      json.dumps({**arch.to_dict(), "params": param_count(arch), **(extra or {})}, indent=1))


def read_arch(model_dir: Path) -> ArchConfig:
    path = Path(model_dir) / "arch.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {model_dir} a finished growth step?")
    d = json.loads(path.read_text())
    fields = set(ArchConfig.__dataclass_fields__)
    return ArchConfig.from_dict({k: v for k, v in d.items() if k in fields}, str(path)).validate()


def read_model(model_dir: Path) -> tuple[dict, ArchConfig]:
    """Load a consolidated model folder without executing code (safetensors + JSON)."""
    model_dir = Path(model_dir)
    arch = read_arch(model_dir)
    if not (model_dir / "model.safetensors").exists():
        raise FileNotFoundError(f"{model_dir / 'model.safetensors'} not found: is {model_dir} a finished step?")
    return load_file(str(model_dir / "model.safetensors")), arch
