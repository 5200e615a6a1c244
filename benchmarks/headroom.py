"""Headroom: is a larger net better than the step-1 net on D^1, and on D^T, at the same budget?

Growth can only pay where it is (GROWCLIP.md section 4d). This trains from scratch a set of sizes around
the config's step-1 architecture on D^1 and on D^T (all T steps' data, read as one step), at equal
samples (every size sees B_t samples) and at equal FLOPs (every size spends what the step-1 net spends
on B_t samples, so a bigger net sees fewer), over seeds, and scores each model on the selection split.

    python benchmarks/headroom.py --config demo --seeds 0,1,2 --jobs 2 --out docs/results/headroom_v2_cpu2_DATE
    python benchmarks/headroom.py --config demo --data-root data/builtin-v1 --out ...   # corpus v1

B_t = ``--epochs`` x N^1 samples on every data size by default (the demo's step-1 budget with the
config's 30 epochs; ``--budget per-step``: ``--epochs`` x N^t, the step's own budget). Every run is
``launchers/grow.py --step 1`` in a run folder of its own under ``<out>/runs`` (re-running resumes and
skips finished runs), on one rank each, ``--jobs`` at once with the cores split between them. Writes
``headroom.md`` (the table), ``headroom.png`` (selection top-1 against parameters, one line per data
size and matching mode) and ``summary.json`` ({"protocol", "headroom": rows}); the rows' schema is
issue 31's: data_step, arch, params, seed, match, samples, tflops, top1_mean, i2t_r1 (selection split,
percent), corpus.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, machine, new_plot, save_plot  # noqa: E402
from benchmarks.growth_pays import selection_eval  # noqa: E402
from growclip_ds.arch import ArchConfig  # noqa: E402
from growclip_ds.data.builtin import recorded_corpus  # noqa: E402
from growclip_ds.data.manifest import Manifest, ShardEntry  # noqa: E402
from growclip_ds.eval.sets import EVAL_DIR  # noqa: E402
from growclip_ds.model.clip import param_count  # noqa: E402
from growclip_ds.model.flops import train_flops  # noqa: E402
from growclip_train.presets import load_config  # noqa: E402
from growclip_train.local_launch import free_port, local_command, local_env  # noqa: E402
from growclip_train.rundir import RunDir  # noqa: E402

BASE = "base"


def sizes(a: ArchConfig) -> dict[str, dict]:
    """Size name -> arch overrides: about 0.35x, 1x, 1.7x (depth), 2.2x and 3.3x (width) the step-1 net's
    parameters at the demo's shape."""
    return {
        "narrow": {"img_heads": max(1, a.img_heads // 2), "txt_heads": max(1, a.txt_heads // 2)},
        BASE: {},
        "deep": {"img_blocks": 2 * a.img_blocks, "txt_blocks": 2 * a.txt_blocks},
        "wide": {"img_heads": a.img_heads + a.img_heads // 2, "txt_heads": a.txt_heads + a.txt_heads // 2},
        "wider": {"img_heads": 2 * a.img_heads, "txt_heads": 2 * a.txt_heads},
    }


def one_step_data(src: Path, out: Path, t: int) -> Path:
    """A data root whose only step is D^t of ``src``: a manifest pointing at ``src``'s shards, its eval
    sets through a link (the tokenizer is read from ``src`` by ``data.tokenizer``)."""
    m = Manifest.load(src)
    out.mkdir(parents=True, exist_ok=True)
    Manifest(out, [ShardEntry(e.path, 1, e.num_samples, e.holdout) for e in m.shards(t)]).save()
    link = out / EVAL_DIR
    if not link.exists():
        link.symlink_to((src / EVAL_DIR).resolve(), target_is_directory=True)
    return out


def plan(cfg, src: Path, out: Path, data_steps: list[int], seeds: list[int], epochs: float, per_step: bool,
         names: list[str], matches: dict[str, list[str]]) -> list[dict]:
    """Every run, seed by seed (a cut-short map is balanced): its folder, its ``--set`` overrides and the row
    fields known before it runs. ``matches``: mode -> the sizes run in it (the step-1 net's one run is both)."""
    m, base_arch = Manifest.load(src), cfg.arch
    unit = train_flops(base_arch)
    data = {t: one_step_data(src, out / "data" / f"D{t}", t) for t in data_steps}
    runs = []
    for seed in seeds:
        for t in data_steps:
            budget = round(epochs * m.num_samples(t if per_step else 1))
            for name in names:
                over = sizes(base_arch)[name]
                arch = ArchConfig.from_dict({**base_arch.__dict__, **over}, "arch")
                for match in (("samples",) if name == BASE else [k for k, v in matches.items() if name in v]):
                    # one rank, the whole global batch in one micro-batch: the contrastive loss sees the same
                    # negatives as the config's multi-rank run (features gathered across ranks)
                    sets = [f"data.root={data[t]}", f"data.tokenizer={(src / 'tokenizer').resolve()}",
                            f"train.seed={seed}", f"train.micro_batch={cfg.train.global_batch}",
                            *(f"arch.{k}={v}" for k, v in over.items())]
                    if match == "samples":
                        sets.append(f"train.num_samples={budget}")
                    else:   # F = budget x the step-1 net's FLOPs per sample; step 1's D^1 here holds N^t samples
                        sets += ["train.match=flops", f"train.flops_per_sample={unit}",
                                 f"train.epochs={budget / m.num_samples(t)!r}"]
                    runs.append({"folder": out / "runs" / f"D{t}" / name / match / f"s{seed}", "sets": sets,
                                 "row": {"data_step": t, "arch": name, "params": param_count(arch), "seed": seed,
                                         "match": match, "budget_samples": budget}})
    return runs


def run_all(runs: list[dict], config: str, overrides: list[str], jobs: int, threads: int, logs: Path,
            tag: str = "headroom") -> list[str]:
    """Launch the unfinished runs, ``jobs`` at a time (one rank each); returns the failed folders. A run trains
    growth step ``run["step"]`` (default 1) with the extra launcher arguments ``run["args"]`` (e.g. --method)."""
    def finished(r):
        return RunDir(r["folder"]).step(r.get("step", 1)).finished

    todo = [r for r in runs if not finished(r)]
    logs.mkdir(parents=True, exist_ok=True)
    running, failed, t0, n = [], [], time.time(), len(todo)
    print(f"[{tag}] {len(runs) - n} of {len(runs)} runs already done; {n} to run, {jobs} at a time", flush=True)
    while todo or running:
        for r, p, started, log in list(running):
            if p.poll() is None:
                continue
            running.remove((r, p, started, log))
            log.close()
            ok = p.returncode == 0 and finished(r)
            failed += [] if ok else [str(r["folder"])]
            done = n - len(todo) - len(running)
            print(f"[{tag}] {done}/{n} {'done' if ok else 'FAILED'} {r['folder']} ({time.time() - started:.0f} s; "
                  f"elapsed {(time.time() - t0) / 60:.1f} min)", flush=True)
        while todo and len(running) < jobs:
            r = todo.pop(0)
            cmd = local_command(["launchers/grow.py", "--step", str(r.get("step", 1)), *r.get("args", ()), "--config",
                                 config, "--run-dir", str(r["folder"]), "--no-progress"]
                                + sum((["--set", s] for s in overrides + r["sets"]), []), 1, launcher="python")
            env = local_env(MASTER_PORT=str(free_port()), OMP_NUM_THREADS=str(threads))
            log = open(logs / ("_".join(r["folder"].parts[-4:]) + ".log"), "w")
            log.write("$ " + shlex.join(cmd) + "\n")
            log.flush()
            proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
            running.append((r, proc, time.time(), log))
        time.sleep(0.5)
    return failed


def rows_of(runs: list[dict], corpus: str) -> list[dict]:
    """The finished runs' rows (the step-1 net's equal-samples run is also its equal-FLOPs row)."""
    out = []
    for r in runs:
        step = RunDir(r["folder"]).step(1)
        if not step.finished:
            continue
        done = step.phase("train").read_done()
        ev = selection_eval(step.path)
        row = {**r["row"], "samples": done["samples_seen"], "tflops": round(done["train_flops"] / 1e12, 4),
               "top1_mean": round(100 * ev["mean_top1"], 2),
               "i2t_r1": round(100 * ev["eval"]["retrieval"]["image_to_text"]["R@1"], 2), "corpus": corpus,
               "zero_shot": {k: round(100 * v["top1"], 2) for k, v in ev["eval"]["zero_shot"].items()}}
        out.append(row)
        if row["arch"] == BASE:
            out.append({**row, "match": "flops"})
    return out


def table(rows: list[dict]) -> list[str]:
    """Mean (sd) selection top-1 per data step, matching mode and size; the gain over the step-1 net."""
    names = list(dict.fromkeys(r["arch"] for r in rows))
    params = {r["arch"]: r["params"] for r in rows}
    lines = ["| data | match | " + " | ".join(f"{n} ({params[n]:,})" for n in names) + " |",
             "|---|---|" + "---|" * len(names)]
    for (t, match), stats in aggregate(rows).items():
        cells = []
        for n in names:
            s = stats.get(n)
            gain = "" if s is None or n == BASE or BASE not in stats else f", {s['mean'] - stats[BASE]['mean']:+.1f}"
            cells.append("-" if s is None else f"{s['mean']:.1f} ({s['sd']:.1f}{gain})")
        lines.append(f"| D^{t} | {match} | " + " | ".join(cells) + " |")
    return lines


def task_table(rows: list[dict], match: str = "flops") -> list[str]:
    """Mean top-1 per task (over seeds) of every size at one matching mode: where the headroom is."""
    tasks = list(dict.fromkeys(t for r in rows for t in r["zero_shot"]))
    lines = ["| data | size | " + " | ".join(tasks) + " | i2t R@1 |", "|---|---|" + "---|" * (len(tasks) + 1)]
    by: dict = {}
    for r in rows:
        if r["match"] == match:
            by.setdefault((r["data_step"], r["arch"]), []).append(r)
    for (t, name), rs in by.items():
        cells = [f"{statistics.fmean(r['zero_shot'][k] for r in rs):.1f}" for k in tasks]
        lines.append(f"| D^{t} | {name} | " + " | ".join(cells) + f" | {statistics.fmean(r['i2t_r1'] for r in rs):.1f} |")
    return lines


def aggregate(rows: list[dict], key: str = "top1_mean") -> dict:
    """(data_step, match) -> size -> {mean, sd, n, params} over seeds."""
    by: dict = {}
    for r in rows:
        by.setdefault((r["data_step"], r["match"]), {}).setdefault(r["arch"], []).append(r)
    return {k: {n: {"mean": statistics.fmean(x[key] for x in v), "n": len(v), "params": v[0]["params"],
                    "sd": statistics.stdev(x[key] for x in v) if len(v) > 1 else 0.0} for n, v in d.items()}
            for k, d in sorted(by.items())}


def verdict(rows: list[dict], first: int, last: int) -> dict:
    """Issue 31's thresholds at equal FLOPs: on D^1 no size beats the step-1 net by more than 1 point; on
    D^T a net of 2-4x its parameters beats it by at least 5 (any D^t past D^1 is held to the D^T threshold)."""
    agg = aggregate(rows)
    out = {}
    for t in sorted({first, last}):
        want = "none" if t == 1 else "headroom"
        stats = agg.get((t, "flops"), {})
        if BASE not in stats:
            continue
        base = stats[BASE]
        gains = {n: round(s["mean"] - base["mean"], 2) for n, s in stats.items() if n != BASE}
        big = {n: g for n, g in gains.items() if 2 <= stats[n]["params"] / base["params"] <= 4}
        holds = max(gains.values(), default=0) <= 1 if want == "none" else max(big.values(), default=-99) >= 5
        out[f"D{t}"] = {"want": want, "gains_over_base": gains, "gains_2_4x": big, "holds": holds}
    return out


def plot(rows: list[dict], path: Path) -> None:
    fig, ax = new_plot()
    for (t, match), stats in aggregate(rows).items():
        pts = sorted((s["params"], s["mean"], s["sd"]) for s in stats.values())
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                    linestyle="-" if match == "flops" else "--", label=f"D^{t}, equal {match}")
    ax.set_xscale("log")
    save_plot(fig, ax, path, "parameters", "mean zero-shot top-1 (%), selection split",
              "headroom: from scratch at equal samples / equal FLOPs (bars: sd over seeds)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="demo", help="preset or JSON file: the step-1 architecture and recipe")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    ap.add_argument("--data-root", default="", help="a built-in or split data folder (default: the config's data.root)")
    ap.add_argument("--data-steps", default="", help="comma list of t for D^t (default: 1 and T)")
    ap.add_argument("--sizes", default="", help=f"comma list of sizes (default: all: {', '.join(sizes(ArchConfig()))})")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=float, default=0.0, help="B_t in passes over D^1 (default: the config's train.epochs)")
    ap.add_argument("--budget", choices=("step1", "per-step"), default="step1",
                    help="step1: B_t = epochs x N^1 on every D^t; per-step: epochs x N^t")
    ap.add_argument("--match", default="samples,flops", help="which matching modes to run (the step-1 net's one run "
                                                             "is both)")
    ap.add_argument("--samples-sizes", default="", help="the sizes run at equal samples (default: --sizes)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="OMP threads per run (default: cores / jobs)")
    ap.add_argument("--with", dest="others", action="append", default=[], metavar="SUMMARY",
                    help="another headroom summary.json (e.g. the other corpus): its rows are added to summary.json "
                         "(the table and the plot show this run's rows only)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    cfg = load_config(args.config, args.set)
    src = Path(args.data_root or cfg.data.root).resolve()
    manifest = Manifest.load(src)
    steps = [int(s) for s in args.data_steps.split(",")] if args.data_steps else [1, manifest.num_steps]
    names = args.sizes.split(",") if args.sizes else list(sizes(cfg.arch))
    unknown = set(names) - set(sizes(cfg.arch))
    if unknown:
        raise SystemExit(f"--sizes: unknown {sorted(unknown)}; known: {', '.join(sizes(cfg.arch))}")
    out = Path(args.out).resolve()
    runs = plan(cfg, src, out, steps, [int(s) for s in args.seeds.split(",")], args.epochs or cfg.train.epochs,
                args.budget == "per-step", names,
                {m: (args.samples_sizes.split(",") if m == "samples" and args.samples_sizes else names)
                 for m in args.match.split(",")})
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    failed = run_all(runs, args.config, args.set, args.jobs, threads, out / "logs")
    corpus = recorded_corpus(src) or "own data"
    rows = rows_of(runs, corpus)
    lines = [f"# Headroom on {src.name} (corpus {corpus}), {machine()}", "",
             f"Mean zero-shot top-1 on the selection split, % (sd over seeds, gain over `{BASE}`); budget "
             f"{args.budget}, {args.epochs or cfg.train.epochs} passes over D^{'t' if args.budget == 'per-step' else 1}.",
             "", *table(rows)]
    ver = verdict(rows, steps[0], steps[-1])
    lines += ["", "Issue 31's thresholds at equal FLOPs: " + json.dumps(ver), "",
              "Per task at equal FLOPs, mean over seeds (selection split, %):", "", *task_table(rows)]
    (out / "headroom.md").write_text("\n".join(lines) + "\n")
    summary = {"protocol": {"config": args.config, "sets": args.set, "data_root": str(src), "corpus": corpus,
                            "step1_arch": BASE, "sizes": {n: sizes(cfg.arch)[n] for n in names},
                            "budget": args.budget, "epochs": args.epochs or cfg.train.epochs, "ranks": 1,
                            "machine": machine(), "verdict": ver},
               "headroom": rows + [r for f in args.others for r in json.loads(Path(f).read_text())["headroom"]]}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    if rows:
        plot(rows, out / "headroom.png")
    print("\n".join(lines))
    if failed:
        print(f"[headroom] {len(failed)} run(s) failed, first: {failed[0]} (logs: {out / 'logs'})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
