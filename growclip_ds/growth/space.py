"""The growth space of step t (docs/method.md section 3): six factors, each kept or grown by its delta.

Candidate i grows factor k iff bit k of i is set, so index 0 is the step t-1 architecture and
index 63 the supernet. The subnet drawn at a supernet-training iteration comes from a generator
seeded by (seed, t, phase, iteration): the same on every rank without any communication, and the
same after a restart.
"""
from __future__ import annotations

import dataclasses
import random

from ..config import ArchConfig, GrowthConfig
from ..model.init import name_seed

FACTORS = (  # (architecture field, growth delta field)
    ("img_blocks", "delta_img_blocks"),
    ("img_heads", "delta_img_heads"),
    ("img_conv_layers", "delta_conv_layers"),
    ("txt_blocks", "delta_txt_blocks"),
    ("txt_heads", "delta_txt_heads"),
    ("shared_blocks", "delta_shared_blocks"),
)
NUM_CANDIDATES = 2 ** len(FACTORS)


def candidate(prev: ArchConfig, growth: GrowthConfig, index: int) -> ArchConfig:
    if not 0 <= index < NUM_CANDIDATES:
        raise ValueError(f"candidate index {index} outside 0..{NUM_CANDIDATES - 1}")
    changes = {f: getattr(prev, f) + (getattr(growth, d) if index >> k & 1 else 0)
               for k, (f, d) in enumerate(FACTORS)}
    return dataclasses.replace(prev, **changes)


def candidates(prev: ArchConfig, growth: GrowthConfig) -> list[ArchConfig]:
    return [candidate(prev, growth, i) for i in range(NUM_CANDIDATES)]


def supernet(prev: ArchConfig, growth: GrowthConfig) -> ArchConfig:
    return candidate(prev, growth, NUM_CANDIDATES - 1)


def image_variant(arch: ArchConfig) -> tuple:
    """What an image embedding depends on: (conv layers, image blocks, image heads, shared blocks)."""
    return (arch.img_conv_layers, arch.img_blocks, arch.img_heads, arch.shared_blocks)


def text_variant(arch: ArchConfig) -> tuple:
    """What a text embedding depends on: (text blocks, text heads, shared blocks, image heads); the
    image heads set the shared width D^S the text is projected into (CLIP's towers have none)."""
    return (arch.txt_blocks, arch.txt_heads, arch.shared_blocks, arch.img_heads if arch.tower == "growclip" else 0)


def variants(prev: ArchConfig, growth: GrowthConfig) -> list[tuple[str, tuple, ArchConfig]]:
    """The 16 image and 16 text encoder variants of the space (what GAS scores), each with one candidate
    that realises it."""
    out, seen = [], set()
    for c in candidates(prev, growth):
        for kind, key in (("img", image_variant(c)), ("txt", text_variant(c))):
            if (kind, key) not in seen:
                seen.add((kind, key))
                out.append((kind, key, c))
    return out


def sample_index(seed: int, growth_step: int, phase: str, iteration: int) -> int:
    """The candidate of one supernet-training iteration, identical on every rank and after resume."""
    return random.Random(name_seed(seed, f"subnet/t{growth_step}/{phase}/it{iteration}")).randrange(NUM_CANDIDATES)

