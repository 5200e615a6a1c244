"""Initialisation as a pure function of (parameter name, shape, seed).

Used by the model at construction and by PIM for its fresh draws (w_rand), so both agree on
every tensor's initializer and a draw never depends on module order or on the process.
"""
from __future__ import annotations

import hashlib
import math

import torch

LOGIT_SCALE_INIT = math.log(1 / 0.07)


def name_seed(seed: int, name: str, salt: str = "") -> int:
    """A 63-bit seed from (seed, name, salt), stable across processes and Python versions."""
    h = hashlib.sha256(f"{seed}|{name}|{salt}".encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


def init_kind(name: str, shape: tuple) -> tuple[str, float]:
    """(kind, std) of a parameter: kind is 'normal', 'ones', 'zeros' or 'logit_scale'."""
    parts = name.split(".")
    leaf = parts[-1]
    owner = parts[-2] if len(parts) > 1 else ""
    if leaf == "logit_scale":
        return "logit_scale", 0.0
    if leaf.endswith("bias"):
        return "zeros", 0.0
    if owner.startswith(("ln", "norm")) or (len(parts) > 2 and parts[-3].startswith("ln")):
        return "ones", 0.0
    if len(shape) == 4:  # conv kernels: He init over fan-in
        return "normal", math.sqrt(2.0 / (shape[1] * shape[2] * shape[3]))
    if name == "image.pos_emb":
        # patch tokens leave the conv stem at about unit scale; positions at 0.01 would carry almost
        # no spatial signal, and short runs never learn "left" from "right"
        return "normal", 0.2
    if leaf == "pos_emb":
        return "normal", 0.01
    if leaf == "tok_emb":
        return "normal", 0.02
    # linear/attention weights and the class token: std = fan_in^-1/2 (as CLIP), not a fixed 0.02,
    # which at widths of 32-64 leaves every image's class token nearly equal and training collapses
    return "normal", shape[-1] ** -0.5


def normal_draw(name: str, shape: tuple, seed: int, std: float, salt: str = "") -> torch.Tensor:
    g = torch.Generator().manual_seed(name_seed(seed, name, salt))
    return torch.randn(shape, generator=g) * std


def init_tensor(name: str, shape: tuple, seed: int) -> torch.Tensor:
    kind, std = init_kind(name, shape)
    if kind == "normal":
        return normal_draw(name, shape, seed, std)
    if kind == "ones":
        return torch.ones(shape)
    if kind == "zeros":
        return torch.zeros(shape)
    return torch.full(shape, LOGIT_SCALE_INIT)
