"""What each parameter *is*, declared by the layer that owns it.

A parameter's role decides its initializer, its weight-decay group and how growth treats it
(``growclip_ds.growth``). The layer declares the role when it creates the tensor, so renaming a
layer cannot change any of the three; a parameter with no declared role is an error.

    spec = param_specs(model)["text.blocks.0.attn.proj.weight"]   # Spec(role=Role.WRITER, ...)
    specs = clip.arch_specs(arch)                                  # the same, from an architecture alone
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch.nn as nn


class Role(str, Enum):
    MATRIX = "matrix"            # a linear/attention weight that reads features: normal, std fan_in^-1/2
    WRITER = "writer"            # a linear weight whose output rows are residual-stream channels
    WRITER_BIAS = "writer_bias"  # the bias of a WRITER
    BIAS = "bias"                # any other bias: zeros
    CONV = "conv"                # a conv kernel: He normal over fan-in
    PATCH = "patch"              # the patchify kernel: makes the image stream's channels (rows)
    PATCH_BIAS = "patch_bias"
    EMBEDDING = "embedding"      # token embedding, channels on the last dim
    POSITION = "position"        # learned positions, channels on the last dim
    CLASS_TOKEN = "class_token"
    NORM_GAIN = "norm_gain"      # LayerNorm / GroupNorm gain: ones
    NORM_BIAS = "norm_bias"      # LayerNorm / GroupNorm shift: zeros
    GATE = "gate"                # per-channel gate of a residual branch: ones (zero = identity)
    LOGIT_SCALE = "logit_scale"


# roles drawn from a normal distribution; they (and only they) are weight-decayed and touched by
# PIM's ``scope="weights"``
NORMAL_ROLES = frozenset({Role.MATRIX, Role.WRITER, Role.CONV, Role.PATCH, Role.EMBEDDING, Role.POSITION,
                          Role.CLASS_TOKEN})
# the dim of the tensor that indexes residual-stream channels, for roles that write the stream
STREAM_DIM = {Role.WRITER: 0, Role.WRITER_BIAS: 0, Role.PATCH: 0, Role.PATCH_BIAS: 0, Role.CLASS_TOKEN: 0,
              Role.EMBEDDING: -1, Role.POSITION: -1}
# the roles that write a residual branch's output: zero in a block or layer that must start as the identity
RESIDUAL_OUT = frozenset({Role.WRITER, Role.WRITER_BIAS, Role.GATE})


@dataclass(frozen=True)
class Spec:
    role: Role
    std: float | None = None     # a fixed std for normal roles; None: the role's fan-in rule

    @property
    def decays(self) -> bool:
        """Drawn from a normal distribution (a gain with a std too: arch.final_ln_init=normal)."""
        return self.role in NORMAL_ROLES or (self.role == Role.NORM_GAIN and self.std is not None)


def declare(module: nn.Module, **roles) -> nn.Module:
    """Attach roles to ``module``'s own parameters: ``declare(lin, weight=Role.WRITER)``; a value
    may be a ``Spec`` for a fixed std. Works for torch's own layers (Conv2d, GroupNorm) too."""
    have = dict(getattr(module, "param_roles", {}))
    for name, r in roles.items():
        have[name] = r if isinstance(r, Spec) else Spec(Role(r))
    module.param_roles = have
    return module


def param_specs(model: nn.Module) -> dict[str, Spec]:
    """Full parameter name -> Spec; raises for a parameter whose layer declared no role."""
    out = {}
    for mod_name, mod in model.named_modules():
        roles = getattr(mod, "param_roles", {})
        for p_name, _ in mod.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if p_name not in roles:
                raise TypeError(f"{full}: {type(mod).__name__} declares no role for {p_name!r}; "
                                "declare one with growclip_ds.model.roles.declare")
            out[full] = roles[p_name]
    return out
