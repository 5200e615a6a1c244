"""The architecture of one GrowCLIP model: its factors (blocks, heads, conv layers, shared blocks), widths
and towers, validated. Part of the library (the model, export and ``growclip_ds.load`` need it; the
training config in config.py holds one), and bundled as is into Hugging Face exports, so it depends on
nothing but config_fields.py."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .config_fields import _check, _from_dict


@dataclass(frozen=True)
class ArchConfig:
    """One CLIP architecture: a point of the growth space (docs/method.md section 2)."""

    img_conv_layers: int = 1      # l^I: elastic stride-1 conv layers of the stem
    img_blocks: int = 6           # b^I
    img_heads: int = 6            # h^I, image width = img_heads * head_dim
    txt_blocks: int = 6           # b^T
    txt_heads: int = 4            # h^T, text width = txt_heads * head_dim
    shared_blocks: int = 0        # b^S
    head_dim: int = 64
    image_size: int = 224
    patch_size: int = 16
    context_length: int = 77
    embed_dim: int = 512          # joint space width, also the shared encoder's width D^S
    stem_channels: int = 64       # C of the conv stem
    stem: str = "conv"            # "conv" (GrowCLIP) or "patch" (CLIP's plain patch embedding)
    stem_residual: bool = True    # conv stem layers x + gate * f(x), which growth can add as the identity
                                  # (inherit=preserve); False: plain f(x) layers, better from scratch at the
                                  # demo scale (docs/results/growth_pays_cpu2_2026-11-30), not growable exactly
    final_ln_init: str = "ones"   # gains of the final LayerNorms: "ones", or "normal" (random, std width^-1/2,
                                  # weight-decayed: the 2026-11-23 init, better at the demo scale)
    vocab_size: int = 49409       # CLIP's BPE has 49408 ids; model ids are those + 1 (0 is padding)
    mlp_ratio: int = 4
    tower: str = "growclip"       # "growclip": pooled token projected to D^S, then final LN and a biased
                                  # head (shared blocks possible); "clip": CLIP's towers (LN after the
                                  # positions, final LN at the tower's width, bias-free head; no shared
                                  # blocks), what Hugging Face CLIPModel and open_clip load (growclip-ds export)

    @property
    def img_width(self) -> int:
        return self.img_heads * self.head_dim

    @property
    def txt_width(self) -> int:
        return self.txt_heads * self.head_dim

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def validate(self, prefix: str = "arch") -> "ArchConfig":
        for f in ("img_blocks", "img_heads", "txt_blocks", "txt_heads", "head_dim", "image_size",
                  "patch_size", "context_length", "embed_dim", "vocab_size", "mlp_ratio"):
            v = getattr(self, f)
            _check(isinstance(v, int) and v >= 1, f"{prefix}.{f}", "must be an integer >= 1", v)
        for f in ("img_conv_layers", "shared_blocks", "stem_channels"):
            v = getattr(self, f)
            _check(isinstance(v, int) and v >= 0, f"{prefix}.{f}", "must be an integer >= 0", v)
        _check(self.stem in ("conv", "patch"), f"{prefix}.stem", "must be 'conv' or 'patch'", self.stem)
        _check(self.final_ln_init in ("ones", "normal"), f"{prefix}.final_ln_init", "must be 'ones' or 'normal'",
               self.final_ln_init)
        _check(self.tower in ("growclip", "clip"), f"{prefix}.tower", "must be 'growclip' or 'clip'", self.tower)
        _check(self.tower == "growclip" or self.shared_blocks == 0, f"{prefix}.shared_blocks",
               "must be 0 with tower='clip' (CLIP's towers share no blocks)", self.shared_blocks)
        _check(self.image_size % self.patch_size == 0, f"{prefix}.patch_size",
               f"must divide image_size={self.image_size}", self.patch_size)
        if self.stem == "conv":
            _check(self.patch_size >= 2 and self.patch_size % 2 == 0, f"{prefix}.patch_size",
                   "must be even with the conv stem (its first conv has stride 2)", self.patch_size)
            _check(self.stem_channels >= 1, f"{prefix}.stem_channels", "must be >= 1 with stem='conv'",
                   self.stem_channels)
        else:
            _check(self.img_conv_layers == 0, f"{prefix}.img_conv_layers",
                   "must be 0 with stem='patch' (no conv stem)", self.img_conv_layers)
        _check(self.context_length >= 3, f"{prefix}.context_length", "must be >= 3 (start, token, end)",
               self.context_length)
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, prefix: str = "arch") -> "ArchConfig":
        return _from_dict(cls, d, prefix)
