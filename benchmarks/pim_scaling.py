"""PIM and reshard cost against model size: time and peak host memory, one fresh process per size.

    python benchmarks/pim_scaling.py                      # the paper's step-1 arch at head_dim 16/32/48/64
    python benchmarks/pim_scaling.py --head-dims 16 32

For each size: the step-1 model is written as a consolidated safetensors model (as a finished step
leaves it); then, timed, PIM reads it, grows it into the step-2 supernet and writes the result
(as PIM@1's folder of a run), then a DeepSpeed engine (ZeRO-2, 1 rank, gloo) is built on the grown weights: the
reshard. Peak memory is the process's RSS high-water mark above its level before PIM started,
in copies of the grown model's fp32 bytes (the target: about 2 or fewer).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import REPO, write_record  # noqa: E402


def rss_high_water() -> int:
    """VmHWM in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmHWM")


def reset_high_water() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def child(head_dim: int, tmp: Path) -> dict:
    import gc

    from growclip_ds import model_folder
    from growclip_ds.growth import space
    from growclip_ds.growth.pim import pim
    from growclip_ds.model import GrowCLIP, param_count
    from growclip_train.presets import load_config
    from growclip_train.rundir import GROWTHS, RunDir
    from growclip_train.train.engine import build_engine

    cfg = load_config("paper", [f"arch.head_dim={head_dim}", "train.zero_stage=2", "train.global_batch=2",
                                "train.micro_batch=2"])
    old_arch = cfg.arch
    new_arch = space.supernet(old_arch, cfg.growth)
    run = RunDir(tmp)
    model_folder.write_model(run.step(1).path, GrowCLIP(old_arch, seed=0).state_dict(), old_arch)
    gc.collect()
    reset_high_water()
    base = rss_high_water()
    t0 = time.perf_counter()
    sd, arch = model_folder.read_model(run.step(1).path)
    t1 = time.perf_counter()
    grown = pim(sd, arch, new_arch, seed=1)
    t2 = time.perf_counter()
    del sd
    grown_dir = run.step(2).phase(GROWTHS[0]).path
    model_folder.write_model(grown_dir, grown, new_arch)
    pim_s = time.perf_counter() - t0
    parts = {"read_s": t1 - t0, "pim_fn_s": t2 - t1, "write_s": pim_s - (t2 - t0)}
    pim_peak = rss_high_water() - base
    del grown
    gc.collect()
    t0 = time.perf_counter()
    sd, arch = model_folder.read_model(grown_dir)
    model = GrowCLIP(arch, seed=None)
    model.load_state_dict(sd)
    del sd
    engine, _, _ = build_engine(model, cfg.train, 1, total_steps=1)
    reshard_s = time.perf_counter() - t0
    new_bytes = 4 * param_count(new_arch)
    return {"head_dim": head_dim, "old_params": param_count(old_arch), "new_params": param_count(new_arch),
            "pim_s": pim_s, "pim_peak_bytes": pim_peak, "pim_peak_model_copies": pim_peak / new_bytes,
            "old_plus_new_copies": (4 * param_count(old_arch) + new_bytes) / new_bytes, "reshard_s": reshard_s,
            **parts}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--head-dims", type=int, nargs="+", default=[16, 32, 48, 64])
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--tmp", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.tmp)))
        return
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO), "RANK": "0", "LOCAL_RANK": "0",
           "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29741"}
    rows = []
    for hd in args.head_dims:
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run([sys.executable, __file__, "--child", str(hd), "--tmp", tmp], env=env,
                                 capture_output=True, text=True)
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if out.returncode or line is None:
            sys.exit(f"head_dim {hd}: child failed (rc {out.returncode}):\n{out.stderr[-3000:]}")
        rows.append(json.loads(line[7:]))
        r = rows[-1]
        print(f"head_dim {hd}: {r['old_params'] / 1e6:.1f}M -> {r['new_params'] / 1e6:.1f}M, PIM {r['pim_s']:.2f} s, "
              f"peak {r['pim_peak_model_copies']:.2f} copies, reshard {r['reshard_s']:.2f} s", flush=True)
    per_m = [r["pim_s"] / (r["new_params"] / 1e6) for r in rows]
    lines = ["# PIM (step 1 -> step-2 supernet, paper growth space) and reshard vs model size", "",
             "| head dim | step-1 params | supernet params | PIM s | PIM s per M params | PIM peak RSS (GiB) | "
             "peak / grown model | (old + new) / grown | reshard s | read / pim / write s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r, pm in zip(rows, per_m):
        lines.append(f"| {r['head_dim']} | {r['old_params'] / 1e6:.1f}M | {r['new_params'] / 1e6:.1f}M | {r['pim_s']:.2f} | "
                     f"{pm:.4f} | {r['pim_peak_bytes'] / 2 ** 30:.2f} | {r['pim_peak_model_copies']:.2f} | "
                     f"{r['old_plus_new_copies']:.2f} | {r['reshard_s']:.2f} | "
                     f"{r['read_s']:.2f} / {r['pim_fn_s']:.2f} / {r['write_s']:.2f} |")
    lines += ["", f"PIM seconds per million grown parameters: {min(per_m):.4f} .. {max(per_m):.4f} "
              f"(linear growth keeps this flat; ratio largest/smallest model "
              f"{rows[-1]['new_params'] / rows[0]['new_params']:.1f}x in size, {rows[-1]['pim_s'] / rows[0]['pim_s']:.1f}x in time)"]
    print("\n".join(lines))
    print("wrote", write_record("pim_scaling", {"rows": rows}, lines))


if __name__ == "__main__":
    main()
