"""The comparison report of a folder of run folders, one method each (its method record, ``rundir``), in the
shape of the paper's tables, with PNG plots:

    growclip-ds report runs/repro     # writes runs/repro/comparison.md and comparison_*.png

- Table 3: zero-shot top-1 per task, per step and method, with params and what each step cost;
- Table 4: retrieval R@1/5/10 at the last step;
- Table 5: the ablation of PIM@1, ST, GAS, PIM@3 at step 2 (runs made with ``--ablate``);
- Table 9: growing one dimension at a time at step 2 (runs made with ``--candidate 2^k``, against
  ``--candidate 0``);
- Table 1: every TFS run (a fixed architecture) against the fraction of the data seen;
- what each growth kept (PIM@1 / PIM@3, old and grown model's loss and selection top-1);
- TiC-CLIP's evaluation-matrix summary with each method's total cost.
A run is a "method run" when it has neither ablations nor a fixed candidate; rows are named by folder.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from growclip_ds.growth.space import FACTORS
from growclip_train.methods import RECIPES, Budget
from growclip_train.report import step_rows
from growclip_train.rundir import PIM1, PIM3, RunDir
from growclip_train.tic_matrix import eval_matrix, transfer_summary

TIC_METHODS = tuple(n for n, r in RECIPES.items() if r.budget != Budget.EPOCHS)   # budgets C or t x C
# Table 5's rows in the paper's order: the components switched off (paper: 25.7 > 24.5 > 22.6 > 21.1 > 20.8).
TABLE5 = ((), (PIM3,), ("gas", PIM3), ("gas", PIM3, "st"), ("gas", PIM1, PIM3, "st"))
COMPONENTS = (("PIM@1", PIM1), ("ST", "st"), ("GAS", "gas"), ("PIM@3", PIM3))


@dataclass
class RunRecord:
    name: str
    method: str
    ablate: tuple
    candidate: int | None
    rows: list          # report.step_rows
    path: Path
    inherit: str = "pim"   # growth.inherit of its growth steps

    @property
    def is_method_run(self) -> bool:
        return not self.ablate and self.candidate is None

    def step(self, t: int) -> dict | None:
        return next((r for r in self.rows if r["step"] == t), None)

    def cost_after_step1(self) -> dict:
        later = [r for r in self.rows if r["step"] > 1]
        return {k: sum(r[k] for r in later) for k in ("samples", "train_flops", "device_s")}


def load_runs(root) -> list[RunRecord]:
    """Every run folder under ``root`` with a method record and a finished step, methods in RECIPES order
    (folders whose name starts with "_" are helpers, e.g. reproduce.py's shared step 1)."""
    runs = []
    for p in sorted(Path(root).iterdir()):
        if p.name.startswith("_") or not RunDir(p).is_run():
            continue
        m = RunDir(p).read_method()
        rows = step_rows(p)
        if rows:
            cfg = RunDir(p).step(rows[-1]["step"]).config_file
            inherit = json.loads(cfg.read_text()).get("growth", {}).get("inherit", "pim") if cfg.exists() else "pim"
            runs.append(RunRecord(p.name, m["method"], tuple(sorted(m.get("ablate", []))), m.get("candidate"), rows, p,
                                  inherit))
    order = list(RECIPES)
    return sorted(runs, key=lambda r: (not r.is_method_run, order.index(r.method) if r.method in order else 99,
                                       r.name != r.method, r.name))


def is_comparison(root) -> bool:
    """True for a folder of run folders (not itself a run folder)."""
    root = Path(root)
    return not RunDir(root).steps() and any(p.is_dir() and RunDir(p).is_run() for p in root.iterdir())


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _size(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def data_fractions(run: RunRecord) -> dict[int, float]:
    """Share of all the data's samples seen by step t (D^t / D^T), from the run's manifest when readable."""
    from growclip_ds.data.manifest import Manifest

    try:
        cfg = RunDir(run.path).step(run.rows[0]["step"]).read_config()
        m = Manifest.load(cfg["data"]["root"])
        total = m.num_samples(list(range(1, m.num_steps + 1)))
        return {t: m.num_samples(list(range(1, t + 1))) / total for t in range(1, m.num_steps + 1)}
    except (OSError, KeyError, ValueError):
        return {}


def table3(runs: list[RunRecord]) -> list[str]:
    main = [r for r in runs if r.is_method_run]
    steps = sorted({row["step"] for r in main for row in r.rows})
    out = ["## Table 3: zero-shot top-1 (%) by step and method", "",
           "Mean over the zero-shot tasks (params in brackets); cost = what steps 2.. of the run spent "
           "(samples seen, analytic training TFLOP, measured device-seconds).", "",
           "| method | " + " | ".join(f"step {t}" for t in steps) + " | samples | TFLOP | device-s |",
           "|---|" + "---|" * (len(steps) + 3)]
    for r in main:
        cells = []
        for t in steps:
            row = r.step(t)
            cells.append("-" if row is None else f"{_pct(row['mean_top1'])} ({_size(row['arch']['params'])})")
        c = r.cost_after_step1()
        out.append(f"| {r.name} | " + " | ".join(cells) +
                   f" | {c['samples']:,} | {c['train_flops'] / 1e12:.3f} | {c['device_s']:.0f} |")
    for t in steps[1:]:
        here = [(r, r.step(t)) for r in main if r.step(t)]
        tasks = list(here[0][1]["zero_shot"])
        chance = here[0][1]["chance"]
        out += ["", f"### Step {t}: per task", "",
                "| method | params | " + " | ".join(f"{k} (chance {_pct(chance[k])})" for k in tasks) +
                " | mean | samples | TFLOP | device-s |", "|---|---|" + "---|" * (len(tasks) + 4)]
        for r, row in here:
            out.append(f"| {r.name} | {row['arch']['params']:,} | " +
                       " | ".join(_pct(row["zero_shot"][k]) for k in tasks) +
                       f" | {_pct(row['mean_top1'])} | {row['samples']:,} | {row['train_flops'] / 1e12:.3f} | "
                       f"{row['device_s']:.0f} |")
    return out


def table4(runs: list[RunRecord]) -> list[str]:
    main = [r for r in runs if r.is_method_run]
    out = ["## Table 4: retrieval (%) at each method's last step, held-out pairs of all steps", "",
           "| method | step | image→text R@1 | R@5 | R@10 | text→image R@1 | R@5 | R@10 |", "|---|---|---|---|---|---|---|---|"]
    for r in main:
        row = r.rows[-1]
        cells = [_pct(row["retrieval"][d][k]) for d in ("image_to_text", "text_to_image") for k in ("R@1", "R@5", "R@10")]
        out.append(f"| {r.name} | {row['step']} | " + " | ".join(cells) + " |")
    return out


def table5(runs: list[RunRecord], step: int = 2) -> list[str]:
    """One table per inheritance mode; with PIM@1 off both modes are the same plain inheritance, and
    with inherit=preserve PIM@3 is exact slicing (switching it off changes nothing)."""
    out = []
    for mode in sorted({r.inherit for r in runs if r.method == "growclip"}):
        grow = {r.ablate: r for r in runs if r.method == "growclip" and r.candidate is None and r.step(step)
                and (r.inherit == mode or PIM1 in r.ablate)}
        if len(grow) >= 2:
            out += (["", ""] if out else []) + _table5(grow, step, mode)
    return out


def _table5(grow: dict, step: int, mode: str) -> list[str]:
    rows = [a for a in TABLE5 if a in grow] + sorted(a for a in grow if a not in TABLE5)
    out = [f"## Table 5: ablation at step {step}, growth.inherit={mode} (✓ = on)", "",
           "Paper (ImageNet top-1): 25.7 > 24.5 > 22.6 > 21.1 > 20.8 down these rows. With PIM@1 off, "
           "inheritance is plain (beta=1, gamma=0) in either mode.", "",
           "| " + " | ".join(c for c, _ in COMPONENTS) + " | run | params | mean top-1 | mean R@1 |",
           "|" + "---|" * (len(COMPONENTS) + 4)]
    for a in rows:
        r, row = grow[a], grow[a].step(step)
        marks = ["✗" if key in a else "✓" for _, key in COMPONENTS]
        r1 = (row["retrieval"]["image_to_text"]["R@1"] + row["retrieval"]["text_to_image"]["R@1"]) / 2
        out.append("| " + " | ".join(marks) + f" | {r.name} | {row['arch']['params']:,} | {_pct(row['mean_top1'])} | "
                   f"{_pct(r1)} |")
    return out


def table9(runs: list[RunRecord], step: int = 2) -> list[str]:
    fixed = {r.candidate: r.step(step) for r in runs if r.candidate is not None and not r.ablate and r.step(step)}
    if 0 not in fixed or len(fixed) < 2:
        return []
    base = fixed[0]
    tasks = list(base["zero_shot"])
    out = [f"## Table 9: growing one dimension at step {step} (against growing none, candidate 0: "
           f"{base['arch']['params']:,} params, mean top-1 {_pct(base['mean_top1'])})", "",
           "| grown | candidate | Δ params | Δ mean top-1 | " + " | ".join(f"Δ {k}" for k in tasks) + " |",
           "|---|---|---|---|" + "---|" * len(tasks)]
    for idx in sorted(i for i in fixed if i):
        row = fixed[idx]
        grown = " + ".join(FACTORS[k][0] for k in range(len(FACTORS)) if idx >> k & 1)
        out.append(f"| {grown} | {idx} | {row['arch']['params'] - base['arch']['params']:+,} | "
                   f"{100 * (row['mean_top1'] - base['mean_top1']):+.1f} | " +
                   " | ".join(f"{100 * (row['zero_shot'][k] - base['zero_shot'][k]):+.1f}" for k in tasks) + " |")
    return out


def table1(runs: list[RunRecord]) -> list[str]:
    fixed = [r for r in runs if r.method == "tfs" and r.is_method_run]
    if len(fixed) < 2:
        return []
    steps = sorted({row["step"] for r in fixed for row in r.rows})
    frac = data_fractions(fixed[0])
    head = [f"{100 * frac[t]:.0f}% (step {t})" if t in frac else f"step {t}" for t in steps]
    out = ["## Table 1: a fixed architecture at growing data (TFS runs), mean zero-shot top-1 (%)", "",
           "| run | params (last) | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(steps)]
    for r in fixed:
        out.append(f"| {r.name} | {r.rows[-1]['arch']['params']:,} | " +
                   " | ".join(_pct(r.step(t)["mean_top1"]) if r.step(t) else "-" for t in steps) + " |")
    return out


def kept_summary(runs: list[RunRecord]) -> list[str]:
    """What each growth kept, before any training: loss on a fixed batch, selection top-1 (%)."""
    rows = []
    for r in runs:
        for row in r.rows:
            for which, rec in row.get("kept", {}).items():
                o, g = rec["kept"]["old"], rec["kept"]["grown"]
                rows.append(f"| {r.name} | {row['step']} | {which} | {rec['inherit']} | "
                            f"{o['loss']:.3f} -> {g['loss']:.3f} | {_pct(o['top1'])} -> {_pct(g['top1'])} |")
    if not rows:
        return []
    return ["## What growth kept, before any training", "",
            "pim1: the step t-1 model -> the supernet; pim3: the chosen candidate as it was inside the trained "
            "supernet -> the chosen net. Loss on one fixed batch of step t's new training data; selection accuracy "
            "(GAS's A: mean zero-shot top-1 on the selection split, or mean R@1 with retrieval sets only).", "",
            "| run | step | growth | inheritance | loss old -> grown | selection accuracy old -> grown |",
            "|---|---|---|---|---|---|", *rows]


def tic_summary(runs: list[RunRecord]) -> list[str]:
    out = ["## TiC-CLIP's evaluation matrix, summarized (mean R@1 %, model of step i on the pairs of step j)", "",
           "In-domain: diagonal; backward: j < i (old data); forward: j > i (data not seen yet). "
           "Cost: steps 2.. of the run.", "",
           "| method | in-domain | backward | forward | samples | TFLOP | device-s |", "|---|---|---|---|---|---|---|"]
    for r in (r for r in runs if r.is_method_run):
        try:
            s = transfer_summary(eval_matrix(r.path))
        except KeyError:
            continue
        c = r.cost_after_step1()
        out.append(f"| {r.name} | {_pct(s['in_domain'])} | {_pct(s['backward'])} | {_pct(s['forward'])} | "
                   f"{c['samples']:,} | {c['train_flops'] / 1e12:.3f} | {c['device_s']:.0f} |")
    return out


def plot(runs: list[RunRecord], root: Path) -> list[str]:
    """PNGs next to the report; returns their Markdown image lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = [r for r in runs if r.is_method_run]
    images = []
    colours = plt.get_cmap("tab20").colors
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, r in enumerate(main):
        tic = r.method in TIC_METHODS   # TiC-CLIP's methods dashed, GrowCLIP's baselines solid
        style = dict(marker="o", ms=4, color=colours[i % 20], ls="--" if tic else "-",
                     lw=2.5 if r.method == "growclip" else 1.2, label=r.name)
        a1.plot([x["step"] for x in r.rows], [100 * x["mean_top1"] for x in r.rows], **style)
        a2.plot([x["cumulative_flops"] / 1e12 for x in r.rows], [100 * x["mean_top1"] for x in r.rows], **style)
    chance = 100 * sum(main[0].rows[0]["chance"].values()) / len(main[0].rows[0]["chance"])
    a1.set_xlabel("growth step")
    a1.set_xticks(sorted({x["step"] for r in main for x in r.rows}))
    a2.set_xlabel("cumulative training compute (TFLOP, analytic)")
    for a in (a1, a2):
        a.axhline(chance, color="grey", lw=0.8, ls=":")
        a.set_ylabel("mean zero-shot top-1 (%)")
        a.grid(alpha=0.3)
    a2.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(root / "comparison_methods.png", dpi=100)
    plt.close(fig)
    images.append("![methods by step and by compute](comparison_methods.png)")
    tfs = [r for r in main if r.method == "tfs"]
    if len(tfs) > 1:
        frac = data_fractions(tfs[0])
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for r in tfs:
            ax.plot([100 * frac.get(x["step"], x["step"]) for x in r.rows], [100 * x["mean_top1"] for x in r.rows],
                    marker="o", label=f"{r.name} ({_size(r.rows[-1]['arch']['params'])})")
        ax.set_xlabel("data seen (% of all steps)")
        ax.set_ylabel("mean zero-shot top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(root / "comparison_table1.png", dpi=100)
        plt.close(fig)
        images.append("![Table 1: model size against data size](comparison_table1.png)")
    return images


def provenance(root: Path) -> list[str]:
    """What made the runs, from ``reproduce.json`` (written by benchmarks/reproduce.py) when present."""
    p = root / "reproduce.json"
    if not p.exists():
        return []
    r = json.loads(p.read_text())
    runs = f", {r['invocations']} invocations (resumed)" if r.get("invocations", 1) > 1 else ""
    return [f"Made by `{r['command']}` ({r['steps_run']} growth steps, {r['jobs']} at a time, {r['ranks']} rank(s) "
            f"each, {r['wall_min']} min of wall time{runs}) on {r['machine']}, finished {r['finished']}.",
            f"Config `{r['config']}` with " + ", ".join(f"`{s}`" for s in r["overrides"]) + ".", ""]


def write_comparison(root) -> Path:
    """comparison.md (+ PNGs) in ``root`` from every run folder under it; returns the Markdown path."""
    root = Path(root)
    runs = load_runs(root)
    if not runs:
        raise FileNotFoundError(f"{root}: no run folder with a method record and a finished step (see growclip_train/rundir.py)")
    md = [f"# Methods compared: {root}", "", *provenance(root)]
    for part in (table3, table4, kept_summary, table5, table9, table1, tic_summary):
        lines = part(runs)
        md += lines + ([""] if lines else [])
    md += plot(runs, root)
    path = root / "comparison.md"
    path.write_text("\n".join(md) + "\n")
    return path
