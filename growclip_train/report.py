"""The report of a run folder: a table per step, the GAS table of the last grown step, and a PNG
of zero-shot accuracy against cumulative training compute.

    growclip-ds report runs/demo        # writes runs/demo/report.md and runs/demo/report.png
"""
from __future__ import annotations

from pathlib import Path

from growclip_ds.eval.evaluate import selection_accuracy
from growclip_train.gas import read_scores
from growclip_train.rundir import PIM1, PIM3, RunDir, StepDir

GROWTHS = ((PIM1, "PIM@1: step t-1 model -> supernet"),
           (PIM3, "PIM@3: candidate inside the supernet -> chosen net"))


def _arch_str(a: dict) -> str:
    return (f"conv{a['img_conv_layers']} img {a['img_blocks']}x{a['img_heads']}h "
            f"txt {a['txt_blocks']}x{a['txt_heads']}h shared {a['shared_blocks']}")


def kept_table(run_dir: Path) -> list[str]:
    """What each growth kept, before any training (docs/growth.md)."""
    rows = []
    for d in RunDir(run_dir).finished_steps():
        for which, what in GROWTHS:
            rec = d.growth_records().get(which)
            if rec:
                o, g = rec["kept"]["old"], rec["kept"]["grown"]
                rows.append(f"| {d.t} | {what} | {rec['inherit']} | {o['loss']:.3f} -> {g['loss']:.3f} | "
                            f"{100 * o['top1']:.1f} -> {100 * g['top1']:.1f} |")
    if not rows:
        return []
    return ["", "## What growth kept (before any training)", "",
            "Contrastive loss on one fixed batch of step t's new training data; selection accuracy (%): GAS's A, "
            "the mean zero-shot top-1 of the selection split (its mean R@1 where it has retrieval sets only).",
            "", "| step | growth | inheritance | loss old -> grown | selection accuracy old -> grown |",
            "|---|---|---|---|---|", *rows]


def step_rows(run_dir) -> list[dict]:
    """One record per finished step: arch, params, eval, what its growths kept, and the cost of all
    its phases (wall seconds, samples seen, analytic training FLOPs, measured device-seconds)."""
    rows, flops_total = [], 0.0
    for d in RunDir(run_dir).finished_steps():
        phases = d.phase_records()
        flops = sum(p.get("train_flops", 0) for p in phases)
        flops_total += flops
        ev = d.read_eval()
        zs = {t: v["top1"] for t, v in ev["zero_shot"].items()}
        rows.append({"step": d.t, "arch": d.read_choice(), "zero_shot": zs,
                     "chance": {t: 1 / v["num_classes"] for t, v in ev["zero_shot"].items()},
                     # the headline: mean zero-shot top-1, or mean R@1 where only retrieval sets exist
                     "mean_top1": selection_accuracy(ev),
                     "retrieval": ev.get("retrieval"),
                     "retrieval_sets": ev.get("retrieval_sets") or {"retrieval": ev["retrieval"]},
                     "wall_s": sum(p.get("wall_s", 0) for p in phases), "train_flops": flops,
                     "samples": sum(p.get("samples_seen", 0) for p in phases),
                     "device_s": sum(p.get("device_s", 0) for p in phases),
                     "cumulative_flops": flops_total, "kept": d.growth_records()})
    return rows


