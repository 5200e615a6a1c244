"""Time to score all 64 GAS candidates: 32 shared encoder variants against one pass per candidate,
side by side in one run, on one process.

    python benchmarks/gas_cost.py --config demo --data data/builtin

Prints both times, their ratio, and checks that both give the same accuracies; writes JSON to
docs/benchmarks/.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="demo")
    p.add_argument("--data", default=None, help="data root (default: the config's data.root)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import torch

    from growclip_ds.config import replace
    from growclip_ds.data.tokenizer import TextTokenizer
    from growclip_ds.eval.evaluate import selection_sets
    from growclip_ds.growth import space
    from growclip_ds.model import GrowCLIP, param_count
    from growclip_train.presets import load_config
    from growclip_train.gas import read_scores, run_gas, score_each_candidate
    from growclip_train.rundir import StepDir

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    root = Path(args.data or cfg.data.root)
    sup = space.supernet(cfg.arch, cfg.growth)
    model = GrowCLIP(sup, seed=0)
    sets = selection_sets(replace(cfg.data, root=str(root)), sup.image_size)
    tok = TextTokenizer(root / "tokenizer", sup.context_length)
    n_img = sum(len(d) for d in sets.sets)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        step = StepDir(Path(tmp), 2)
        run_gas(model, cfg.arch, cfg.growth, sets, tok, step, param_count(cfg.arch), 1, 2, progress=False)
        shared_s = time.perf_counter() - t0
        shared = [r["accuracy"] for r in sorted(read_scores(step.gas_scores), key=lambda r: r["index"])]
    t0 = time.perf_counter()
    each = score_each_candidate(model, cfg.arch, cfg.growth, sets, tok)
    each_s = time.perf_counter() - t0
    same = max(abs(a - b) for a, b in zip(shared, each))
    out = {"config": args.config, "supernet_params": param_count(sup), "selection_images": n_img,
           "shared_variants_s": shared_s, "per_candidate_s": each_s, "speedup": each_s / shared_s,
           "max_accuracy_difference": same, "machine": f"{platform.machine()} {os.cpu_count()} cores",
           "threads": args.threads, "date": time.strftime("%Y-%m-%d")}
    print(f"GAS over 64 candidates, supernet {param_count(sup):,} params, {n_img} selection images")
    print(f"  32 shared variants : {shared_s:7.2f} s")
    print(f"  64 separate passes : {each_s:7.2f} s")
    print(f"  speed-up           : {out['speedup']:.1f}x  (max accuracy difference {same:.1e})")
    d = REPO / "docs" / "benchmarks"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"gas_cost_cpu_{out['date']}.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
