"""Where a growth step's wall time goes, next to a TWP step of the same training FLOPs.

    python benchmarks/step_breakdown.py --config demo --ranks 2 --rounds 2
    python benchmarks/step_breakdown.py --config demo --step1 runs/demo   # reuse a finished step 1

Trains step 1 once (or copies it from ``--step1``), then runs step 2 of growclip and of twp from it,
alternating (A B A B), each through ``launchers/grow.py`` on ``--ranks`` local ranks as a user runs it,
with ``train.match=flops`` so that both train the same FLOPs. Each step is timed from outside and
broken down from what its run folder records (``rundir``): the phases' engine set-up (data, engine
build, resume), training (the loop's device time), the rest of the loop (data waits, logging),
checkpoint writes, PIM with its kept check, writing the step's model, evaluation; what no record
covers is start-up (launcher, interpreter, imports, process group: once per phase process).
Writes docs/benchmarks/step_breakdown_<config>_w<ranks>_<device>_<date>.{json,md}.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, write_record  # noqa: E402
from growclip_train.local_launch import free_port, local_command, local_env  # noqa: E402
from growclip_train.rundir import RunDir  # noqa: E402

PARTS = ("start-up", "engine set-up", "training", "loop overhead", "checkpoint writes", "PIM + kept check",
         "search (GAS)", "write model", "evaluation")
METHODS = ("growclip", "twp")


def launch(run: Path, step: int, method: str, a, sets: list[str]) -> float:
    """Run one step as a user does; its wall seconds."""
    grow = [str(REPO / "launchers" / "grow.py"), "--step", str(step), "--method", method, "--config", a.config,
            "--run-dir", str(run), "--no-progress"] + sum((["--set", s] for s in sets), [])
    cmd = local_command(grow, a.ranks, free_port()) if a.ranks > 1 else [sys.executable, *grow]
    log = run.parent / f"{run.name}_step{step}.log"
    t0 = time.time()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, env=local_env(), stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"step {step} of {method} failed (exit {rc}); see {log}")
    return time.time() - t0


def breakdown(run: Path, step: int, total: float, ranks: int) -> dict:
    """Seconds per part of one finished step, from its records (``device_s`` counts every rank's step
    time); start-up is what they leave."""
    s = RunDir(run).step(step)
    parts = dict.fromkeys(PARTS, 0.0)
    parts["PIM + kept check"] = sum(r["wall_s"] for r in s.growth_records().values())
    gas = s.phase("gas")
    parts["search (GAS)"] = gas.read_done()["wall_s"] if gas.finished else 0.0
    # training phases only: growths' records hold what they kept, GAS's (counted above) trains nothing
    phases = [r for r in s.phase_records() if "kept" not in r and "device_s" in r]
    for rec in phases:
        train = rec.get("device_s", 0.0) / ranks
        parts["engine set-up"] += rec.get("setup_s", 0.0)
        parts["training"] += train
        parts["checkpoint writes"] += rec.get("save_s", 0.0)
        parts["loop overhead"] += rec["wall_s"] - rec.get("setup_s", 0.0) - train - rec.get("save_s", 0.0)
    parts["loop overhead"] -= parts["PIM + kept check"]   # PIM runs inside the phase that trains its output
    fin = s.read_finish()
    parts["write model"], parts["evaluation"] = fin.get("consolidate_s", 0.0), fin.get("eval_s", 0.0)
    parts["start-up"] = total - sum(parts.values())
    return {"total_s": total, "phases": len(phases), "parts": parts,
            "train_flops": sum(r.get("train_flops", 0) for r in phases)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="demo")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--step1", default="", help="a run folder whose finished step 1 to start from")
    ap.add_argument("--out", default="", help="where the runs go (default: a temporary folder, removed)")
    a = ap.parse_args(argv)
    sets = ["train.match=flops"] + a.set
    out = Path(a.out or tempfile.mkdtemp(prefix="step_breakdown_"))
    base = out / "step1"
    if a.step1:
        src = RunDir(a.step1)
        shutil.copytree(src.step(1).path, base / "step1", ignore=shutil.ignore_patterns("checkpoints"))
        shutil.copytree(src.tokenizer, RunDir(base).tokenizer)
    else:
        print(f"training step 1 of {a.config} in {base}", flush=True)
        launch(base, 1, "growclip", a, sets)
    rows = []
    for r in range(a.rounds):
        for method in METHODS:
            run = out / f"{method}_r{r}"
            shutil.copytree(base, run, ignore=shutil.ignore_patterns("checkpoints"))
            total = launch(run, 2, method, a, sets)
            rows.append({"method": method, "round": r, **breakdown(run, 2, total, a.ranks)})
            print(f"round {r + 1}/{a.rounds} {method}: {total:.1f} s", flush=True)
    summarize(rows, a, sets)
    if not a.out:
        shutil.rmtree(out, ignore_errors=True)


def summarize(rows: list[dict], a, sets: list[str]) -> None:
    """Medians per part and method, the table and the record."""
    med = {m: {k: statistics.median(x["parts"][k] for x in rows if x["method"] == m) for k in PARTS}
           for m in METHODS}
    tot = {m: statistics.median(x["total_s"] for x in rows if x["method"] == m) for m in METHODS}
    flops = {m: rows[METHODS.index(m)]["train_flops"] for m in METHODS}
    ratio = tot["growclip"] / tot["twp"]
    table = [f"# One growth step against one TWP step: {a.config}, step 2, {a.ranks} ranks, train.match=flops",
             "", f"Median over {a.rounds} rounds (A B A B), seconds; "
             f"training TFLOP growclip {flops['growclip'] / 1e12:.3f}, twp {flops['twp'] / 1e12:.3f}.", "",
             "| part | growclip | twp |", "|---|---|---|"]
    table += [f"| {k} | {med['growclip'][k]:.1f} | {med['twp'][k]:.1f} |" for k in PARTS]
    table += [f"| **total** | **{tot['growclip']:.1f}** | **{tot['twp']:.1f}** |", "",
              f"growth step / TWP step wall time: **{ratio:.3f}**",
              f"phase processes per step: growclip {rows[0]['phases']}, twp {rows[1]['phases']}"]
    print("\n".join(table))
    path = write_record(f"step_breakdown_{a.config}_w{a.ranks}",
                        {"config": a.config, "sets": sets, "ranks": a.ranks, "rounds": rows, "median_parts": med,
                         "median_total_s": tot, "growth_twp_ratio": ratio}, table)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
