"""``growclip-ds plan RUN``: what the next growth step of a run would do, and what it would cost.

Costs are analytic training FLOPs (3 x forward per sample); seconds use the FLOP/s this run
measured in its finished phases, when there are any.
"""
from __future__ import annotations

from pathlib import Path

from growclip_train.config import RunConfig
from growclip_ds.data.manifest import Manifest
from growclip_ds.eval.evaluate import selection_sets
from growclip_ds.growth import space
from growclip_ds.growth.kept import describe as describe_kept
from growclip_ds.model import param_count
from growclip_ds.model.flops import forward_flops, image_flops, text_flops
from growclip_ds.model_folder import read_arch
from growclip_train.phases import pending_phases
from growclip_train.rundir import RunDir
from growclip_train.step_phases import step_costs
from growclip_train.train.budget import growth_shares, step_flops


def _measured_flops_per_s(run: RunDir) -> float | None:
    done = run.phase_records()
    flops = sum(d.get("train_flops", 0) for d in done)
    secs = sum(d.get("wall_s", 0) for d in done if d.get("train_flops"))
    return flops / secs if flops and secs else None


def plan_next_step(cfg: RunConfig, run_dir: Path) -> str:
    run = RunDir(run_dir)
    m = Manifest.load(cfg.data.root)
    t = run.next_step()
    if t > m.num_steps:
        return f"{run_dir}: all {m.num_steps} growth steps are finished"
    rate = _measured_flops_per_s(run)
    lines = [f"Next: growth step {t} of {m.num_steps} in {run_dir}",
             f"data: D^{t} = steps 1..{t}, N^{t} = {m.num_samples(t):,} samples"
             + (f" (N^{t - 1} = {m.num_samples(t - 1):,})" if t > 1 else "")]

    def cost(name: str, samples: int, flops: float, why: str) -> None:
        secs = f", ~{flops / rate:,.0f} s at the {rate / 1e9:.1f} GFLOP/s measured so far" if rate else ""
        lines.append(f"- {name}: {samples:,} samples, {flops / 1e15:.4f} PFLOP{secs}. {why}")

    if t == 1:
        (c,) = step_costs(cfg, 1, None, m.num_samples(1))
        lines.append(f"arch: {cfg.arch.to_dict()} ({param_count(cfg.arch):,} params)")
        cost("train", c.samples, c.flops, "The step-1 architecture from scratch.")
        return "\n".join(lines)
    if cfg.train.match == "flops":
        shares = ", ".join(f"{k} {v:.1%}" for k, v in growth_shares(cfg, ["supernet", "sample", "final"]).items())
        lines.append(f"train.match=flops: every method spends F^{t} = {step_flops(cfg, m.num_samples(t)) / 1e15:.4f} "
                     f"PFLOP at step {t}; GrowCLIP's shares {shares} (the final phase gets what the others leave, "
                     "as samples of the chosen net), so the per-phase figures below are epoch-mode estimates")
    prev = read_arch(run.step(t - 1).path)
    g = cfg.growth
    for s in range(2, t):
        for which, rec in run.step(s).growth_records().items():
            lines.append(f"kept at step {s} {which} ({rec['inherit']}): {describe_kept(rec['kept'])}")
    how = "function-preserving (growth.inherit=preserve)" if g.inherit == "preserve" else \
        f"the paper's PIM, beta={g.beta}, gamma={g.gamma} (growth.inherit=pim)"
    lines.append(f"inheritance at step {t}: {how}")
    cands = space.candidates(prev, g)
    sup = space.supernet(prev, g)
    params = [param_count(c) for c in cands]
    lines += [f"previous arch: {param_count(prev):,} params; growth space: 64 candidates, "
              f"{min(params):,}..{max(params):,} params; supernet {max(params):,}",
              f"GAS size term weight alpha*N^{t - 1}/N^{t} = {g.alpha * m.num_samples(t - 1) / m.num_samples(t):.3f}: "
              "the more new data, the less a candidate's size counts against it",
              f"pending phases: {', '.join(pending_phases(run, t, set()))}"]
    sel = selection_sets(cfg.data, prev.image_size).sets
    n_img = sum(len(d) for d in sel)
    n_txt = sum(len(d.prompts()) if d.kind == "zeroshot" else len(d.texts) for d in sel)
    costs = {c.phase: c for c in step_costs(cfg, t, prev, m.num_samples(t), gas_images=n_img, gas_texts=n_txt)}
    why = {"supernet": "PIM from the step t-1 model into the supernet, train all of it.",
           "sample": "One uniformly drawn candidate per iteration (mean candidate cost)."}
    for name in ("supernet", "sample"):
        cost(name, costs[name].samples, costs[name].flops, why[name])
    naive = sum(n_img * image_flops(c) + n_txt * text_flops(c) for c in cands)
    gas_flops = costs["gas"].flops
    lines.append(f"- gas: {len(space.variants(prev, g))} encoder variants over {n_img} images and {n_txt} prompts, {gas_flops / 1e12:.3f} TFLOP "
                 f"(scoring each candidate alone: {naive / 1e12:.3f} TFLOP, {naive / gas_flops:.1f}x).")
    fin = costs["final"]
    lo, hi = fin.flops_range
    cost("final", fin.samples, fin.flops, f"PIM into the chosen candidate and train it; between "
         f"{fin.samples * lo / 1e15:.4f} and {fin.samples * hi / 1e15:.4f} PFLOP depending on the choice.")
    lines.append(f"(forward FLOPs per sample: previous {forward_flops(prev) / 1e6:.1f} M, supernet "
                 f"{forward_flops(sup) / 1e6:.1f} M)")
    return "\n".join(lines)
