"""Does growth pay? GrowCLIP against the baselines at equal FLOPs per step, over seeds (issue 24).

    # 1. each seed: every method at matched compute (reproduce.py --match flops), the recipe under test
    python benchmarks/reproduce.py --match flops --inherit preserve --no-tables --jobs 2 \
        --methods growclip,twp,tfs,cumulative-all,tfs-chosen --set train.seed=S --out runs/gp/sS
    # 2. each GrowCLIP schedule variant and seed (the folder holds the seed's step 1, copied):
    python benchmarks/reproduce.py --match flops --inherit preserve --no-tables --methods growclip \
        --set train.seed=S --set growth.select=compute ... --out runs/gp-var/NAME/sS
    # 3. the summary: per step mean and spread over seeds, the frontier plot, variants on the selection split
    python benchmarks/growth_pays.py runs/gp --variants runs/gp-var --out docs/results/growth_pays_cpu2_DATE
    # a variant added later, to an earlier summary (its method rows and variants kept)
    python benchmarks/growth_pays.py --previous docs/results/.../summary.json --variants runs/gp-var2 --out DIR

Writes ``summary.json`` ({"protocol", "rows", "variants", "efficiency"}), ``frontier.md`` (tables) and
``frontier.png`` (mean top-1 against cumulative training TFLOP, error bars = min..max over seeds).
Variants are ranked by the *selection* split (the split GAS and every choice use); the test split is
only reported.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import new_plot, save_plot  # noqa: E402
from benchmarks.reproduce import record_commands  # noqa: E402
from growclip_train.report import step_rows  # noqa: E402
from growclip_train.rundir import RunDir  # noqa: E402

METHODS = ("growclip", "twp", "tfs", "tfs-chosen", "cumulative-all")


def selection_eval(step_dir: Path) -> dict:
    """A step's model on the selection split: {"mean_top1", "eval"} (cached in the step folder)."""
    f = step_dir / "selection_eval.json"
    if f.exists():
        return json.loads(f.read_text())
    from growclip_ds.eval.evaluate import selection_accuracy
    from growclip_train.step_eval import evaluate_step

    res = evaluate_step(step_dir, role="selection", device="cpu")
    rec = {"mean_top1": selection_accuracy(res), "eval": res}
    f.write_text(json.dumps(rec))
    return rec


def selection_top1(step_dir: Path) -> float:
    """Mean zero-shot top-1 of a step's model on the selection split."""
    return selection_eval(step_dir)["mean_top1"]


def run_rows(method: str, seed: int, run: Path, selection: bool) -> list[dict]:
    out = []
    for r in step_rows(run):
        row = {"method": method, "seed": seed, "step": r["step"], "top1_mean": round(100 * r["mean_top1"], 2),
               "i2t_r1": round(100 * r["retrieval"]["image_to_text"]["R@1"], 2),
               "tflops_cum": round(r["cumulative_flops"] / 1e12, 4), "tflops_step": round(r["train_flops"] / 1e12, 4),
               "params": r["arch"]["params"], "samples": r["samples"]}
        if selection:
            row["selection_top1"] = round(100 * selection_top1(RunDir(run).step(r["step"]).path), 2)
        out.append(row)
    return out


def seeds_of(root: Path) -> dict[int, Path]:
    return {int(p.name[1:]): p for p in sorted(root.glob("s[0-9]*")) if p.is_dir()}


def aggregate(rows: list[dict], key: str) -> dict:
    """(method, step) -> {mean, min, max, sd, n} of ``key`` over seeds."""
    by = {}
    for r in rows:
        by.setdefault((r["method"], r["step"]), []).append(r[key])
    return {k: {"mean": statistics.fmean(v), "min": min(v), "max": max(v),
                "sd": statistics.stdev(v) if len(v) > 1 else 0.0, "n": len(v)} for k, v in by.items()}


def crossing_flops(curve: list[tuple[float, float]], target: float) -> float | None:
    """The cumulative FLOPs at which a (flops, quality) curve first reaches ``target`` (linear between points)."""
    prev = (0.0, None)
    for x, y in curve:
        if y >= target:
            if prev[1] is None or prev[1] >= target:
                return x
            return prev[0] + (target - prev[1]) / (y - prev[1]) * (x - prev[0])
        prev = (x, y)
    return None


