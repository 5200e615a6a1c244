"""Grow or continue? The headroom a growth rule needs: from the same step t-1 model, growth step t either
continues the net (TWP) or grows it into a fixed candidate (GrowCLIP with ``growth.plan``), at the same
training FLOPs, over seeds. The from-scratch map (benchmarks/headroom.py) cannot show this: there both nets
start from nothing, here the continued net has trained on every earlier step
(docs/results/growth_map_protocol_cpu2_2026-12-07, section 4).

    # each seed folder (reproduce.py --match flops output) holds a run "twp" with steps 1..t-1 finished
    python benchmarks/grow_or_continue.py runs/gp3 --step 4 --candidates 18 --budgets 7.5,15 --out runs/goc

Every arm is a run folder ``<out>/b<B>/s<S>/<arm>`` holding copies of the source's steps 1..t-1 and its
tokenizer, then ``launchers/grow.py --step t`` with reproduce.py's settings: ``train.match=flops`` and B passes
split as it splits them (the step's budget: B x N^t x the step-1 net's FLOPs per sample), one rank with the
whole global batch per step (the demo's two ranks see the same negatives), ``--jobs`` at once; re-running skips
finished arms. Scores: mean zero-shot top-1 on the selection split (what every choice reads) and on the test
split (reported). Writes ``grow_or_continue.md`` and ``summary.json`` ({"protocol", "rows", "paired"}: per
budget and grown arm the per-seed difference grown - continued on the selection split, its mean and sd;
"paired_i2t_r1": the same for the test split's image-to-text R@1).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine  # noqa: E402
from benchmarks.growth_pays import seeds_of, selection_top1  # noqa: E402
from benchmarks.headroom import run_all  # noqa: E402
from benchmarks.reproduce import protocol_sets  # noqa: E402
from growclip_train.report import step_rows  # noqa: E402
from growclip_train.rundir import RunDir  # noqa: E402

CONTINUE = "continue"


def plan_for(step: int, candidate: int) -> str:
    """growth.plan that grows into ``candidate`` at ``step`` (earlier entries: keep the net; those steps are copied)."""
    return ",".join(["0"] * (step - 2) + [str(candidate)])


def arms(candidates: list[int], step: int) -> dict[str, list[str]]:
    """Arm name -> its extra launcher arguments: continuing (TWP) and one growth per candidate."""
    out = {CONTINUE: ["--method", "twp"]}
    for c in candidates:
        out[f"grow-{c}"] = ["--method", "growclip", "--set", f"growth.plan={plan_for(step, c)}"]
    return out


def prepare(source: Path, folder: Path, step: int) -> None:
    """``folder`` starts as a copy of ``source``'s steps 1..step-1 (checkpoints left out) and tokenizer."""
    src, dst = RunDir(source), RunDir(folder)
    missing = [t for t in range(1, step) if not src.step(t).finished]
    if missing:
        raise SystemExit(f"{source}: step(s) {missing} not finished; grow_or_continue starts from a finished step "
                         f"{step - 1} (run reproduce.py --steps {step - 1} first)")
    for t in range(1, step):
        if not dst.step(t).finished:
            shutil.copytree(src.step(t).path, dst.step(t).path, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("checkpoints"))
    if not dst.tokenizer.exists():
        shutil.copytree(src.tokenizer, dst.tokenizer)


def paired(rows: list[dict], key: str = "top1_mean") -> list[dict]:
    """Per budget and grown arm: the per-seed difference grown - continued of ``key``, mean and sd."""
    by = {(r["budget"], r["arm"], r["seed"]): r[key] for r in rows}
    out = []
    for b, arm in sorted({(r["budget"], r["arm"]) for r in rows if r["arm"] != CONTINUE}):
        seeds = sorted(s for (bb, a, s) in by if (bb, a) == (b, arm) and (b, CONTINUE, s) in by)
        diffs = [round(by[(b, arm, s)] - by[(b, CONTINUE, s)], 2) for s in seeds]
        if diffs:
            out.append({"budget": b, "arm": arm, "seeds": seeds, "diff": diffs, "mean": round(statistics.fmean(diffs), 2),
                        "sd": round(statistics.stdev(diffs), 2) if len(diffs) > 1 else 0.0})
    return out


def row_of(folder: Path, step: int, budget: float, arm: str, seed: int) -> dict | None:
    rec = next((r for r in step_rows(folder) if r["step"] == step), None)
    if rec is None:
        return None
    return {"budget": budget, "arm": arm, "seed": seed, "params": rec["arch"]["params"],
            "top1_mean": round(100 * selection_top1(RunDir(folder).step(step).path), 2),
            "test_top1_mean": round(100 * rec["mean_top1"], 2),
            "i2t_r1": round(100 * rec["retrieval"]["image_to_text"]["R@1"], 2),
            "samples": rec["samples"], "tflops": round(rec["train_flops"] / 1e12, 4)}


