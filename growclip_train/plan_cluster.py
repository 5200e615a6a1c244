"""``growclip-ds plan --cluster NODESxGPUSxKIND``: size a run before booking the cluster.

    growclip-ds plan --config paper --cluster 2x8xH100            # no run folder, no data, no GPU needed
    growclip-ds plan --config vit-b-16 --cluster 16x1xV100 --mfu 0.35 --samples-per-step 3e6

For step 1 and, at every growth step, its supernet and its chosen net: per-rank memory under ZeRO
1, 2 and 3 (model states, next to DeepSpeed's own estimator where it has one, plus activations at
the configured micro batch), and time and GPU-hours per phase from the FLOPs model at a stated
MFU, next to the paper's Table 7. Models are built on the meta device, so this runs anywhere in
seconds. The chosen nets are not known before GAS runs: for the ``paper`` preset the path whose
parameter counts are nearest the paper's (30.0M, 116.6M, 168.6M, 188.4M), otherwise the largest
candidate (an upper bound).

Model states per rank, bytes per parameter (P parameters, N ranks, L the largest layer's; Adam and
LAMB keep two moments), as DeepSpeed's estimators count them for 16-bit training:

| stage | 16-bit params | 16-bit grads | fp32 grads + master + 2 moments | gathered layer |
|---|---|---|---|---|
| 1 | 2P | 2P | 16P/N | - |
| 2 | 2P | 2P/N | 16P/N | - |
| 3 | 2P/N | - (reduced into fp32) | 16P/N | 4L (its params and grads) |

fp32 training (the CPU path) has no master copy: 4P params, 4P grads, 8P moments, partitioned the same way.
Activations per transformer block and sample: 32 x tokens x width bytes in 16-bit (its inputs,
q/k/v, the attention output, the MLP's two 4x-wide tensors; SDPA keeps no tokens x tokens matrix;
Korthikanti et al. 2022 count 34 with dropout masks, which this model has none of); with gradient
checkpointing, each block's input plus one block's activations. Conv stem: 6 bytes x C x (S/2)^2 per
conv layer at 16-bit (the conv's input, the norm's, the ReLU's). tests/test_cluster.py checks the
count against the tensors autograd actually saves.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import torch

from growclip_ds.config import ArchConfig

from growclip_train.config import RunConfig
from growclip_ds.errors import InputError
from growclip_ds.growth import space
from growclip_ds.model import GrowCLIP, param_count
from growclip_train.step_phases import step_costs

# kind -> (dense peak FLOP/s by precision, memory bytes): vendors' data sheets, SXM parts
GPUS = {
    "V100": ({"fp32": 15.7e12, "fp16": 125e12, "bf16": None}, 32 * 2 ** 30),
    "A100": ({"fp32": 19.5e12, "fp16": 312e12, "bf16": 312e12}, 80 * 2 ** 30),
    "H100": ({"fp32": 66.9e12, "fp16": 989.4e12, "bf16": 989.4e12}, 80 * 2 ** 30),
    "H200": ({"fp32": 66.9e12, "fp16": 989.4e12, "bf16": 989.4e12}, 141 * 2 ** 30),
}
GAS_IMAGES = 50_000   # selection images GAS scores at paper scale (an ImageNet-val-sized split)
PAPER_PARAMS = {1: 30.0e6, 2: 116.6e6, 3: 168.6e6, 4: 188.4e6}
# the paper's Table 7, 16 V100: (recipe, params in M, epochs, GPU-hours)
TABLE7 = [("CLIP-S2 (TFS)", 149.6, 30, 336), ("GrowCLIP-S2", 116.6, 30, 288), ("GrowCLIP-S4 (TFS)", 188.4, 30, 1230),
          ("GrowCLIP-S4 (9 ep)", 188.4, 9, 722), ("NAS-S4", 325.9, 60, 5280), ("GrowCLIP-S4", 188.4, 30, 1583)]


@dataclass(frozen=True)
class Cluster:
    nodes: int
    gpus_per_node: int
    kind: str

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def memory(self) -> int:
        return GPUS[self.kind][1]

    def peak(self, precision: str) -> float:
        p = GPUS[self.kind][0].get(precision)
        if not p:
            raise InputError(f"train.precision={precision}: {self.kind} has no {precision} tensor cores; "
                             f"choose one of {[k for k, v in GPUS[self.kind][0].items() if v]}")
        return p


def parse_cluster(text: str) -> Cluster:
    m = re.fullmatch(r"(\d+)x(\d+)x([A-Za-z0-9]+)", text.strip())
    if not m or m.group(3).upper() not in GPUS or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise InputError(f"--cluster: expected NODESxGPUSxKIND with KIND one of {', '.join(GPUS)}, e.g. 2x8xH100 "
                         f"(got {text!r})")
    return Cluster(int(m.group(1)), int(m.group(2)), m.group(3).upper())


@functools.lru_cache(maxsize=64)
def largest_layer(arch: ArchConfig) -> int:
    """Parameters of the module with the most parameters of its own (DeepSpeed's ``model_to_params``
    rule: what ZeRO-3 gathers at once), on the meta device."""
    with torch.device("meta"):
        model = GrowCLIP(arch, seed=None)
    return max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())


def model_state_bytes(arch: ArchConfig, stage: int, world: int, precision: str) -> dict:
    """Per-rank bytes of parameters, gradients and optimizer state (table in the module docstring)."""
    p, n, layer = param_count(arch), world, largest_layer(arch) if stage == 3 else 0
    half = precision in ("bf16", "fp16")
    w, g, opt = (2, 2, 16) if half else (4, 4, 8)
    if stage == 0:
        parts = {"params": w * p, "grads": g * p, "optimizer": opt * p}
    elif stage == 1:
        parts = {"params": w * p, "grads": g * p, "optimizer": opt * p / n}
    elif stage == 2:
        parts = {"params": w * p, "grads": g * p / n, "optimizer": opt * p / n}
    else:
        parts = {"params": w * p / n + (2 * w) * layer, "grads": 0 if half else g * p / n, "optimizer": opt * p / n}
    return {**parts, "total": sum(parts.values())}


def deepspeed_estimate(arch: ArchConfig, stage: int, cluster: Cluster) -> int | None:
    """DeepSpeed's own per-GPU model-state estimate (16-bit, no offload); it has none for ZeRO-1."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    p = param_count(arch)
    if stage == 2:
        return estimate_zero2_model_states_mem_needs(p, cluster.gpus_per_node, cluster.nodes, cpu_offload=False)[1]
    if stage == 3:
        return estimate_zero3_model_states_mem_needs(p, largest_layer(arch), cluster.gpus_per_node, cluster.nodes,
                                                     cpu_offload=False, cpu_offload_params=False)[1]
    return None