def efficiency(rows: list[dict]) -> dict:
    """The paper's efficiency row: cumulative FLOPs GrowCLIP (mean over seeds) needs to reach the mean step-4
    quality of its chosen architecture trained from scratch on all data, over that run's step-4 FLOPs."""
    top, flops = aggregate(rows, "top1_mean"), aggregate(rows, "tflops_cum")
    steps = sorted(s for m, s in top if m == "tfs-chosen")
    if not steps:
        return {"tfs_chosen_quality_flops_ratio": None, "why": "no tfs-chosen run"}
    last = steps[-1]
    target = top[("tfs-chosen", last)]["mean"]
    chosen_step = [r for r in rows if r["method"] == "tfs-chosen" and r["step"] == last]
    denom = statistics.fmean(r["tflops_step"] for r in chosen_step)
    curve = sorted((flops[k]["mean"], top[k]["mean"]) for k in top if k[0] == "growclip")
    need = crossing_flops(curve, target)
    return {"tfs_chosen_quality_flops_ratio": None if need is None else round(need / denom, 3),
            "target_top1_mean": round(target, 2), "tfs_chosen_step_tflops": round(denom, 4),
            "growclip_tflops_to_target": None if need is None else round(need, 4),
            "note": "growclip never reaches the target" if need is None else ""}


def paper_step_ratio(rows: list[dict]) -> dict:
    """The paper's Table 7 accounting, step 4 only: the fraction of GrowCLIP's last-step FLOP budget at which
    its model first reaches the last-step quality of its chosen architecture trained from scratch with the full
    budget (tfs-chosen). Measured at the step's two ends (the step t-1 model at fraction 0, the step's model at
    1), linear in between: None when even the full budget does not reach it."""
    top = aggregate(rows, "top1_mean")
    steps = sorted(s for m, s in top if m == "tfs-chosen")
    if not steps or ("growclip", steps[-1]) not in top:
        return {"paper_step_ratio": None, "paper_step_note": "no tfs-chosen or growclip run at the last step"}
    last = steps[-1]
    target, end, start = top[("tfs-chosen", last)]["mean"], top[("growclip", last)]["mean"], top[("growclip", last - 1)]["mean"]
    if end < target:
        return {"paper_step_ratio": None, "paper_step_note": f"not reached: GrowCLIP's step {last} model ({end:.2f}) is "
                f"below its chosen architecture from scratch ({target:.2f}) at 100% of the step's budget"}
    if start >= target:   # growth kept the function, so the step's model at fraction 0 is the step t-1 model
        return {"paper_step_ratio": 0.0, "paper_step_note": f"reached before any step-{last} training: the step "
                f"{last - 1} model ({start:.2f}) is already at or above the reference ({target:.2f}); this accounting "
                "counts steps 1..t-1 as free, read the cumulative ratio"}
    return {"paper_step_ratio": round((target - start) / (end - start), 3),
            "paper_step_note": "linear between the step's two ends"}


def efficiency_vs_headroom(rows: list[dict], headroom: list[dict], arch: str) -> dict:
    """Both accountings on the selection split, with the from-scratch reference taken from the headroom map:
    ``arch`` (the architecture GrowCLIP ends with) trained on D^T at the step's FLOP budget (match=flops), over
    its seeds. Paper's: the fraction of the last step's budget GrowCLIP needs to reach it (linear between the
    step's two ends); cumulative: GrowCLIP's FLOPs over steps 1..T to reach it, over the reference's FLOPs."""
    last = max(r["step"] for r in rows if r["method"] == "growclip")
    ref = [h for h in headroom if h["arch"] == arch and h["match"] == "flops" and h["data_step"] == last]
    if not ref:
        return {"reference": None, "why": f"no headroom rows for {arch} at D^{last}, match=flops"}
    target = statistics.fmean(h["top1_mean"] for h in ref)
    ref_tflops = statistics.fmean(h["tflops"] for h in ref)
    g = [r for r in rows if r["method"] == "growclip" and "selection_top1" in r]
    sel, fl = aggregate(g, "selection_top1"), aggregate(g, "tflops_cum")
    curve = sorted((fl[k]["mean"], sel[k]["mean"]) for k in sel)
    need = crossing_flops(curve, target)
    start, end = sel[("growclip", last - 1)]["mean"], sel[("growclip", last)]["mean"]
    step_ratio = None if end < target else (0.0 if start >= target else (target - start) / (end - start))
    return {"reference": f"{arch} from scratch on D^{last} at equal FLOPs (headroom map, {len(ref)} runs)",
            "reference_selection_top1": round(target, 2), "reference_tflops": round(ref_tflops, 4),
            "growclip_selection_top1_last": round(end, 2),
            "paper_step_ratio_selection": None if step_ratio is None else round(step_ratio, 3),
            "cumulative_ratio_selection": None if need is None else round(need / ref_tflops, 3)}