def table(rows: list[dict], pairs: list[dict]) -> list[str]:
    out = ["| budget | arm | params | selection top-1 per seed | mean ± sd | test top-1, mean | test i2t R@1, mean | "
           "grown - continued (selection), per seed: mean ± sd |", "|---|---|---|---|---|---|---|---|"]
    diff = {(p["budget"], p["arm"]): p for p in pairs}
    for b, arm in sorted({(r["budget"], r["arm"]) for r in rows}, key=lambda k: (k[0], k[1] != CONTINUE, k[1])):
        rs = sorted((r for r in rows if (r["budget"], r["arm"]) == (b, arm)), key=lambda r: r["seed"])
        sel = [r["top1_mean"] for r in rs]
        sd = statistics.stdev(sel) if len(sel) > 1 else 0.0
        p = diff.get((b, arm))
        d = "-" if p is None else f"{', '.join(f'{x:+.1f}' for x in p['diff'])}: {p['mean']:+.1f} ± {p['sd']:.1f}"
        out.append(f"| {b:g} | {arm} | {rs[0]['params']:,} | {', '.join(f'{x:.1f}' for x in sel)} | "
                   f"{statistics.fmean(sel):.1f} ± {sd:.1f} | {statistics.fmean(r['test_top1_mean'] for r in rs):.1f} | "
                   f"{statistics.fmean(r['i2t_r1'] for r in rs):.1f} | {d} |")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", help="folder of seed folders s0, s1, ... (reproduce.py output)")
    ap.add_argument("--source", default="twp", help="the run in each seed folder whose steps 1..t-1 both arms start from")
    ap.add_argument("--step", type=int, required=True, help="the growth step t to run both ways")
    ap.add_argument("--candidates", default="18", help="comma list of GAS candidate indices to grow into")
    ap.add_argument("--budgets", default="7.5", help="comma list of step budgets B (train.epochs with train.match=flops)")
    ap.add_argument("--config", default="demo")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="overrides for every arm")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="OMP threads per run (default: cores / jobs)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if a.step < 2:
        raise SystemExit("--step: growth starts at step 2")
    from growclip_train.presets import load_config

    cfg = load_config(a.config, a.set)
    seeds = seeds_of(Path(a.runs))
    if not seeds:
        raise SystemExit(f"{a.runs}: no seed folders s0, s1, ...")
    budgets = [float(b) for b in a.budgets.split(",")]
    out, runs = Path(a.out).resolve(), []
    for b in budgets:
        for seed, folder in seeds.items():
            for arm, args in arms([int(c) for c in a.candidates.split(",")], a.step).items():
                run = out / f"b{b:g}" / f"s{seed}" / arm
                prepare(folder / a.source, run, a.step)
                sets = [*protocol_sets(b, "flops", cfg.train.global_batch), f"train.seed={seed}"]   # one rank
                runs.append({"folder": run, "step": a.step, "args": args, "sets": sets,
                             "row": {"budget": b, "arm": arm, "seed": seed}})
    threads = a.threads or max(1, (os.cpu_count() or 1) // a.jobs)
    failed = run_all(runs, a.config, a.set, a.jobs, threads, out / "logs", tag="grow_or_continue")
    rows = [x for r in runs if (x := row_of(r["folder"], a.step, **r["row"])) is not None]
    pairs = paired(rows)
    lines = [f"# Grow or continue at step {a.step} ({a.runs}, from its `{a.source}` runs), {machine()}", "",
             "Mean zero-shot top-1, %; the same training FLOPs per arm at each budget.", "", *table(rows, pairs)]
    (out / "grow_or_continue.md").write_text("\n".join(lines) + "\n")
    protocol = {"runs": str(a.runs), "source": a.source, "step": a.step, "config": a.config, "sets": a.set,
                "candidates": a.candidates, "budgets": budgets, "ranks": 1, "machine": machine(),
                "quality": "top1_mean: selection split; test_top1_mean: test split (%)"}
    summary = {"protocol": protocol, "rows": rows, "paired": pairs, "paired_i2t_r1": paired(rows, "i2t_r1")}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print("\n".join(lines))
    if failed:
        print(f"[grow_or_continue] {len(failed)} run(s) failed, first: {failed[0]} (logs: {out / 'logs'})",
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
