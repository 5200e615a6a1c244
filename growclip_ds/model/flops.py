"""Analytic FLOPs of one sample's forward pass (2 FLOPs per multiply-accumulate), conv stem,
shared encoder and attention included. Training counts 3 x forward (no recomputation).

    >>> forward_flops(PRESETS["vit-b-16"].arch)   # ~41.1e9 (35.1 image + 6.0 text, OpenCLIP's count)
"""
from __future__ import annotations

from ..config import ArchConfig


def block_flops(width: int, tokens: int, ratio: int) -> int:
    """qkv, attention scores, attention-weighted values, output projection, MLP."""
    linear = 2 * tokens * (3 * width * width + width * width + 2 * ratio * width * width)
    attention = 2 * 2 * tokens * tokens * width
    return linear + attention


def image_flops(arch: ArchConfig, with_shared: bool = True) -> int:
    s, w = arch.image_size, arch.img_width
    n = arch.num_patches + 1
    if arch.stem == "conv":
        c = arch.stem_channels
        h = s // 2
        stem = 2 * h * h * c * 3 * 9 + arch.img_conv_layers * 2 * h * h * c * c * 9
        stem += 2 * arch.num_patches * w * c * (arch.patch_size // 2) ** 2
    else:
        stem = 2 * arch.num_patches * w * 3 * arch.patch_size ** 2
    f = stem + arch.img_blocks * block_flops(w, n, arch.mlp_ratio) + 2 * n * w * arch.embed_dim
    if with_shared:
        f += arch.shared_blocks * block_flops(arch.embed_dim, n, arch.mlp_ratio)
    return f + 2 * arch.embed_dim * arch.embed_dim


def text_flops(arch: ArchConfig, with_shared: bool = True) -> int:
    n, w = arch.context_length, arch.txt_width
    f = arch.txt_blocks * block_flops(w, n, arch.mlp_ratio) + 2 * n * w * arch.embed_dim
    if with_shared:
        f += arch.shared_blocks * block_flops(arch.embed_dim, n, arch.mlp_ratio)
    return f + 2 * arch.embed_dim * arch.embed_dim


def forward_flops(arch: ArchConfig) -> int:
    return image_flops(arch) + text_flops(arch)


def train_flops(arch: ArchConfig) -> int:
    """Per training sample: forward + backward = 3 x forward."""
    return 3 * forward_flops(arch)
