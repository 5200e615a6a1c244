"""LAMB whose per-tensor trust ratios stay exact when DeepSpeed ZeRO partitions the parameters.

Under ZeRO 1-3 a client optimizer steps flat partitions, not tensors, so a naive LAMB computes
its "per-tensor" norms over pieces of tensors and its update depends on the world size. Here each
rank maps every element of its partitions to the tensor it belongs to (``attach_zero``), sums
w^2 and u^2 per tensor piece (one ``index_add`` per partition), adds the sums of all ranks in ONE
all-reduce per step (all tensors bucketed together), and applies the true trust ratios. Groups without weight decay are not adapted (timm) and
cost no collective.

Semantics are timm's ``Lamb`` (bias correction, grad averaging, L2-style weight decay added to
the update, trust ratio ||w||/||u|| only for groups with weight decay unless ``always_adapt``,
optional ``trust_clip``). Differences, by name: no ``caution``, no ``decoupled_decay``; the
optional global-norm clipping (``max_grad_norm``, timm's default 1.0) costs one more all-reduce
and is off by default here, since DeepSpeed's ``gradient_clipping`` already clips globally.
Without ``attach_zero`` (ZeRO-0, one process) every parameter is its own tensor.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


class PartitionedLamb(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.01,
                 bias_correction: bool = True, grad_averaging: bool = True, max_grad_norm: float | None = None,
                 trust_clip: bool = False, always_adapt: bool = False):
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, bias_correction=bias_correction,
                        grad_averaging=grad_averaging, trust_clip=trust_clip, always_adapt=always_adapt)
        super().__init__(params, defaults)
        self.max_grad_norm = max_grad_norm
        self.segments: dict[int, torch.Tensor] = {}  # id(flat partition) -> tensor id of each element
        self.runs: dict[int, tuple] = {}  # id(flat partition) -> (tensor id, length) of each contiguous run
        self.num_tensors = 0
        self.group = None
        self.last_trust: dict[int, float] = {}  # tensor id -> trust ratio of its last update

    def attach_zero(self, segments: dict[int, torch.Tensor], num_tensors: int, group=None) -> None:
        """``segments[id(p)]``: for each element of partition ``p``, the id of its tensor in
        [0, num_tensors), or ``num_tensors`` for padding. Ids are the same on every rank."""
        self.segments, self.num_tensors, self.group = segments, num_tensors, group
        self.runs = {}
        for key, seg in segments.items():  # a partition holds few contiguous runs: reduce per run
            change = torch.ones(seg.numel(), dtype=torch.bool)
            change[1:] = seg[1:] != seg[:-1]
            starts = change.nonzero().flatten()
            lengths = torch.diff(starts, append=torch.tensor([seg.numel()]))
            self.runs[key] = (seg[starts], lengths)

    def _layout(self):
        """(group, param, seg ids or None, own tensor id) for every param; unpartitioned params are
        tensors of their own, numbered after the partitioned ones (and their padding bucket)."""
        out, nxt = [], self.num_tensors + 1
        for group in self.param_groups:
            for p in group["params"]:
                seg = self.segments.get(id(p))
                out.append((group, p, seg, -1 if seg is not None else nxt))
                nxt += seg is None
        return out, nxt

    def _reduce(self, sums: torch.Tensor) -> torch.Tensor:
        if self.segments and dist.is_initialized():
            dist.all_reduce(sums, group=self.group)
        return sums

    def _sums(self, layout, size: int, values) -> torch.Tensor:
        """Per-tensor sums of squares of this rank's pieces (float64 totals)."""
        sums = torch.zeros(size, dtype=torch.float64)
        for (_, p, seg, own), v in zip(layout, values):
            if v is None:
                continue
            flat = v.detach().flatten()
            if seg is not None:
                ids, lengths = self.runs[id(p)]
                part = torch.segment_reduce(flat * flat, "sum", lengths=lengths)
                sums.index_add_(0, ids, part.double())
            else:
                sums[own] += torch.dot(flat, flat).double()
        return sums

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        layout, size = self._layout()
        clip = 1.0
        if self.max_grad_norm is not None:  # global norm over all tensors (one more collective)
            total = self._reduce(self._sums(layout, size, [p.grad for _, p, _, _ in layout])).sum().sqrt().item()
            clip = max(1.0, total / self.max_grad_norm)
        updates = []
        for group, p, _, _ in layout:
            if p.grad is None:
                updates.append(None)
                continue
            st = self.state[p]
            if not st:
                st["step"] = 0
                st["exp_avg"] = torch.zeros_like(p)
                st["exp_avg_sq"] = torch.zeros_like(p)
            st["step"] += 1
            beta1, beta2 = group["betas"]
            g = p.grad / clip if clip != 1.0 else p.grad
            m, v = st["exp_avg"], st["exp_avg_sq"]
            if group["grad_averaging"]:
                m.lerp_(g, 1 - beta1)
            else:
                m.mul_(beta1).add_(g)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            bc1 = 1 - beta1 ** st["step"] if group["bias_correction"] else 1.0
            bc2 = 1 - beta2 ** st["step"] if group["bias_correction"] else 1.0
            u = (m / bc1).div_((v.sqrt() / bc2 ** 0.5).add_(group["eps"]))
            if group["weight_decay"] != 0:
                u.add_(p, alpha=group["weight_decay"])
            updates.append(u)
        # one collective for every adapted tensor's ||w||^2 and ||u||^2 (groups without weight
        # decay are not adapted, as in timm, and need none: DeepSpeed steps one group per call)
        adapt = [u is not None and (g["weight_decay"] != 0 or g["always_adapt"]) for (g, _, _, _), u in zip(layout, updates)]
        trust = None
        if any(adapt):
            w2 = self._sums(layout, size, [p if a else None for (_, p, _, _), a in zip(layout, adapt)])
            u2 = self._sums(layout, size, [u if a else None for u, a in zip(updates, adapt)])
            both = self._reduce(torch.cat([w2, u2]))
            w_norm, u_norm = both[:size].sqrt(), both[size:].sqrt()
            trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm.clamp(min=1e-300), torch.ones_like(w_norm))
            touched = (u_norm > 0).nonzero().flatten().tolist()
            self.last_trust.update({i: float(trust[i]) for i in touched})
        for (group, p, seg, own), u, a in zip(layout, updates, adapt):
            if u is None:
                continue
            if a:
                ratio = trust.clamp(max=1.0) if group["trust_clip"] else trust
                r = ratio[seg].to(u.dtype).view_as(u) if seg is not None else ratio[own].to(u.dtype)
                u.mul_(r)
            p.add_(u, alpha=-group["lr"])
        return loss


