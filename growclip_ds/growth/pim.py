"""Parameter inheriting with momentum (PIM), a pure function on full state dicts.

    new = pim(old_state, old_arch, new_arch, beta=0.3, gamma=0.001, seed=s)

For every tensor of ``new_arch`` (docs/method.md section 4):
- a counterpart exists in the old model: its overlapping leading slice becomes
  beta * w_old + gamma * w_rand; channels that exist only because of new heads keep a fresh init;
- a new block / conv layer: the counterpart is the *last* existing block / layer of the same
  stack (copied), then the same rule; a stack that was empty (shared encoder) starts fresh;
- ``logit_scale`` is copied unchanged (``copy_logit_scale``).
w_rand is a fresh draw of the tensor's initializer (from its declared role: normal for matrices;
ones / zeros for norm gains / biases), seeded by (seed, name); the rule applies to every tensor
(``scope="all"``) or only to the normally initialised ones, copying norms, biases and gates unchanged
(``scope="weights"``). Shrinking (supernet -> chosen subnet, phase 3) is the same rule on slices.
``preserve.py`` holds the function-preserving alternative.

It works one tensor at a time on CPU, so peak memory is the input plus the output (two models).
"""
from __future__ import annotations

import re

import torch

from ..config import ArchConfig, ConfigError
from ..model.init import init_tensor
from ..model.clip import arch_specs
from ..model.roles import Role, Spec

STACKS = {  # stack prefix -> architecture field that counts its members
    "image.blocks": "img_blocks",
    "text.blocks": "txt_blocks",
    "shared.blocks": "shared_blocks",
    "image.stem_layers": "img_conv_layers",
}
_MEMBER = re.compile(r"^(image\.blocks|text\.blocks|shared\.blocks|image\.stem_layers)\.(\d+)\.(.+)$")


def source_name(name: str, old_arch: ArchConfig) -> str | None:
    """The old tensor a new tensor inherits from: itself, the last member of its stack, or None."""
    m = _MEMBER.match(name)
    if not m:
        return name
    prefix, idx, rest = m.group(1), int(m.group(2)), m.group(3)
    count = getattr(old_arch, STACKS[prefix])
    if count == 0:
        return None
    return f"{prefix}.{min(idx, count - 1)}.{rest}"


def rand_draw(name: str, spec: Spec, shape: tuple, seed: int) -> torch.Tensor:
    """w_rand: a fresh draw of the tensor's initializer, independent of the model's own init."""
    return init_tensor(name, spec, shape, seed + 7919)


@torch.no_grad()
def pim(old_state: dict, old_arch: ArchConfig, new_arch: ArchConfig, beta: float = 0.3, gamma: float = 0.001,
        seed: int = 0, copy_logit_scale: bool = True, scope: str = "all") -> dict[str, torch.Tensor]:
    if scope not in ("all", "weights"):
        raise ConfigError(f"growth.pim_scope: must be 'all' or 'weights' (got {scope!r})")
    out = {}
    for name, (shape, spec) in arch_specs(new_arch).items():
        src = source_name(name, old_arch)
        if src is None:  # a stack that was empty: a fresh init
            out[name] = init_tensor(name, spec, shape, seed)
            continue
        if src not in old_state:
            raise KeyError(f"{src}: missing from the old state dict (does it match arch {old_arch}?)")
        old = old_state[src].detach().to("cpu", torch.float32)
        if old.dim() != len(shape):
            raise ValueError(f"{name}: old tensor has {old.dim()} dims, new has {len(shape)}")
        overlap = tuple(slice(0, min(a, b)) for a, b in zip(old.shape, shape))
        covered = all(a >= b for a, b in zip(old.shape, shape))  # shrinking: nothing stays fresh
        fresh = torch.empty(shape) if covered else init_tensor(name, spec, shape, seed)  # new heads: fresh
        if spec.role == Role.LOGIT_SCALE and copy_logit_scale:
            fresh[overlap] = old[overlap]
        elif (scope == "weights" and not spec.decays) or (beta == 1.0 and gamma == 0.0):
            fresh[overlap] = old[overlap]
        else:
            fresh[overlap] = beta * old[overlap] + gamma * rand_draw(name, spec, shape, seed)[overlap]
        out[name] = fresh
    return out
