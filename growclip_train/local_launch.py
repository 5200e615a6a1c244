"""The one way this project starts ranks on the local machine: ``growclip-ds demo``, benchmarks/
reproduce.py, throughput.py, lamb_overhead.py and the tests all build their commands here.

    cmd = local_command(["launchers/grow.py", "--step", "1"], ranks=2)          # DeepSpeed's launcher
    cmd = local_command(["-m", "growclip_train.launch", "--step", "1"], ranks=2)   # the installed module
    cmd = local_command(["worker.py"], ranks=3, launcher="torchrun")
    cmd = local_command(["launchers/grow.py", "--step", "1"], ranks=1, launcher="python")  # no launcher
    subprocess.run(cmd, env=local_env())

Multi-node launches (hostfile, SLURM) are launchers/slurm/'s. A world of 1 needs no launcher (the launch
module starts a process group of one by itself, on MASTER_PORT when set); DeepSpeed's launcher costs
about 6 s more than torchrun per start on 2 cores (it imports DeepSpeed twice before any rank starts).
"""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1]   # the folder holding growclip_ds (a checkout or site-packages)
LAUNCHERS = ("deepspeed", "torchrun", "python")


def free_port() -> int:
    """A TCP port nobody listens on now (for a rendezvous that must not meet another job's)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_command(target: list[str], ranks: int, port: int | None = None, launcher: str = "deepspeed") -> list[str]:
    """``target`` (a script and its arguments, or ``["-m", module, ...]``) on ``ranks`` local ranks."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher: one of {LAUNCHERS} (got {launcher!r})")
    if launcher == "python":
        if ranks != 1:
            raise ValueError(f"launcher 'python' starts one rank (got ranks={ranks}): use torchrun or deepspeed")
        return [sys.executable, *target]
    head = (["-m", "deepspeed.launcher.runner", "--num_accelerators"] if launcher == "deepspeed"
            else ["-m", "growclip_train.torchrun", "--nproc_per_node"])
    tail = ["--module", *target[1:]] if target[:1] == ["-m"] else target
    return [sys.executable, *head, str(ranks), "--master_port", str(port or free_port()), *tail]


def local_env(base: dict | None = None, **extra: str) -> dict:
    """The environment of local ranks: the accelerator (CPU where there is no GPU), this Python's bin first
    on PATH (DeepSpeed's JIT ops are built by the first ``ninja`` there), the package importable."""
    from growclip_train.accelerator import accelerator_env

    env = accelerator_env(dict(os.environ if base is None else base))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{PACKAGE_ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return {**env, **extra}
