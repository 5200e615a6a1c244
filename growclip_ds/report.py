"""Plain-text summaries of a run folder (per-step arch, params, zero-shot top-1, retrieval R@1)."""
from __future__ import annotations

import json
from pathlib import Path


def summarize_run(run_dir) -> str:
    run_dir = Path(run_dir)
    rows, tasks = [], None
    for d in sorted(run_dir.glob("step*"), key=lambda p: int(p.name[4:]) if p.name[4:].isdigit() else 0):
        if not (d / "eval.json").exists():
            continue
        arch = json.loads((d / "arch.json").read_text())
        ev = json.loads((d / "eval.json").read_text())
        tasks = tasks or list(ev["zero_shot"])
        a = (f"l{arch['img_conv_layers']} I{arch['img_blocks']}x{arch['img_heads']}h "
             f"T{arch['txt_blocks']}x{arch['txt_heads']}h S{arch['shared_blocks']}")
        zs = [f"{ev['zero_shot'][t]['top1']:.3f} ({1 / ev['zero_shot'][t]['num_classes']:.3f})" for t in tasks]
        rows.append([d.name, a, f"{arch['params']:,}"] + zs +
                    [f"{ev['retrieval']['image_to_text']['R@1']:.3f}", f"{ev['retrieval']['text_to_image']['R@1']:.3f}"])
    if not rows:
        return f"{run_dir}: no finished step yet"
    head = ["step", "arch", "params"] + [f"{t} top1 (chance)" for t in tasks] + ["i2t R@1", "t2i R@1"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
