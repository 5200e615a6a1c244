"""Weight slicing on state dicts: the weights a sub-architecture uses inside a larger model.

Every tensor of a smaller architecture is the leading slice of the same-named tensor of the
larger one (first k blocks / heads / conv layers / channels), so one rule serves all tensors.
"""
from __future__ import annotations

import torch

from ..config import ArchConfig
from ..model import check_contains
from ..model.clip import arch_specs


def state_shapes(arch: ArchConfig) -> dict[str, tuple]:
    """Name -> shape of a model of ``arch`` (built on the meta device: no memory, no init)."""
    return {k: shape for k, (shape, _) in arch_specs(arch).items()}


def leading_slice(shape: tuple) -> tuple:
    return tuple(slice(0, n) for n in shape)


def slice_state_dict(state: dict, big: ArchConfig, small: ArchConfig) -> dict[str, torch.Tensor]:
    """The weights of ``small`` as used by ``big``'s supernet forward after ``set_arch(small)``."""
    check_contains(big, small)
    out = {}
    for name, shape in state_shapes(small).items():
        if name not in state:
            raise KeyError(f"{name}: missing from the state dict of the larger model")
        out[name] = state[name][leading_slice(shape)].clone()
    return out
