"""SLURM glue: nodelists to hostfiles, the rendezvous address and port, and the batch scripts.

    python -m growclip_train.slurm env --out F -- ARGS   # in a batch script: export lines to source
    growclip-ds slurm runs/paper --step 3 --nodes 4 --gpus-per-node 8 [--mode hostfile] [--submit]

The hostfile and MASTER_ADDR come from ``SLURM_JOB_NODELIST`` (first node), the port from the job
id, so two jobs on one node never collide and a requeued job reuses its port.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from growclip_ds.errors import InputError

SCRIPTS = Path(__file__).resolve().parents[1] / "launchers" / "slurm"


def _split_top(text: str) -> list[str]:
    """Split on commas outside brackets: 'a[1-2,4],b' -> ['a[1-2,4]', 'b']."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise InputError(f"nodelist {text!r}: unbalanced ']'")
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if depth:
        raise InputError(f"nodelist {text!r}: unbalanced '['")
    return parts + [cur]


def _range(spec: str, whole: str) -> list[str]:
    out = []
    for item in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if not m:
            raise InputError(f"nodelist {whole!r}: bad range {item!r}")
        lo, hi = m.group(1), m.group(2) or m.group(1)
        if int(hi) < int(lo):
            raise InputError(f"nodelist {whole!r}: range {item!r} runs backwards")
        out += [str(i).zfill(len(lo)) for i in range(int(lo), int(hi) + 1)]  # keeps zero padding
    return out


def expand_nodelist(text: str) -> list[str]:
    """SLURM's compressed host list ('gpu[01-03,07],cpu-a[1-2]-ib[0-1],login') in order."""
    hosts = []
    for part in _split_top(text.strip()):
        if not part:
            continue
        m = re.search(r"\[([^\]]*)\]", part)
        if not m:
            hosts.append(part)
            continue
        head, tail = part[: m.start()], part[m.end():]
        hosts += [h for n in _range(m.group(1), text) for h in expand_nodelist(head + n + tail)]
    return hosts


def hostfile_text(hosts: list[str], slots: int) -> str:
    if slots < 1:
        raise InputError(f"slots per node must be >= 1 (got {slots})")
    return "".join(f"{h} slots={slots}\n" for h in hosts)


def parse_hostfile(text: str, source: str = "hostfile") -> dict[str, int]:
    """{host: slots}; raises ValueError naming the line for anything DeepSpeed would choke on."""
    hosts = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"(\S+)\s+slots=(\d+)", line)
        if not m or int(m.group(2)) < 1:
            raise InputError(f"{source}:{n}: expected '<host> slots=<n>' with n >= 1, got {line!r}")
        if m.group(1) in hosts:
            raise InputError(f"{source}:{n}: host {m.group(1)!r} listed twice")
        hosts[m.group(1)] = int(m.group(2))
    if not hosts:
        raise InputError(f"{source}: no hosts")
    return hosts


def master_port(job_id: int, base: int = 20000, span: int = 20000) -> int:
    return base + job_id % span


def allocation_env(environ=os.environ) -> dict[str, str]:
    """Rendezvous variables for the current allocation (run inside the batch script); writes the hostfile."""
    missing = [k for k in ("SLURM_JOB_NODELIST", "SLURM_JOB_ID") if k not in environ]
    if missing:
        raise SystemExit(f"{', '.join(missing)} not set: run this inside a SLURM allocation")
    hosts = expand_nodelist(environ["SLURM_JOB_NODELIST"])
    gpus = int(environ.get("GROWCLIP_GPUS_PER_NODE") or environ.get("SLURM_GPUS_ON_NODE") or 1)
    job = int(environ["SLURM_JOB_ID"])
    hostfile = Path(environ.get("GROWCLIP_HOSTFILE_DIR", ".")) / f"hostfile.{job}"
    hostfile.write_text(hostfile_text(hosts, gpus))
    return {"MASTER_ADDR": hosts[0], "MASTER_PORT": str(master_port(job)), "GROWCLIP_NNODES": str(len(hosts)),
            "GROWCLIP_GPUS_PER_NODE": str(gpus), "GROWCLIP_HOSTFILE": str(hostfile.resolve())}


def run_env(grow_args: list[str]) -> dict[str, str]:
    """The run folder the launcher will use for these arguments, by its own parser (so
    ``--run-dir=X``, ``--run-dir X`` and a preset's default name all agree with the launcher), and
    the number of growth steps of its data (the manifest's, else the config's)."""
    from growclip_ds.data.manifest import MANIFEST, Manifest
    from growclip_train.presets import load_config
    from growclip_train.launch import parse_args
    from growclip_train.rundir import default_run_dir

    args = parse_args([*grow_args, "--step", "1"])   # the folder does not depend on the step
    cfg = load_config(args.config, args.set)
    root = Path(cfg.data.root)
    steps = Manifest.load(root).num_steps if (root / MANIFEST).exists() else cfg.data.num_steps
    return {"GROWCLIP_RUN_DIR": str(default_run_dir(cfg, args.run_dir)), "GROWCLIP_NUM_STEPS": str(steps)}


def write_env_file(path: Path, env: dict[str, str]) -> None:
    """``export K=V`` lines with every value shell-quoted: sourcing the file runs nothing."""
    import shlex

    Path(path).write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()))


def batch_command(run_dir: str, step: int | None, config: str, nodes: int, gpus: int, mode: str,
                  time_limit: str, partition: str | None, extra: list[str]) -> list[str]:
    """The sbatch command line for one growth step (``step``) or a whole run (``step=None``)."""
    script = SCRIPTS / ("grow_step.sbatch" if step else "grow_run.sbatch")
    run_dir = str(Path(run_dir).resolve())
    cmd = ["sbatch", f"--nodes={nodes}", f"--gres=gpu:{gpus}", f"--time={time_limit}", f"--chdir={SCRIPTS.parents[1]}",
           f"--output={run_dir}/slurm-%j.out", f"--export=ALL,GROWCLIP_LAUNCH_MODE={mode},"
           f"GROWCLIP_GPUS_PER_NODE={gpus},GROWCLIP_HOME={SCRIPTS.parents[1]}"]
    if partition:
        cmd.append(f"--partition={partition}")
    cmd += [str(script), "--config", config, "--run-dir", run_dir]
    return cmd + (["--step", str(step)] if step else []) + extra


def main(argv=None) -> int:
    import argparse

    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(prog="python -m growclip_train.slurm", usage="%(prog)s env --out FILE -- GROW_ARGS...")
    p.add_argument("what", choices=("env",))
    p.add_argument("--out", required=True, help="file of export lines to source (values shell-quoted)")
    a = p.parse_args(argv[:cut])
    write_env_file(Path(a.out), {**allocation_env(), **run_env(argv[cut + 1:])})
    return 0


def submit_or_print(cmd: list[str], submit: bool) -> int:
    line = " ".join(cmd)
    if not submit:
        print(line)
        return 0
    return subprocess.run(cmd).returncode


if __name__ == "__main__":
    raise SystemExit(main())
