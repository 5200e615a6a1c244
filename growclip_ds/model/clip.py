"""The dual-stream GrowCLIP model with an optional shared encoder (docs/method.md section 2).

    model = GrowCLIP(supernet_arch)        # owns the weights of the largest architecture
    model.set_arch(candidate_arch)         # any architecture it contains, by weight slicing
    img, txt, scale = model(images, tokens)

Text pooling takes the end-of-text token, found as the last non-pad token (pad id 0).
No DeepSpeed here: parallelism wraps this plain module from outside (``growclip_train.train``).
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..arch import ArchConfig
from .elastic import ElasticLayerNorm, ElasticLinear
from .encoders import ImageEncoder, SharedEncoder, TextEncoder
from .init import init_tensor
from .roles import Role, Spec, declare, param_specs

PAD_ID = 0
MAX_LOGIT_SCALE = math.log(100.0)


class GrowCLIP(nn.Module):
    def __init__(self, arch: ArchConfig, seed: int = 0):
        super().__init__()
        self.max_arch = arch
        e, ds = arch.embed_dim, arch.img_width   # joint space; shared width D^S = the image width
        self.image = ImageEncoder(arch)
        self.text = TextEncoder(arch)
        self.shared = SharedEncoder(arch)
        clip_tower = arch.tower == "clip"    # final LN and head at each tower's own width, no head bias
        wi, wt = (arch.img_width, arch.txt_width) if clip_tower else (ds, ds)
        self.img_ln_final = ElasticLayerNorm(wi)
        self.txt_ln_final = ElasticLayerNorm(wt)
        self.img_head = ElasticLinear(wi, e, bias=not clip_tower)
        self.txt_head = ElasticLinear(wt, e, bias=not clip_tower)
        self.logit_scale = nn.Parameter(torch.empty(1))  # 1-d: DeepSpeed cannot broadcast 0-d tensors
        declare(self, logit_scale=Role.LOGIT_SCALE)
        if arch.final_ln_init == "normal":   # random gains (arch.final_ln_init), drawn and decayed like a matrix
            declare(self.img_ln_final, weight=Spec(Role.NORM_GAIN, wi ** -0.5))
            declare(self.txt_ln_final, weight=Spec(Role.NORM_GAIN, wt ** -0.5))
        self.arch = arch
        self.reset_parameters(seed)

    # ------------------------------------------------------------------ architecture
    def set_arch(self, arch: ArchConfig) -> None:
        """Activate a sub-architecture of ``max_arch`` (first k blocks / heads / conv layers)."""
        check_contains(self.max_arch, arch)
        self.image.set_active(arch.img_conv_layers, arch.img_blocks, arch.img_heads)
        self.text.set_active(arch.txt_blocks, arch.txt_heads)
        self.shared.active_blocks = arch.shared_blocks
        self.arch = arch

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        for enc in (self.image, self.text, self.shared):
            enc.grad_checkpointing = enabled

    @torch.no_grad()
    def reset_parameters(self, seed: int | None = 0) -> None:
        """Initialise every tensor by its declared role, seeded by (seed, its name), so init does not
        depend on module order. ``seed=None`` leaves the tensors uninitialised (meta-device queries)."""
        specs = param_specs(self)   # also checks that every parameter has a role
        if seed is None:
            return
        for name, p in self.named_parameters():
            p.copy_(init_tensor(name, specs[name], tuple(p.shape), seed))

    # ------------------------------------------------------------------ forward
    def to_shared(self, x: torch.Tensor, proj: nn.Module, modality: str, pool) -> torch.Tensor:
        """Project tokens to D^S (the active image width), run the shared stack, pool. Without shared
        blocks the pooled token is projected alone: the projection acts per token, so the result is
        the same at 1/N the cost. CLIP's towers (no ``proj``) just pool."""
        ds = self.arch.img_width
        if proj is None:
            return pool(x)
        if self.shared.active_blocks == 0:
            return proj(pool(x), out=ds)
        return pool(self.shared(proj(x, out=ds), modality))

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        x = self.to_shared(self.image(images), self.image.proj, "img", lambda t: t[:, 0])
        x = self.img_head(self.img_ln_final(x))
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        eot = (tokens != PAD_ID).sum(-1).clamp(min=1) - 1
        rows = torch.arange(tokens.shape[0], device=tokens.device)
        x = self.to_shared(self.text(tokens), self.text.proj, "txt", lambda t: t[rows, eot])
        x = self.txt_head(self.txt_ln_final(x))
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, images: torch.Tensor, tokens: torch.Tensor):
        """Normalised image and text features and exp(logit_scale), clamped at 100.

        The scale is computed here, inside the forward that owns it, so ZeRO-3 has it gathered."""
        return (self.encode_image(images), self.encode_text(tokens),
                self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp())


