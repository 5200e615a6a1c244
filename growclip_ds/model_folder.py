"""A model folder: ``model.safetensors`` (full fp32 weights) + ``arch.json`` (the architecture's fields,
its parameter count and how it came to be), e.g. ``<run>/step<t>``. The one format every hand-off
uses: between phases, steps, world sizes and ZeRO stages, and to ``growclip_ds.load`` and export.
Nothing here unpickles: weights are safetensors, the architecture is JSON.

    write_model(folder, state_dict, arch, {"chosen_by": "gas"})
    state_dict, arch = read_model(folder)
"""
from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from .arch import ArchConfig
from .distributed import barrier, rank_world
from .fileio import atomic_path, atomic_write_text

MODEL = "model.safetensors"   # the format's two file names (growclip_train/rundir.py lays out where model folders are)
ARCH = "arch.json"
RUN_TOKENIZER = "tokenizer"   # a step folder's run keeps the tokenizer it trained with beside it: <run>/tokenizer


class NonFiniteError(RuntimeError):
    """The run diverged; the message says where, what was kept and what to do."""


def nonfinite_tensors(state: dict) -> list[str]:
    """Names of the tensors of a state dict that hold NaN or inf."""
    import torch

    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def run_tokenizer_dir(step_dir) -> Path:
    """The tokenizer a step folder (``<run>/step<t>``) was trained with: its run's copy."""
    return Path(step_dir).resolve().parent / RUN_TOKENIZER


def arch_from_record(record: dict, where: str = "arch") -> ArchConfig:
    """The architecture in an ``arch.json`` record (which also holds params and how it was chosen)."""
    fields = set(ArchConfig.__dataclass_fields__)
    return ArchConfig.from_dict({k: v for k, v in record.items() if k in fields}, where).validate()


def write_arch(folder: Path, arch: ArchConfig, extra: dict | None = None) -> None:
    """``arch.json``, atomically: the only writer of that file."""
    from .model import param_count

    atomic_write_text(Path(folder) / ARCH,
                      json.dumps({**arch.to_dict(), "params": param_count(arch), **(extra or {})}, indent=1))


def write_model(folder: Path, state_dict: dict, arch: ArchConfig, extra: dict | None = None,
                before_publish=None) -> None:
    """Weights then architecture, each atomically (the weights fsynced before their rename). A state
    holding NaN/inf is refused: a diverged model is never written. ``before_publish()`` runs between the
    weights' write and their rename (the application's fault injection point)."""
    folder = Path(folder)
    bad = nonfinite_tensors(state_dict)
    if bad:
        raise NonFiniteError(f"{folder / MODEL}: not written, {len(bad)} tensor(s) hold NaN/inf "
                             f"(first: {bad[0]}); a diverged model is never consolidated")
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / MODEL) as tmp:
        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(tmp))
        if before_publish:
            before_publish()
    write_arch(folder, arch, extra)


def read_arch(folder: Path) -> ArchConfig:
    path = Path(folder) / ARCH
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {folder} a finished growth step?")
    return arch_from_record(json.loads(path.read_text()), str(path))


def read_model(folder: Path) -> tuple[dict, ArchConfig]:
    folder = Path(folder)
    arch = read_arch(folder)
    path = folder / MODEL
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {folder} a finished step?")
    return load_file(str(path)), arch


def shared_state(folder: Path, make) -> dict:
    """A starting state dict (PIM, SAP) that rank 0 computes with ``make() -> (state, arch)`` and
    writes as a model folder; every rank then loads the same file."""
    path = Path(folder) / MODEL
    if rank_world()[0] == 0 and not path.exists():
        sd, arch = make()
        write_model(path.parent, sd, arch, {"role": "initial weights"})
    barrier()
    return load_file(str(path))
