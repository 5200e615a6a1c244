"""Projected GPU-hours and FLOPs of the paper's Table 7 recipes, next to the paper's V100 hours.

    python benchmarks/cost.py                                   # V100 fp16, MFU calibrated on CLIP-S2 (TFS)
    python benchmarks/cost.py --device h100 --precision bf16 --mfu 0.40
    python benchmarks/cost.py --from-record docs/benchmarks/throughput_vit-b-16_zero2_w8_h100_<date>.json

Data: CC12M split into 4 equal parts (``--cc12m`` pairs in all); step t trains on parts 1..t.
GPU-hours = sum over phases of samples x analytic training FLOPs per sample / (MFU x peak).
Default MFU: the one that makes the plain ViT-B/16 row (CLIP-S2 TFS) match the paper's 336 h, so
the five other rows are predictions. The paper gives parameter counts, not the grown architectures:
each GrowCLIP step's architecture is the growth-space candidate whose parameter count is nearest to
the paper's (30.0M -> 116.6M -> 168.6M -> 188.4M; NAS-S4: 325.9M), and the output says so.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import PEAK_FLOPS, write_record  # noqa: E402
from growclip_ds.config import replace  # noqa: E402
from growclip_ds.growth import space  # noqa: E402
from growclip_ds.model import param_count  # noqa: E402
from growclip_ds.model.flops import forward_flops  # noqa: E402
from growclip_train.presets import PRESETS  # noqa: E402
from growclip_train.plan_cluster import PAPER_PARAMS, TABLE7, growth_path, nearest_candidate  # noqa: E402
from growclip_train.step_phases import step_costs  # noqa: E402

PAPER_NAS_S4 = 325.9e6


def fitted_path():
    """The step 1..4 architectures (growclip_train.plan_cluster.growth_path: nearest the paper's parameter
    counts) and the NAS-S4 choice, fitted the same way."""
    cfg = PRESETS["paper"]
    archs = dict(enumerate(growth_path(cfg, 4), start=1))
    nas = nearest_candidate(archs[3], cfg.growth, PAPER_NAS_S4)
    return archs, nas


def recipes(n_part: float, gas_images: int):
    """Each Table 7 recipe as growclip_train.step_phases.step_costs phases (label, samples, training FLOPs per
    sample; GAS as one whole-phase figure), with the architecture it ends with."""
    archs, nas = fitted_path()
    paper, vit = PRESETS["paper"], PRESETS["vit-b-16"]

    def rows(costs, rename=None):
        return [((rename or {}).get(c.phase, c.phase), c.samples, c.flops_per_sample) for c in costs]

    def grow(t, final_epochs):
        cfg = replace(paper, growth=replace(paper.growth, final_epochs=final_epochs))
        return rows(step_costs(cfg, t, archs[t - 1], t * n_part, chosen=archs[t], gas_images=gas_images))

    def scratch(cfg, arch, steps):
        return rows(step_costs(replace(cfg, arch=arch, train=replace(cfg.train, epochs=30)), 1, None, steps * n_part))

    # NAS: one sampled phase from scratch instead of supernet fine-tuning, then GAS, then the choice from scratch
    nas_cfg = replace(paper, growth=replace(paper.growth, sample_epochs=30, final_epochs=30))
    nas_costs = rows(step_costs(nas_cfg, 4, archs[3], 4 * n_part, chosen=nas, gas_images=gas_images, ablate={"st"}),
                     {"sample": "supernet (sampled, from scratch)", "final": "final (from scratch)"})
    return {
        "CLIP-S2 (TFS)": (scratch(vit, vit.arch, 2), vit.arch),
        "GrowCLIP-S2": (grow(2, 26), archs[2]),
        "GrowCLIP-S4 (TFS)": (scratch(paper, archs[4], 4), archs[4]),
        "GrowCLIP-S4 (9 ep)": (grow(4, 5), archs[4]),
        "NAS-S4": (nas_costs, nas),
        "GrowCLIP-S4": (grow(4, 26), archs[4]),
    }, archs, nas, space.supernet(archs[3], paper.growth)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="v100", choices=sorted(PEAK_FLOPS))
    p.add_argument("--precision", default="fp16", choices=("fp16", "bf16", "fp32"))
    p.add_argument("--mfu", type=float, default=0.0, help="0: calibrate on the CLIP-S2 (TFS) row")
    p.add_argument("--from-record", type=Path, help="a benchmarks/throughput.py JSON: use its device and MFU")
    p.add_argument("--cc12m", type=float, default=12.0e6, help="image-text pairs in all (4 equal parts)")
    p.add_argument("--gas-images", type=int, default=50_000, help="selection images scored by GAS")
    args = p.parse_args()
    device, precision, mfu, source = args.device, args.precision, args.mfu, "given"
    if args.from_record:
        rec = json.loads(args.from_record.read_text())
        device, precision, mfu = rec["device"], rec["precision"], rec["results"]["deepspeed"]["mfu"]
        source = f"measured in {args.from_record.name}"
        if device not in PEAK_FLOPS:
            sys.exit(f"{args.from_record}: device {device!r} has no data-sheet peak; projections need a GPU record")
    peak = PEAK_FLOPS[device][precision]
    table, n_part = {}, args.cc12m / 4
    plans, archs, nas, nas_sup = recipes(n_part, args.gas_images)
    for name, (phases, _) in plans.items():
        table[name] = sum(s * f for _, s, f in phases)
    if not mfu:
        mfu = table["CLIP-S2 (TFS)"] / (336 * 3600 * peak)
        source = "calibrated so that CLIP-S2 (TFS) costs the paper's 336 h"
    lines = [f"# Table 7 projected: {device} {precision}, MFU {mfu:.1%} ({source}), CC12M = {args.cc12m / 1e6:.1f}M pairs",
             "", "| recipe | paper params | our params | paper ep | samples (M) | train PFLOPs | projected GPU-h | "
             "paper V100 GPU-h | projected / paper |", "|---|---|---|---|---|---|---|---|---|"]
    rows = []
    for (name, pp, ep, hours), (phases, arch) in zip(TABLE7, plans.values()):
        gpu_h = table[name] / (mfu * peak) / 3600
        samples = sum(s for label, s, _ in phases if label != "gas")
        rows.append({"recipe": name, "paper_params_m": pp, "params": param_count(arch), "epochs": ep,
                     "samples": samples, "train_flops": table[name], "gpu_hours": gpu_h, "paper_v100_hours": hours,
                     "phases": [{"phase": lb, "samples": s, "flops_per_sample": f} for lb, s, f in phases],
                     "arch": arch.to_dict()})
        ratio = f"{gpu_h / hours:.2f}" if device == "v100" else "(other device)"
        lines.append(f"| {name} | {pp}M | {param_count(arch) / 1e6:.1f}M | {ep} | {samples / 1e6:.0f} | "
                     f"{table[name] / 1e15:,.0f} | {gpu_h:,.0f} | {hours} | {ratio} |")
    lines += ["", "Architectures: real candidates of the growth space (shared width = image width), at each step the "
              "one nearest the paper's parameter count (the paper does not give them): "
              + "; ".join(f"step {t}: {param_count(a) / 1e6:.1f}M {_short(a)}" + (
                  _fit(param_count(a), PAPER_PARAMS[t]) if t > 1 else
                  f" [the paper preset, {param_count(a) / PAPER_PARAMS[1] - 1:+.1%} vs the paper's 30.0M]")
                  for t, a in archs.items())
              + f"; NAS-S4 choice {param_count(nas) / 1e6:.1f}M {_short(nas)}{_fit(param_count(nas), PAPER_NAS_S4)}, "
              f"its supernet "
              f"{param_count(nas_sup) / 1e6:.1f}M.", f"ViT-B/16 forward: {forward_flops(PRESETS['vit-b-16'].arch) / 1e9:.2f} GFLOPs per sample."]
    print("\n".join(lines))
    rec = {"device_projected": device, "precision": precision, "mfu": mfu, "mfu_source": source,
           "cc12m_pairs": args.cc12m, "gas_images": args.gas_images, "rows": rows}
    print("wrote", write_record("cost_table7", rec, lines, device))


def _fit(ours: int, paper: float) -> str:
    """How close the growth space gets to the paper's count; beyond 1% the space cannot express it."""
    err = ours / paper - 1
    return f" [{err:+.1%} vs the paper's {paper / 1e6:.1f}M" + ("]" if abs(err) <= 0.01 else
                                                               ": no candidate of the space within 1%]")


def _short(a) -> str:
    return f"(img {a.img_blocks}x{a.img_heads}h conv{a.img_conv_layers}, txt {a.txt_blocks}x{a.txt_heads}h, shared {a.shared_blocks})"


if __name__ == "__main__":
    main()
