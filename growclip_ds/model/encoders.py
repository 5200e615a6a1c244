"""The three encoders of GrowCLIP: conv-stem ViT (image), causal transformer (text), shared stack.

Each encoder is built at its largest size and runs any smaller size set by ``set_active``.
Image and text encoders return token sequences at their own width. With GrowCLIP's towers each owns
the projection ``proj`` to the shared width D^S (= the image width of the architecture), which
``GrowCLIP`` applies (see ``to_shared``); with CLIP's towers (``arch.tower="clip"``) there is no
``proj`` and the image encoder normalises its tokens once before the blocks (``ln_pre``), as CLIP does.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .elastic import Block, ElasticLayerNorm, ElasticLinear, SharedBlock
from .roles import Role, Spec, declare

IMAGE_POS_STD = 0.2   # patch tokens leave the conv stem at about unit scale; positions at 0.01 would
                      # carry almost no spatial signal, and short runs never learn "left" from "right"
TEXT_POS_STD = 0.01


def _run_blocks(blocks, x, n: int, grad_ckpt: bool, *args):
    for blk in list(blocks)[:n]:
        x = checkpoint(blk, x, *args, use_reentrant=False) if grad_ckpt and x.requires_grad else blk(x, *args)
    return x


class ConvLayer(nn.Module):
    """3x3 conv + GroupNorm(1) + ReLU. GroupNorm(1) has no running statistics, so every rank,
    every ZeRO stage and evaluation see the same function (BatchNorm would not)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv = declare(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), weight=Role.CONV, bias=Role.BIAS)
        self.norm = declare(nn.GroupNorm(1, cout), weight=Role.NORM_GAIN, bias=Role.NORM_BIAS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)))


class ResidualConvLayer(ConvLayer):
    """x + gate * ConvLayer(x), a per-channel gate (ones at init): the elastic stride-1 layers of
    the stem. With the gate at zero the layer is the identity, so a grown stem can start out
    computing exactly what the smaller one did (and skipping a layer is the identity too)."""

    def __init__(self, channels: int):
        super().__init__(channels, channels, stride=1)
        self.gate = nn.Parameter(torch.empty(channels))
        declare(self, gate=Role.GATE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gate.view(1, -1, 1, 1) * super().forward(x)


class ElasticPatchify(nn.Module):
    """Conv with kernel = stride that makes tokens; its output width is the active image width."""

    def __init__(self, cin: int, width_max: int, patch: int, bias: bool):
        super().__init__()
        self.patch = patch
        self.weight = nn.Parameter(torch.empty(width_max, cin, patch, patch))
        self.bias = nn.Parameter(torch.empty(width_max)) if bias else None
        declare(self, weight=Role.PATCH, bias=Role.PATCH_BIAS)

    def forward(self, x: torch.Tensor, width: int) -> torch.Tensor:
        b = None if self.bias is None else self.bias[:width]
        return F.conv2d(x, self.weight[:width], b, stride=self.patch)


class ImageEncoder(nn.Module):
    """Conv stem (stride-2 conv, l elastic stride-1 convs, patchify) or plain patch embedding,
    then class token + learned positions, b pre-LN blocks; ``proj`` maps to D^S = the image width."""

    def __init__(self, arch):
        super().__init__()
        w = arch.img_width
        self.head_dim, self.stem_kind = arch.head_dim, arch.stem
        if arch.stem == "conv":
            c = arch.stem_channels
            self.stem_in = ConvLayer(3, c, stride=2)
            layer = ResidualConvLayer if arch.stem_residual else (lambda ch: ConvLayer(ch, ch, stride=1))
            self.stem_layers = nn.ModuleList(layer(c) for _ in range(arch.img_conv_layers))
            self.patchify = ElasticPatchify(c, w, arch.patch_size // 2, bias=True)
        else:
            self.patchify = ElasticPatchify(3, w, arch.patch_size, bias=False)
        self.cls_token = nn.Parameter(torch.empty(w))
        self.pos_emb = nn.Parameter(torch.empty(arch.num_patches + 1, w))
        declare(self, cls_token=Role.CLASS_TOKEN, pos_emb=Spec(Role.POSITION, IMAGE_POS_STD))
        clip_tower = arch.tower == "clip"
        self.ln_pre = ElasticLayerNorm(w) if clip_tower else None
        self.blocks = nn.ModuleList(Block(w, arch.head_dim, arch.mlp_ratio, causal=False)
                                    for _ in range(arch.img_blocks))
        self.proj = None if clip_tower else ElasticLinear(w, w, writer=True)
        self.set_active(arch.img_conv_layers, arch.img_blocks, arch.img_heads)
        self.grad_checkpointing = False

    def set_active(self, conv_layers: int, blocks: int, heads: int) -> None:
        self.active = (conv_layers, blocks, heads)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        conv_layers, blocks, heads = self.active
        width = heads * self.head_dim
        x = images
        if self.stem_kind == "conv":
            x = self.stem_in(x)
            for layer in list(self.stem_layers)[:conv_layers]:
                x = layer(x)
        x = self.patchify(x, width).flatten(2).transpose(1, 2)           # B, N, W
        cls = self.cls_token[:width].expand(x.shape[0], 1, width)
        x = torch.cat([cls, x], dim=1) + self.pos_emb[: x.shape[1] + 1, :width]
        if self.ln_pre is not None:
            x = self.ln_pre(x)
        return _run_blocks(self.blocks, x, blocks, self.grad_checkpointing)


class TextEncoder(nn.Module):
    """Token + learned position embeddings, b causal pre-LN blocks; ``proj`` maps to D^S."""

    def __init__(self, arch):
        super().__init__()
        w = arch.txt_width
        self.head_dim = arch.head_dim
        self.tok_emb = nn.Parameter(torch.empty(arch.vocab_size, w))
        self.pos_emb = nn.Parameter(torch.empty(arch.context_length, w))
        declare(self, tok_emb=Role.EMBEDDING, pos_emb=Spec(Role.POSITION, TEXT_POS_STD))
        self.blocks = nn.ModuleList(Block(w, arch.head_dim, arch.mlp_ratio, causal=True)
                                    for _ in range(arch.txt_blocks))
        self.proj = None if arch.tower == "clip" else ElasticLinear(w, arch.img_width, writer=True)
        self.set_active(arch.txt_blocks, arch.txt_heads)
        self.grad_checkpointing = False

    def set_active(self, blocks: int, heads: int) -> None:
        self.active = (blocks, heads)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        blocks, heads = self.active
        width = heads * self.head_dim
        x = F.embedding(tokens, self.tok_emb)[..., :width] + self.pos_emb[: tokens.shape[1], :width]
        return _run_blocks(self.blocks, x, blocks, self.grad_checkpointing)


class SharedEncoder(nn.Module):
    """b^S blocks whose attention/MLP weights both modalities use (LayerNorms per modality), at the
    image width D^S; a subnet with fewer image heads uses the leading slice of it."""

    def __init__(self, arch):
        super().__init__()
        self.blocks = nn.ModuleList(SharedBlock(arch.img_width, arch.head_dim, arch.mlp_ratio)
                                    for _ in range(arch.shared_blocks))
        self.active_blocks = arch.shared_blocks
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        return _run_blocks(self.blocks, x, self.active_blocks, self.grad_checkpointing, modality)