def variant_table(variants: dict[str, list[dict]]) -> list[str]:
    common = set.intersection(*({r["step"] for r in rows} for rows in variants.values()))
    variants = {k: [r for r in rows if r["step"] in common] for k, rows in variants.items()}   # compare like with like
    steps = sorted(t for t in common if t > 1)
    which = " / ".join(map(str, steps))
    out = ["## GrowCLIP variants, ranked by the selection split (test split only reported), mean over seeds", "",
           f"| variant | seeds | selection top-1, steps {which} | test top-1, steps {which} | "
           f"cum. TFLOP at step {max(steps)} | params at step {max(steps)} |", "|---|---|---|---|---|---|"]
    ranked = sorted(variants.items(), key=lambda kv: -_mean_sel(kv[1]))
    for name, rows in ranked:
        sel, test, fl = aggregate(rows, "selection_top1"), aggregate(rows, "top1_mean"), aggregate(rows, "tflops_cum")
        p4 = sorted({r["params"] for r in rows if r["step"] == max(steps)})
        out.append(f"| {name} | {len({r['seed'] for r in rows})} | "
                   + " / ".join(_cell(sel, s) for s in steps) + " | " + " / ".join(_cell(test, s) for s in steps) + " | "
                   + f"{fl[('growclip', max(steps))]['mean']:.2f} | {', '.join(f'{p:,}' for p in p4)} |")
    return out


def _cell(agg: dict, step: int) -> str:
    a = agg.get(("growclip", step))
    return "-" if a is None else f"{a['mean']:.1f}" + (f" (n={a['n']})" if a["n"] < 3 else "")


def _mean_sel(rows: list[dict]) -> float:
    """A variant's figure of merit: mean selection top-1 over steps 2-4 and seeds."""
    return statistics.fmean(r["selection_top1"] for r in rows if r["step"] > 1)


def method_table(rows: list[dict]) -> list[str]:
    top, r1, fl = aggregate(rows, "top1_mean"), aggregate(rows, "i2t_r1"), aggregate(rows, "tflops_cum")
    steps = sorted({r["step"] for r in rows})
    out = ["## Methods at matched compute: test split, mean over seeds (min..max)", "",
           "| method | " + " | ".join(f"step {s}: top-1 / R@1 / cum. TFLOP" for s in steps) + " |",
           "|---|" + "---|" * len(steps)]
    for m in METHODS:
        if not any(k[0] == m for k in top):
            continue
        cells = []
        for s in steps:
            k = (m, s)
            cells.append("-" if k not in top else
                         f"{top[k]['mean']:.1f} ({top[k]['min']:.1f}..{top[k]['max']:.1f}) / {r1[k]['mean']:.1f} / "
                         f"{fl[k]['mean']:.2f}")
        out.append(f"| {m} | " + " | ".join(cells) + " |")
    return out


