"""Distributed entry point: train one growth step of a run.

    deepspeed --num_accelerators 2 launchers/grow.py --step 1 --config demo --run-dir runs/demo
    torchrun --nproc_per_node 2 launchers/grow.py --step 1 --config demo --run-dir runs/demo
    deepspeed --hostfile hostfile --master_addr HOST launchers/grow.py --step 1 --config demo ...

The config is parsed and validated before any process group starts. Each step writes
``<run-dir>/step<t>/{model.safetensors, arch.json, eval.json}``; a re-run resumes where it stopped.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--step", type=int, required=True, help="growth step t (1 = train the step-1 arch from scratch)")
    p.add_argument("--config", default="demo", help="preset name (tiny, demo, paper, vit-b-16) or JSON file")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a config field, e.g. --set train.lr=0.001 (repeatable)")
    p.add_argument("--run-dir", default=None, help="run folder (default runs/<config name>)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    p.add_argument("--stop-after-steps", type=int, default=None, metavar="N",
                   help="checkpoint and exit after N optimizer steps of the current phase (a planned stop; "
                        "re-run without it to resume)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def init_distributed() -> None:
    """Start the process group: gloo on CPU, nccl on GPU; a plain ``python`` run is a world of 1."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    for k, v in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"),
                 ("MASTER_PORT", "29533")):
        os.environ.setdefault(k, v)
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")


def main(argv=None) -> int:
    args = parse_args(argv)
    from growclip_ds.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.set)
        if args.step < 1 or args.step > cfg.data.num_steps:
            raise ConfigError(f"--step: must be in 1..data.num_steps={cfg.data.num_steps} (got {args.step})")
        world = int(os.environ.get("WORLD_SIZE", "1"))
        cfg.train.grad_accum(world)  # batch sizes must fit the world size: fail before any process group
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    run_dir = Path(args.run_dir or f"runs/{cfg.name}")
    init_distributed()
    from growclip_ds.pipeline import run_step

    run_step(cfg, args.step, run_dir, progress=not args.no_progress, stop_after=args.stop_after_steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