def summarize_run(run_dir) -> str:
    run_dir = Path(run_dir)
    rows = step_rows(run_dir)
    if not rows:
        return f"{run_dir}: no finished step yet"
    tasks = list(rows[0]["zero_shot"])
    rsets = list(rows[0]["retrieval_sets"])
    pre = lambda n: "" if len(rsets) == 1 else f"{n} "  # noqa: E731
    head = ["step", "arch", "params"] + [f"{t} top-1 (chance)" for t in tasks] + \
        [f"{pre(n)}{d} R@1" for n in rsets for d in ("i2t", "t2i")] + ["wall s", "train PFLOP"]
    out = [f"# Run {run_dir}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        zs = [f"{r['zero_shot'][t]:.3f} ({r['chance'][t]:.3f})" for t in tasks]
        ret = [f"{r['retrieval_sets'][n][d]['R@1']:.3f}" for n in rsets for d in ("image_to_text", "text_to_image")]
        out.append("| " + " | ".join([str(r["step"]), _arch_str(r["arch"]), f"{r['arch']['params']:,}", *zs,
                                      *ret, f"{r['wall_s']:.0f}", f"{r['train_flops'] / 1e15:.3f}"]) + " |")
    out += kept_table(run_dir)
    out += tic_table(run_dir)
    gas = [s for s in RunDir(run_dir).finished_steps() if s.gas_scores.exists()]
    if gas:
        out += ["", *gas_table(gas[-1])]
    return "\n".join(out)


def tic_table(run_dir: Path) -> list[str]:
    """TiC-CLIP's evaluation matrix (mean R@1 per growth step's held-out pairs) and its summary."""
    from growclip_train.tic_matrix import eval_matrix, transfer_summary

    try:
        m = eval_matrix(run_dir)
    except KeyError:   # an evaluation written before retrieval_by_step existed
        return []
    if not m:
        return []
    s = transfer_summary(m)
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    out = ["", "## Evaluation matrix (TiC-CLIP): model of step i on the retrieval pairs of step j, mean R@1", "",
           "| model \\ data | " + " | ".join(f"step {j}" for j in range(1, len(m[0]) + 1)) + " |",
           "|" + "---|" * (len(m[0]) + 1)]
    out += [f"| step {i} | " + " | ".join(fmt(v) for v in row) + " |" for i, row in enumerate(m, 1)]
    return out + ["", f"in-domain {fmt(s['in_domain'])}, backward transfer {fmt(s['backward'])}, "
                      f"forward transfer {fmt(s['forward'])}"]


def gas_table(step: StepDir, top: int = 10) -> list[str]:
    """The best distinct nets of a step's GAS; indices that are the same net (a growth delta of 0) share a row."""
    rows = read_scores(step.gas_scores)
    same: dict[int, list[int]] = {}
    for r in rows:
        same.setdefault(r.get("same_as", r["index"]), []).append(r["index"])
    nets = sorted((r for r in rows if "same_as" not in r), key=lambda r: -r["score"])
    chosen = step.read_choice().get("index")
    out = [f"## GAS at step {step.t}: the {top} best of {len(nets)} distinct nets among {len(rows)} candidates "
           "(score = accuracy + size term, or - compute penalty)", "",
           "| index (same net) | arch | params | accuracy | size term | score |", "|---|---|---|---|---|---|"]
    for r in nets[:top]:
        idx = same[r["index"]]
        mark = " (chosen)" if chosen in idx else ""
        alias = f" ({', '.join(map(str, idx[1:]))})" if len(idx) > 1 else ""
        out.append(f"| {r['index']}{alias}{mark} | {_arch_str(r['arch'])} | {r['params']:,} | {r['accuracy']:.3f} | "
                   f"{r.get('size_term', r['score'] - r['accuracy']):.3f} | {r['score']:.3f} |")
    return out


def write_report(run_dir) -> Path:
    """report.md and report.png in the run folder; returns the Markdown path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = step_rows(run_dir)
    md = summarize_run(run_dir)
    if rows:
        fig, ax = plt.subplots(figsize=(6, 4))
        x = [r["cumulative_flops"] / 1e15 for r in rows]
        for t in rows[0]["zero_shot"]:
            ax.plot(x, [r["zero_shot"][t] for r in rows], marker="o", label=t)
        ax.plot(x, [r["mean_top1"] for r in rows], marker="s", color="black", label="mean")
        for r, xi in zip(rows, x):
            ax.annotate(f"step {r['step']}", (xi, r["mean_top1"]), textcoords="offset points", xytext=(4, -12))
        ax.set_xlabel("cumulative training compute (PFLOP, analytic)")
        ax.set_ylabel("zero-shot top-1" if rows[0]["zero_shot"] else "mean R@1 (retrieval)")
        ax.set_title(f"{run_dir.name}: accuracy as the data and the model grow")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(run_dir / "report.png", dpi=110)
        plt.close(fig)
        md += "\n\n![accuracy against compute](report.png)\n"
    (run_dir / "report.md").write_text(md + "\n")
    return run_dir / "report.md"
