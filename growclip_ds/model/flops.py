"""Analytic FLOPs of one sample's forward pass (2 FLOPs per multiply-accumulate), conv stem,
shared encoder and attention included; norms, activations and softmax are not counted (the
OpenCLIP / DeepSpeed-profiler MAC convention). Training counts 3 x forward; activation
recomputation (gradient checkpointing) is counted apart, as hardware FLOPs.

    >>> forward_flops(PRESETS["vit-b-16"].arch)   # 41.09e9 = 35.13 image + 5.96 text (OpenCLIP)

Checked against DeepSpeed's flops profiler and OpenCLIP's figures in tests/test_flops.py.
"""
from __future__ import annotations

from ..config import ArchConfig


def block_flops(width: int, tokens: int, ratio: int) -> int:
    """qkv, attention scores, attention-weighted values, output projection, MLP."""
    linear = 2 * tokens * (3 * width * width + width * width + 2 * ratio * width * width)
    attention = 2 * 2 * tokens * tokens * width
    return linear + attention


def image_flops(arch: ArchConfig) -> int:
    s, w = arch.image_size, arch.img_width
    n = arch.num_patches + 1
    if arch.stem == "conv":
        c = arch.stem_channels
        h = s // 2
        stem = 2 * h * h * c * 3 * 9 + arch.img_conv_layers * 2 * h * h * c * c * 9
        stem += 2 * arch.num_patches * w * c * (arch.patch_size // 2) ** 2
    else:
        stem = 2 * arch.num_patches * w * 3 * arch.patch_size ** 2
    return stem + arch.img_blocks * block_flops(w, n, arch.mlp_ratio) + _to_shared(arch, w, n)


def _to_shared(arch: ArchConfig, width: int, tokens: int) -> int:
    """Projection to D^S = the image width (every token when the shared stack runs, else the
    pooled one), the shared blocks, and the final head to the joint space. CLIP's towers have the
    head alone, at the tower's own width."""
    e, ds = arch.embed_dim, arch.img_width
    if arch.tower == "clip":
        return 2 * width * e
    if arch.shared_blocks == 0:
        return 2 * width * ds + 2 * ds * e
    f = 2 * tokens * width * ds + 2 * ds * e
    return f + arch.shared_blocks * block_flops(ds, tokens, arch.mlp_ratio)


def text_flops(arch: ArchConfig) -> int:
    n, w = arch.context_length, arch.txt_width
    return arch.txt_blocks * block_flops(w, n, arch.mlp_ratio) + _to_shared(arch, w, n)


def forward_flops(arch: ArchConfig) -> int:
    return image_flops(arch) + text_flops(arch)


def train_flops(arch: ArchConfig) -> int:
    """Model FLOPs per training sample: forward + backward = 3 x forward (what MFU counts)."""
    return 3 * forward_flops(arch)


def hardware_train_flops(arch: ArchConfig, recompute: bool) -> int:
    """FLOPs actually executed per sample: with gradient checkpointing every block's forward runs
    twice, so 4 x the block forwards (the stem and projections are not recomputed)."""
    if not recompute:
        return train_flops(arch)
    n_img, n_txt = arch.num_patches + 1, arch.context_length
    blocks = arch.img_blocks * block_flops(arch.img_width, n_img, arch.mlp_ratio) \
        + arch.txt_blocks * block_flops(arch.txt_width, n_txt, arch.mlp_ratio) \
        + arch.shared_blocks * (block_flops(arch.img_width, n_img, arch.mlp_ratio)
                                + block_flops(arch.img_width, n_txt, arch.mlp_ratio))
    return train_flops(arch) + blocks
