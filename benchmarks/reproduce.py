"""Run methods side by side on the built-in growing data and write a comparison table (first cut:
Table 3's shape and TiC-CLIP's transfer summary; Tables 4, 5, 9 and 1 are not generated yet).

    python benchmarks/reproduce.py --config tiny --out runs/repro --methods growclip,tfs,sequential

Step 1 is trained once (it is the same for every method) and copied into each method's run folder.
Each step of each method is one `launchers/grow.py` process (world 1, or `--ranks N` through the
DeepSpeed launcher). Re-running resumes: finished steps are skipped.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO  # noqa: E402
from growclip_ds.cli import launch_env  # noqa: E402
from growclip_ds.config import load_config  # noqa: E402
from growclip_ds.methods import RECIPES  # noqa: E402


def run_step(args, run_dir: Path, method: str, step: int) -> None:
    if (run_dir / f"step{step}" / "eval.json").exists():
        return
    grow = [str(REPO / "launchers" / "grow.py"), "--step", str(step), "--method", method, "--config", args.config,
            "--run-dir", str(run_dir), "--no-progress"] + sum((["--set", s] for s in args.set), [])
    cmd = [sys.executable] + grow if args.ranks == 1 else \
        [sys.executable, "-m", "deepspeed.launcher.runner", "--num_accelerators", str(args.ranks)] + grow
    print(f"[reproduce] {method} step {step}", flush=True)
    p = subprocess.run(cmd, env=launch_env(), capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{method} step {step} failed ({p.returncode}):\n{p.stderr[-3000:]}")


def summary_rows(out: Path, names: list[str]) -> list[str]:
    from growclip_ds.report import step_rows
    from growclip_ds.tic import eval_matrix, transfer_summary

    lines = ["| method | step | params | mean zero-shot top-1 | samples | train PFLOP | device-s |",
             "|---|---|---|---|---|---|---|"]
    tic = ["", "| method | in-domain | backward | forward |", "|---|---|---|---|"]
    for m in names:
        for r in step_rows(out / m):
            d = out / m / f"step{r['step']}"
            cost = [json.loads(f.read_text()) for f in d.glob("*/done.json")]
            lines.append(f"| {m} | {r['step']} | {r['arch']['params']:,} | {r['mean_top1']:.3f} | "
                         f"{sum(c.get('samples_seen', 0) for c in cost):,} | {r['train_flops'] / 1e15:.4f} | "
                         f"{sum(c.get('device_s', 0) for c in cost):.1f} |")
        s = transfer_summary(eval_matrix(out / m))
        tic.append(f"| {m} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in s.values()) + " |")
    return lines + tic


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--out", default="runs/repro")
    ap.add_argument("--methods", default=",".join(RECIPES))
    ap.add_argument("--steps", type=int, default=0, help="last growth step (default: every step of the data)")
    ap.add_argument("--ranks", type=int, default=1)
    args = ap.parse_args()
    cfg = load_config(args.config, args.set)
    out = Path(args.out)
    names = [m for m in args.methods.split(",") if m]
    steps = args.steps or cfg.data.num_steps
    if not (Path(cfg.data.root) / "manifest.parquet").exists():
        subprocess.run([sys.executable, "-m", "growclip_ds.cli", "data", "make", "--config", args.config]
                       + sum((["--set", s] for s in args.set), []), check=True)
    run_step(args, out / "_step1", "growclip", 1)
    for m in names:
        if not (out / m / "step1" / "eval.json").exists():
            shutil.copytree(out / "_step1" / "step1", out / m / "step1", dirs_exist_ok=True)
        for t in range(2, steps + 1):
            run_step(args, out / m, m, t)
    text = "\n".join([f"# Methods on {cfg.data.root} ({args.config})", ""] + summary_rows(out, names))
    (out / "comparison.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