def plot(rows: list[dict], path: Path) -> None:
    top, fl = aggregate(rows, "top1_mean"), aggregate(rows, "tflops_cum")
    fig, ax = new_plot()
    for m in METHODS:
        keys = sorted(k for k in top if k[0] == m)
        if not keys:
            continue
        x = [fl[k]["mean"] for k in keys]
        y = [top[k]["mean"] for k in keys]
        err = [[top[k]["mean"] - top[k]["min"] for k in keys], [top[k]["max"] - top[k]["mean"] for k in keys]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=m)
    save_plot(fig, ax, path, "cumulative training TFLOP (analytic)", "mean zero-shot top-1 (%), test split",
              "quality vs compute, matched FLOPs per step (bars: min..max over seeds)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="?", default="",
                    help="folder of seed folders s0, s1, ... each a reproduce.py --match flops output")
    ap.add_argument("--variants", default="", help="folder of variant folders, each holding seed folders")
    ap.add_argument("--previous", default="", metavar="SUMMARY",
                    help="an earlier summary.json: its method rows (when no RUNS are given) and variants are kept, "
                         "variants measured now are added (the same name: replaced)")
    ap.add_argument("--headroom", default="", metavar="SUMMARY",
                    help="a benchmarks/headroom.py summary.json whose headroom rows this summary carries")
    ap.add_argument("--step1-arch", default="base", help="the headroom rows' name of the step-1 net")
    ap.add_argument("--chosen-arch", default="", help="the headroom rows' name of GrowCLIP's last architecture: "
                    "efficiency on the selection split against it from scratch (no tfs-chosen run needed)")
    ap.add_argument("--corpus", default="v2", help="the headroom rows' corpus the runs trained on")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    prev = json.loads(Path(args.previous).read_text()) if args.previous else {"rows": [], "variants": {}}
    rows = [] if args.runs else prev["rows"]
    for seed, folder in (seeds_of(Path(args.runs)).items() if args.runs else ()):
        for m in METHODS:
            if (folder / m).exists():
                rows += run_rows(m, seed, folder / m, m == "growclip")
    variants = dict(prev["variants"])
    if args.variants:
        for v in sorted(Path(args.variants).iterdir()):
            vr = [r for seed, folder in seeds_of(v).items() if (folder / "growclip").exists()
                  for r in run_rows("growclip", seed, folder / "growclip", True)]
            if vr:
                variants[v.name] = vr
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    protocol = {"match": "flops", "budget": "F_t = train.epochs x N^t x training FLOPs per sample of the step-1 "
                "architecture, every method at every step", "seeds": sorted({r["seed"] for r in rows}),
                "quality": "mean zero-shot top-1 (%) on the test split; i2t_r1: image-to-text R@1 (%)",
                "choices": "variants ranked by mean selection-split top-1 over steps 2-4"}
    made = {seed: record_commands(json.loads((f / "reproduce.json").read_text()))
            for seed, f in (seeds_of(Path(args.runs)).items() if args.runs else ()) if (f / "reproduce.json").exists()}
    if made:   # the settings each seed's runs trained with (micro-batch, warm-up, budget ...), as run
        protocol["commands"] = made
    eff = {**efficiency(rows), **paper_step_ratio(rows)}
    protocol["step1_arch"] = args.step1_arch
    headroom = json.loads(Path(args.headroom).read_text())["headroom"] if args.headroom else []
    if headroom and args.chosen_arch:
        eff["selection_split"] = efficiency_vs_headroom(rows, [h for h in headroom if h.get("corpus") == args.corpus],
                                                        args.chosen_arch)
        if eff.get("paper_step_ratio") is None:
            eff["paper_step_ratio"] = eff["selection_split"].get("paper_step_ratio_selection")
            eff["paper_step_note"] = f"selection split, against {eff['selection_split']['reference']}"
    summary = {"protocol": protocol, "rows": rows, "efficiency": eff, "variants": variants, "headroom": headroom}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    lines = ["# Growth at matched compute: generated tables (benchmarks/growth_pays.py)", ""] + method_table(rows)
    lines += ["", f"Efficiency (paper's Table 7 row at this scale): {json.dumps(eff)}", ""]
    if variants:
        lines += variant_table(variants)
    (out / "frontier.md").write_text("\n".join(lines) + "\n")
    plot(rows, out / "frontier.png")
    print("\n".join(lines))
    print(f"wrote {out}/summary.json, frontier.md, frontier.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
