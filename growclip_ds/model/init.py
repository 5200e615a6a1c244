"""Initialisation as a pure function of (parameter name, role, shape, seed).

Used by the model at construction and by PIM for its fresh draws (w_rand), so both agree on
every tensor's initializer and a draw never depends on module order or on the process. The
initializer comes from the parameter's declared role (``roles.py``), never from its name; the name
only seeds the draw.
"""
from __future__ import annotations

import hashlib
import math

import torch

from .roles import Role, Spec

LOGIT_SCALE_INIT = math.log(1 / 0.07)
ONES = frozenset({Role.NORM_GAIN, Role.GATE})


def name_seed(seed: int, name: str, salt: str = "") -> int:
    """A 63-bit seed from (seed, name, salt), stable across processes and Python versions."""
    h = hashlib.sha256(f"{seed}|{name}|{salt}".encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


def normal_std(spec: Spec, shape: tuple) -> float:
    """The std of a normally initialised role: the layer's fixed std, else its fan-in rule."""
    if spec.std is not None:
        return spec.std
    if spec.role in (Role.CONV, Role.PATCH):  # He init over fan-in
        return math.sqrt(2.0 / math.prod(shape[1:]))
    if spec.role == Role.EMBEDDING:
        return 0.02
    # linear/attention weights and the class token: std = fan_in^-1/2 (as CLIP), not a fixed 0.02,
    # which at widths of 32-64 leaves every image's class token nearly equal and training collapses
    return shape[-1] ** -0.5


def normal_draw(name: str, shape: tuple, seed: int, std: float, salt: str = "") -> torch.Tensor:
    g = torch.Generator().manual_seed(name_seed(seed, name, salt))
    return torch.randn(shape, generator=g) * std


def init_tensor(name: str, spec: Spec, shape: tuple, seed: int) -> torch.Tensor:
    if spec.decays:
        return normal_draw(name, shape, seed, normal_std(spec, shape))
    if spec.role in ONES:
        return torch.ones(shape)
    if spec.role == Role.LOGIT_SCALE:
        return torch.full(shape, LOGIT_SCALE_INIT)
    return torch.zeros(shape)