def zero_segments(engine) -> tuple[dict[int, torch.Tensor], list]:
    """Map each element of this rank's ZeRO partitions to its tensor (stages 1-3); returns the map
    and the model parameters in tensor-id order (DeepSpeed's flattening order, the same on every
    rank). ZeRO-0: ({}, [])."""
    zo = engine.optimizer
    stage = engine.zero_optimization_stage()
    segs, next_id, order = {}, 0, []
    if stage in (1, 2):
        rank = dist.get_rank(group=zo.dp_process_group)
        world = dist.get_world_size(group=zo.dp_process_group)
        for i, tensors in enumerate(zo.round_robin_bit16_groups):
            total = zo.bit16_groups_flat[i].numel()
            base, rem = divmod(total, world)
            sizes = [base + (1 if r < rem else 0) for r in range(world)]
            start = sum(sizes[:rank])
            ids = torch.full((total,), -1, dtype=torch.long)
            off = 0
            for t in tensors:
                ids[off:off + t.numel()] = next_id
                off += t.numel()
                next_id += 1
                order.append(t)
            part = zo.single_partition_of_fp32_groups[i]
            segs[id(part)] = ids[start:start + sizes[rank]]
    elif stage == 3:
        rank, world = dist.get_rank(group=zo.dp_process_group), dist.get_world_size(group=zo.dp_process_group)
        for i, params in enumerate(zo.fp16_groups):
            pieces = []
            for p in params:
                pn = p.ds_tensor.ds_numel
                ids = torch.full((pn,), -1, dtype=torch.long)
                valid = max(0, min(pn, p.ds_numel - rank * pn))
                ids[:valid] = next_id
                pieces.append(ids)
                next_id += 1
                order.append(p)
            flat = zo.fp32_partitioned_groups_flat[i]
            ids = torch.cat(pieces)
            if ids.numel() != flat.numel():
                raise RuntimeError(f"ZeRO-3 partition layout not understood: {ids.numel()} != {flat.numel()}")
            segs[id(flat)] = ids
    else:
        return {}, []
    for ids in segs.values():
        ids[ids < 0] = next_id  # padding: its own bucket
    return segs, order


def attach_to_engine(engine) -> None:
    """Give a PartitionedLamb inside a DeepSpeed engine its ZeRO partition map (no-op otherwise)."""
    opt = getattr(engine.optimizer, "optimizer", engine.optimizer)
    if isinstance(opt, PartitionedLamb):
        segs, order = zero_segments(engine)
        group = getattr(engine.optimizer, "dp_process_group", None)
        opt.attach_zero(segs, len(order), group)
