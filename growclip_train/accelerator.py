"""Which accelerator and process-group backend a run uses, decided in one place from what DeepSpeed
will use: ``DS_ACCELERATOR`` where it is set (the tests and local CPU launches set ``cpu``), else CUDA
where a GPU is visible, else the CPU. Every launch, engine and benchmark asks here, so a GPU host
running with ``DS_ACCELERATOR=cpu`` puts CPU tensors through gloo, never through NCCL.

Also DeepSpeed's shared-memory workaround (``release_shm_buffer``): DeepSpeed is the application's.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

SHM_PREFIX = "deepspeed_allreduce_buffer"
BACKENDS = {"cpu": "gloo", "cuda": "nccl"}


def accelerator_name(env=None, cuda: bool | None = None) -> str:
    """'cpu' or 'cuda'. ``cuda``: whether a GPU is visible (default: ask torch)."""
    env = os.environ if env is None else env
    name = env.get("DS_ACCELERATOR") or ("cuda" if (torch.cuda.is_available() if cuda is None else cuda) else "cpu")
    if name not in BACKENDS:
        raise ValueError(f"DS_ACCELERATOR={name}: growclip_ds runs on {' or '.join(BACKENDS)}; unset it or set one")
    return name


def backend(env=None, cuda: bool | None = None) -> str:
    """The torch.distributed backend of that accelerator: gloo on the CPU, nccl on CUDA."""
    return BACKENDS[accelerator_name(env, cuda)]


def on_cpu(env=None, cuda: bool | None = None) -> bool:
    return accelerator_name(env, cuda) == "cpu"


def accelerator_env(env: dict, cuda: bool | None = None) -> dict:
    """``env`` with DeepSpeed's accelerator written down where it is the CPU (DeepSpeed would otherwise
    probe for one); an explicit DS_ACCELERATOR is kept. Launches pass it to every rank."""
    if on_cpu(env, cuda):
        env["DS_ACCELERATOR"] = "cpu"
    return env


def accelerator_device() -> torch.device:
    """This rank's device: where its engine, evaluation, GAS and growth measurements run."""
    return torch.device("cpu") if on_cpu() else torch.device("cuda", torch.cuda.current_device())


def release_shm_buffer() -> None:
    """Unlink this rank's DeepSpeed shared-memory all-reduce buffer.

    On CPU with all ranks on one machine, DeepSpeed (0.19.8, ops/csrc/cpu/comm/shm.cpp) creates a
    /dev/shm buffer of ~68 MB per rank at init and never unlinks it: each job left world x 68 MB of
    RAM behind (measured here: 313 buffers, 21 GB, after a few hundred test launches, until the
    machine thrashed). Call it after the last collective that may use the buffer, then barrier
    before any rank starts a new process group under the same MASTER_PORT (a new generation
    re-creates the name; unlinking then would split the ranks' buffers)."""
    rank = os.environ.get("RANK", "0")
    name = f"{SHM_PREFIX}_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_{os.environ.get('MASTER_PORT', '')}_{rank}"
    Path("/dev/shm", name).unlink(missing_ok=True)
