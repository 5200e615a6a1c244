"""Function-preserving inheritance (docs/growth.md), a pure function on full state dicts.

    new = preserve(old_state, old_arch, new_arch, seed=s)     # new model computes the old function

The grown model computes the step t-1 model's function (up to LayerNorm's eps) before any
training, while every new weight still receives gradient. It starts from plain inheritance (the
PIM rule with beta=1, gamma=0: overlaps copied, new blocks copy the last block, new slices fresh),
then corrects by each tensor's declared role (``model/roles.py``):

- **Depth** (new blocks in any stack, the first shared blocks included; new stem conv layers): the
  tensors that write a residual branch's output (attention/MLP output projections, a conv layer's
  gate) start at zero, so the new member is the identity; its readers keep the copied weights.
- **Width** (new heads widen a stream from w to w'): every tensor that writes stream channels (patch
  and token embeddings, positions, class token, output projections, projections into the shared
  stream) gets, for each new channel, the mean of its old channels. By linearity the stream then
  carries x' = [x, mean(x)] everywhere, so a LayerNorm over w' sees the old mean and the old
  variance times w/w'; scaling the old gains by sqrt(w/w') restores its output exactly (the eps
  term aside), and its new channels normalise to exactly 0. So readers of LayerNorm outputs (qkv,
  MLP input, final heads) may keep fresh weights on new channels; writers get zero on the inputs
  that new heads / hidden units feed (the side that writes into the existing function), while the
  reading side stays freshly initialised, so both receive gradient.
- **Shrinking** (supernet -> chosen subnet, phase 3) is plain slicing: the subnet computes what it
  computed inside the supernet.

The zero-padded alternative (new channels at 0) changes each LayerNorm's mean and variance, which
measurably loses accuracy; doubling by duplication (staged training) is exact only for w' = 2w.
"""
from __future__ import annotations

import math

import torch

from ..config import ArchConfig, ConfigError
from ..model.clip import arch_specs
from ..model.roles import RESIDUAL_OUT, STREAM_DIM, Role
from .pim import pim, rand_draw, source_name


@torch.no_grad()
def preserve(old_state: dict, old_arch: ArchConfig, new_arch: ArchConfig, seed: int = 0,
             gamma: float = 0.0) -> dict[str, torch.Tensor]:
    """``gamma`` > 0 adds the paper's exploration term gamma x w_rand to the inherited part of every
    normally initialised tensor (not to what starts at zero): the function is then kept only to
    within that perturbation (``growth.preserve_gamma``; 0 by default)."""
    if new_arch.tower == "clip" and (new_arch.img_width, new_arch.txt_width) != (old_arch.img_width, old_arch.txt_width):
        # ln_pre's new channels would carry its bias, not the mean of the old channels, so no rule
        # keeps the function when CLIP's towers widen (deepening is fine: new blocks start as identity)
        raise ConfigError("growth.inherit=preserve: CLIP's towers (arch.tower='clip') keep their function only "
                         "when they deepen, not when they widen; use growth.inherit=pim, or delta_*_heads=0")
    out = pim(old_state, old_arch, new_arch, beta=1.0, gamma=0.0, seed=seed, copy_logit_scale=True)
    for name, (shape, spec) in arch_specs(new_arch).items():
        t = out[name]
        src = source_name(name, old_arch)
        if src != name and spec.role in RESIDUAL_OUT:   # a new block / conv layer: the identity
            t.zero_()
            continue
        if src is None:
            continue
        old_shape = tuple(old_state[src].shape)
        if gamma > 0 and spec.decays:
            overlap = tuple(slice(0, min(a, b)) for a, b in zip(old_shape, shape))
            t[overlap] += gamma * rand_draw(name, spec, shape, seed)[overlap]
        if spec.role == Role.WRITER and t.shape[1] > old_shape[1]:
            t[:, old_shape[1]:] = 0.0          # new heads / hidden units write nothing into the stream yet
        if spec.role in STREAM_DIM:
            _mean_fill(t, STREAM_DIM[spec.role] % t.dim(), old_shape[STREAM_DIM[spec.role]])
        if spec.role == Role.NORM_GAIN and t.shape[0] > old_shape[0]:
            t[: old_shape[0]] *= math.sqrt(old_shape[0] / t.shape[0])
    return out


def _mean_fill(t: torch.Tensor, dim: int, n_old: int) -> None:
    """Entries n_old.. along ``dim`` become the mean of entries 0..n_old-1 (new stream channels)."""
    n_new = t.shape[dim] - n_old
    if n_new <= 0:
        return
    mean = t.narrow(dim, 0, n_old).double().mean(dim=dim, keepdim=True)
    t.narrow(dim, n_old, n_new).copy_(mean.expand_as(t.narrow(dim, n_old, n_new)).to(t.dtype))
