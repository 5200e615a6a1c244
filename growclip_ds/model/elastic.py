"""Elastic layers: each owns the weights of its largest size and slices them for the active size.

The active width is read from the input tensor (``x.shape[-1]``), so only the layers that *create*
a width (patchify conv, token embedding) and the encoders that choose a depth carry active sizes.
A subnet with k heads uses the first k*head_dim channels of every width-dependent tensor (the
AutoFormer / once-for-all convention). All slicing happens inside the forward of the module that
owns the parameter, which is where DeepSpeed ZeRO-3 has gathered it.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .roles import Role, declare


class ElasticLinear(nn.Module):
    """y = x W[:out, :in]^T + b[:out]; ``in`` from the input, ``out`` fixed or set per call.

    ``writer``: its output rows are channels of a residual stream (a block's output projection, the
    projection into the shared stream), which is what function-preserving growth must know."""

    def __init__(self, in_max: int, out_max: int, bias: bool = True, writer: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_max, in_max))
        self.bias = nn.Parameter(torch.empty(out_max)) if bias else None
        declare(self, weight=Role.WRITER if writer else Role.MATRIX,
                bias=Role.WRITER_BIAS if writer else Role.BIAS)

    def forward(self, x: torch.Tensor, out: int | None = None) -> torch.Tensor:
        out = self.weight.shape[0] if out is None else out
        w = self.weight[:out, : x.shape[-1]]
        return F.linear(x, w, None if self.bias is None else self.bias[:out])


class ElasticLayerNorm(nn.Module):
    """LayerNorm over the active width: the first ``x.shape[-1]`` affine entries."""

    def __init__(self, dim_max: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim_max))
        self.bias = nn.Parameter(torch.empty(dim_max))
        self.eps = eps
        declare(self, weight=Role.NORM_GAIN, bias=Role.NORM_BIAS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1]
        return F.layer_norm(x, (d,), self.weight[:d], self.bias[:d], self.eps)


class ElasticAttention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention``.

    ``qkv_weight`` is stored as (3, W, W) so that the active heads of q, k and v are one prefix
    slice on every dim; the head count is ``x.shape[-1] // head_dim``.
    """

    def __init__(self, width_max: int, head_dim: int):
        super().__init__()
        self.head_dim = head_dim
        self.qkv_weight = nn.Parameter(torch.empty(3, width_max, width_max))
        self.qkv_bias = nn.Parameter(torch.empty(3, width_max))
        self.proj = ElasticLinear(width_max, width_max, writer=True)
        declare(self, qkv_weight=Role.MATRIX, qkv_bias=Role.BIAS)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        b, n, w = x.shape
        heads = w // self.head_dim
        qkv = F.linear(x, self.qkv_weight[:, :w, :w].reshape(3 * w, w), self.qkv_bias[:, :w].reshape(3 * w))
        q, k, v = qkv.view(b, n, 3, heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.proj(y.transpose(1, 2).reshape(b, n, w), out=w)


class ElasticMLP(nn.Module):
    def __init__(self, width_max: int, ratio: int):
        super().__init__()
        self.ratio = ratio
        self.fc1 = ElasticLinear(width_max, ratio * width_max)
        self.fc2 = ElasticLinear(ratio * width_max, width_max, writer=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.shape[-1]
        return self.fc2(F.gelu(self.fc1(x, out=self.ratio * w)), out=w)


class Block(nn.Module):
    """Pre-LN transformer block over the active width."""

    def __init__(self, width_max: int, head_dim: int, mlp_ratio: int, causal: bool):
        super().__init__()
        self.causal = causal
        self.ln1 = ElasticLayerNorm(width_max)
        self.attn = ElasticAttention(width_max, head_dim)
        self.ln2 = ElasticLayerNorm(width_max)
        self.mlp = ElasticMLP(width_max, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), causal=self.causal)
        return x + self.mlp(self.ln2(x))


class SharedBlock(nn.Module):
    """A block whose attention and MLP serve both modalities, with one LayerNorm pair per modality."""

    MODALITIES = ("img", "txt")

    def __init__(self, width: int, head_dim: int, mlp_ratio: int):
        super().__init__()
        self.ln1 = nn.ModuleDict({m: ElasticLayerNorm(width) for m in self.MODALITIES})
        self.attn = ElasticAttention(width, head_dim)
        self.ln2 = nn.ModuleDict({m: ElasticLayerNorm(width) for m in self.MODALITIES})
        self.mlp = ElasticMLP(width, mlp_ratio)

    def forward(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        x = x + self.attn(self.ln1[modality](x), causal=(modality == "txt"))
        return x + self.mlp(self.ln2[modality](x))