def activation_bytes(arch: ArchConfig, micro_batch: int, precision: str, recompute: bool) -> int:
    """Activations kept for the backward pass of one micro batch (module docstring)."""
    e = 2 if precision in ("bf16", "fp16") else 4
    per = 16 * e   # 32 bytes at 16-bit: 16 token-widths per block
    n_img, n_txt = arch.num_patches + 1, arch.context_length
    blocks = [(n_img, arch.img_width)] * arch.img_blocks + [(n_txt, arch.txt_width)] * arch.txt_blocks + \
        [(n_img, arch.img_width), (n_txt, arch.img_width)] * arch.shared_blocks
    if recompute:
        acts = sum(e * s * w for s, w in blocks) + max((per * s * w for s, w in blocks), default=0)
    else:
        acts = sum(per * s * w for s, w in blocks)
    if arch.stem == "conv":
        acts += 3 * e * arch.stem_channels * (arch.image_size // 2) ** 2 * (1 + arch.img_conv_layers)
    return int(micro_batch * acts)


def growth_path(cfg: RunConfig, steps: int) -> list[ArchConfig]:
    """Assumed architectures of steps 1..T: nearest the paper's parameter counts for ``paper``, else
    the largest candidate at each step (the memory upper bound)."""
    path = [cfg.arch]
    for t in range(2, steps + 1):
        if cfg.name == "paper" and t in PAPER_PARAMS:
            path.append(nearest_candidate(path[-1], cfg.growth, PAPER_PARAMS[t]))
        else:
            path.append(space.supernet(path[-1], cfg.growth))
    return path


def nearest_candidate(prev: ArchConfig, growth, params: float) -> ArchConfig:
    """The candidate grown from ``prev`` whose parameter count is nearest ``params`` (a paper figure)."""
    return min(space.candidates(prev, growth), key=lambda a: abs(param_count(a) - params))


def path_costs(cfg: RunConfig, path: list[ArchConfig], t: int, n_t: float, gas_images: int = GAS_IMAGES):
    """step_phases.step_costs of step t along ``path``, as the hardware runs them (gradient checkpointing
    recomputes the blocks' forwards)."""
    return step_costs(cfg, t, path[t - 2] if t > 1 else None, n_t, chosen=path[t - 1],
                      recompute=cfg.train.grad_checkpointing, gas_images=gas_images)


def _gib(b: float) -> str:
    return f"{b / 2 ** 30:.2f}"


def plan_cluster(cfg: RunConfig, cluster: Cluster, mfu: float = 0.4, samples_per_step: float = 3.0e6,
                 steps: int = 4) -> str:
    t_cfg, prec = cfg.train, cfg.train.precision if cfg.train.precision != "fp32" else "bf16"
    peak = cluster.peak(prec)
    path = growth_path(cfg, steps)
    out = [f"# Plan: {cfg.name} on {cluster.nodes} x {cluster.gpus_per_node} {cluster.kind} ({cluster.world} GPUs, "
           f"{_gib(cluster.memory)} GiB each), {prec}, MFU {mfu:.0%} (stated, not measured), "
           f"{samples_per_step / 1e6:.2f}M new samples per step, micro batch {t_cfg.micro_batch}, "
           f"global batch {t_cfg.global_batch}" + (", gradient checkpointing" if t_cfg.grad_checkpointing else ""),
           "", "## Per-rank memory (GiB): model states by ZeRO stage [DeepSpeed's estimator], activations",
           "", "| step | net | params | ZeRO-1 | ZeRO-2 [DS] | ZeRO-3 [DS] | activations | ZeRO-2 total | fits |",
           "|---|---|---|---|---|---|---|---|---|"]
    seen = set()
    for t in range(1, steps + 1):
        for c in path_costs(cfg, path, t, 1.0):
            name, arch = c.phase, c.arch
            if (t, name) in seen or name in ("sample", "gas"):
                continue
            seen.add((t, name))
            z = {s: model_state_bytes(arch, s, cluster.world, prec)["total"] for s in (1, 2, 3)}
            ds = {s: deepspeed_estimate(arch, s, cluster) for s in (2, 3)}
            act = activation_bytes(arch, t_cfg.micro_batch, prec, t_cfg.grad_checkpointing)
            total = z[2] + act
            out.append(f"| {t} | {'step-1 net' if t == 1 else name} | {param_count(arch) / 1e6:.1f}M | {_gib(z[1])} | "
                       f"{_gib(z[2])} [{_gib(ds[2])}] | {_gib(z[3])} [{_gib(ds[3])}] | {_gib(act)} | {_gib(total)} | "
                       f"{'yes' if total < 0.9 * cluster.memory else 'no: lower train.micro_batch or use ZeRO-3 / checkpointing'} |")
    out += ["", "## Time (FLOPs model at the stated MFU)", "",
            "| step | phase | samples (M) | PFLOP | hours | GPU-hours |", "|---|---|---|---|---|---|"]
    total_h = 0.0
    for t in range(1, steps + 1):
        n_t = samples_per_step * t
        for c in path_costs(cfg, path, t, n_t):
            hours = c.flops / (cluster.world * peak * mfu) / 3600
            total_h += hours * cluster.world
            samples = "-" if c.phase == "gas" else f"{c.samples / 1e6:.1f}"
            out.append(f"| {t} | {c.phase} | {samples} | {c.flops / 1e15:,.1f} | {hours:,.1f} | "
                       f"{hours * cluster.world:,.0f} |")
    out += ["", f"GAS (the gas rows): every encoder variant over {GAS_IMAGES:,} selection images, image side only.",
            f"Total: {total_h:,.0f} GPU-hours on {cluster.kind} for steps 1..{steps}.",
            "", "Paper, Table 7 (16 V100, fp16): " + "; ".join(f"{n} {p}M {e} ep {h} GPU-h" for n, p, e, h in TABLE7)
            + ". On V100 with the MFU that makes CLIP-S2 (TFS) cost 336 h, benchmarks/cost.py reproduces that table."]
    return "\n".join(out)

