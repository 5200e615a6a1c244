"""Step time of the exact ZeRO LAMB (growclip_ds PartitionedLamb) against timm's LAMB used naively
as a client optimizer, same model, data, ranks and ZeRO stage, in one run (interleaved).

    python benchmarks/lamb_overhead.py --ranks 2 --zero 2 --config demo --steps 40

Prints the median optimizer-step and whole-step times of both and their ratios, and writes JSON
to docs/benchmarks/. Each mode runs in its own launch; modes alternate (A B A B) to spread noise.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def worker(args) -> None:
    """One rank: train ``steps`` steps on synthetic tensors, record per-step times."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    sys.path.insert(0, str(REPO))
    import deepspeed
    import torch
    from timm.optim import Lamb

    from growclip_ds.loss import clip_loss
    from growclip_ds.model import GrowCLIP
    from growclip_train.presets import load_config
    from growclip_train.train.engine import build_ds_config, param_groups
    from growclip_train.train.lamb import PartitionedLamb, attach_to_engine

    deepspeed.init_distributed(dist_backend="gloo")
    world = torch.distributed.get_world_size()
    cfg = load_config(args.config, [f"train.zero_stage={args.zero}"])
    arch, t = cfg.arch, cfg.train
    model = GrowCLIP(arch, seed=0)
    groups = param_groups(model, t.weight_decay)
    opt = PartitionedLamb(groups, lr=t.lr) if args.mode == "exact" else Lamb(groups, lr=t.lr, max_grad_norm=None)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=build_ds_config(t, world))
    attach_to_engine(engine)
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    opt_time = [0.0]
    orig_step = inner.step

    def timed_step(*a, **k):
        t0 = time.perf_counter()
        out = orig_step(*a, **k)
        opt_time[0] += time.perf_counter() - t0
        return out

    inner.step = timed_step
    g = torch.Generator().manual_seed(torch.distributed.get_rank())
    images = torch.randn(t.micro_batch, 3, arch.image_size, arch.image_size, generator=g)
    tokens = torch.randint(1, arch.vocab_size, (t.micro_batch, arch.context_length), generator=g)
    steps, opts = [], []
    for i in range(args.steps):
        opt_time[0] = 0.0
        t0 = time.perf_counter()
        for _ in range(t.grad_accum(world)):
            loss = clip_loss(*engine(images, tokens))
            engine.backward(loss)
            engine.step()
        steps.append(time.perf_counter() - t0)
        opts.append(opt_time[0])
    if torch.distributed.get_rank() == 0:
        skip = min(5, args.steps // 4)
        Path(args.out).write_text(json.dumps({"step": steps[skip:], "opt": opts[skip:]}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--zero", type=int, default=2)
    p.add_argument("--config", default="demo")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="exact", help=argparse.SUPPRESS)
    p.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    from growclip_train.local_launch import local_command, local_env

    env = local_env()
    res = {"exact": {"step": [], "opt": []}, "naive": {"step": [], "opt": []}}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for mode in ("exact", "naive"):
                out = Path(tmp) / f"{mode}{r}.json"
                cmd = local_command([__file__, "--worker", "--mode", mode, "--out", str(out), "--config", args.config,
                                     "--zero", str(args.zero), "--steps", str(args.steps)], args.ranks,
                                    29900 + r * 2 + (mode == "naive"), launcher="torchrun")
                subprocess.run(cmd, env=env, check=True, capture_output=True)
                for k, v in json.loads(out.read_text()).items():
                    res[mode][k] += v
    med = {m: {k: statistics.median(v) for k, v in d.items()} for m, d in res.items()}
    summary = {"config": args.config, "ranks": args.ranks, "zero": args.zero, "steps": args.steps,
               "repeats": args.repeats, "machine": f"{platform.machine()} {os.cpu_count()} cores",
               "date": time.strftime("%Y-%m-%d"), "median_s": med,
               "step_ratio_exact_over_naive": med["exact"]["step"] / med["naive"]["step"],
               "optimizer_ratio_exact_over_naive": med["exact"]["opt"] / med["naive"]["opt"]}
    print(f"ZeRO-{args.zero}, {args.ranks} ranks, preset {args.config}: median over {len(res['exact']['step'])} steps")
    print(f"{'':8} {'step s':>10} {'optimizer s':>12}")
    for m in ("exact", "naive"):
        print(f"{m:8} {med[m]['step']:10.4f} {med[m]['opt']:12.5f}")
    print(f"step time ratio exact/naive: {summary['step_ratio_exact_over_naive']:.3f} "
          f"(optimizer alone: {summary['optimizer_ratio_exact_over_naive']:.2f})")
    out_dir = REPO / "docs" / "benchmarks"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"lamb_overhead_zero{args.zero}_cpu_{summary['date']}.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