def check_contains(big: ArchConfig, small: ArchConfig) -> None:
    """Raise ValueError unless ``small`` is a sub-architecture of ``big``."""
    fixed = ("head_dim", "image_size", "patch_size", "context_length", "embed_dim", "stem_channels",
             "stem", "vocab_size", "mlp_ratio", "tower")
    for f in fixed:
        if getattr(big, f) != getattr(small, f):
            raise ValueError(f"arch.{f}: {getattr(small, f)!r} differs from the supernet's {getattr(big, f)!r}; "
                             "only blocks, heads and conv layers are elastic")
    for f in ("img_conv_layers", "img_blocks", "img_heads", "txt_blocks", "txt_heads", "shared_blocks"):
        if getattr(small, f) > getattr(big, f):
            raise ValueError(f"arch.{f}: {getattr(small, f)} exceeds the supernet's {getattr(big, f)}")


def block_params(width: int, ratio: int, shared: bool = False) -> int:
    """ln1, qkv, proj, ln2, fc1, fc2 (a shared block has two LayerNorms per position)."""
    lns = 8 * width if shared else 4 * width
    return lns + (3 * width * width + 3 * width) + (width * width + width) \
        + (ratio * width * width + ratio * width) + (ratio * width * width + width)


def param_count(arch: ArchConfig) -> int:
    """Parameters of a model of this architecture, without building it (D^S = the image width)."""
    wi, wt, e, r = arch.img_width, arch.txt_width, arch.embed_dim, arch.mlp_ratio
    if arch.stem == "conv":
        c, k = arch.stem_channels, arch.patch_size // 2
        conv = lambda cin: cin * c * 9 + c + 2 * c  # noqa: E731  conv + bias + GroupNorm
        gate = c if arch.stem_residual else 0
        stem = conv(3) + arch.img_conv_layers * (conv(c) + gate) + wi * c * k * k + wi
    else:
        stem = wi * 3 * arch.patch_size ** 2
    image = stem + wi + (arch.num_patches + 1) * wi + arch.img_blocks * block_params(wi, r)
    text = (arch.vocab_size + arch.context_length) * wt + arch.txt_blocks * block_params(wt, r)
    shared = arch.shared_blocks * block_params(wi, r, shared=True)
    if arch.tower == "clip":   # ln_pre; final LN and bias-free head at each tower's width
        towers = 2 * wi + (2 * wi + wi * e) + (2 * wt + wt * e)
    else:                      # projections to D^S; final LN and biased head at D^S
        towers = (wi * wi + wi) + (wt * wi + wi) + 2 * (2 * wi) + 2 * (wi * e + e)
    return image + text + shared + towers + 1


@functools.lru_cache(maxsize=64)
def arch_specs(arch) -> dict[str, tuple[tuple, Spec]]:
    """Name -> (shape, Spec) of a model of ``arch``, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = GrowCLIP(arch, seed=None)
    specs = param_specs(model)
    return {k: (tuple(v.shape), specs[k]) for k, v in model.state_dict().items()}
