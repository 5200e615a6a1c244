"""The elastic model: sub-architectures equal standalone models, parameter counts, attention."""
import math

import pytest
import torch

from growclip_ds.config import ArchConfig
from growclip_ds.growth.slicing import slice_state_dict
from growclip_ds.model import GrowCLIP, param_count
from growclip_ds.model.elastic import ElasticAttention
from growclip_train.presets import PRESETS

BIG = ArchConfig(img_conv_layers=2, img_blocks=3, img_heads=3, txt_blocks=3, txt_heads=3, shared_blocks=2,
                 head_dim=8, image_size=32, patch_size=8, context_length=12, embed_dim=24, stem_channels=6,
                 vocab_size=64)
SUBS = [
    dict(),
    dict(img_conv_layers=0, img_blocks=1, img_heads=1, txt_blocks=1, txt_heads=1, shared_blocks=0),
    dict(img_conv_layers=1, img_blocks=2, img_heads=3, txt_blocks=3, txt_heads=2, shared_blocks=1),
    dict(img_heads=2, txt_blocks=2, shared_blocks=0),
]
BIG_CLIP = ArchConfig(**{**BIG.to_dict(), "shared_blocks": 0, "tower": "clip"})   # CLIP's towers
CASES = [(BIG, sub) for sub in SUBS] + [(BIG_CLIP, dict(img_heads=2, img_blocks=2, txt_heads=1, img_conv_layers=1))]


def _inputs(arch, n=4):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(n, 3, arch.image_size, arch.image_size, generator=g)
    tokens = torch.randint(1, arch.vocab_size, (n, arch.context_length), generator=g)
    for i, length in enumerate([3, 5, 12, 7][:n]):
        tokens[i, length:] = 0
    return images, tokens


@pytest.mark.parametrize("big_arch,sub", CASES)
def test_subnet_forward_equals_standalone_model(big_arch, sub):
    big = GrowCLIP(big_arch, seed=3)
    small_arch = ArchConfig(**{**big_arch.to_dict(), **sub})
    big.set_arch(small_arch)
    small = GrowCLIP(small_arch, seed=99)
    small.load_state_dict(slice_state_dict(big.state_dict(), big_arch, small_arch))
    images, tokens = _inputs(big_arch)
    with torch.no_grad():
        a, b = big(images, tokens), small(images, tokens)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    assert sum(p.numel() for p in small.parameters()) == param_count(small_arch)


@pytest.mark.parametrize("name,target,tol", [("paper", 30.0e6, 0.03), ("vit-b-16", 149.6e6, 0.01)])
def test_preset_param_counts(name, target, tol):
    arch = PRESETS[name].arch
    assert abs(param_count(arch) - target) / target <= tol
    with torch.device("meta"):
        m = GrowCLIP(arch, seed=None)
    assert sum(p.numel() for p in m.parameters()) == param_count(arch)


def test_attention_equals_float64_reference():
    torch.manual_seed(0)
    attn = ElasticAttention(width_max=16, head_dim=4)
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 5, 12)  # 3 of the 4 heads active
    for causal in (False, True):
        y = attn(x, causal=causal)
        xd = x.double()
        w, bq = attn.qkv_weight.double()[:, :12, :12], attn.qkv_bias.double()[:, :12]
        q, k, v = ((xd @ w[i].T + bq[i]).view(2, 5, 3, 4).transpose(1, 2) for i in range(3))
        s = q @ k.transpose(-1, -2) / math.sqrt(4)
        if causal:
            s = s.masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf"))
        o = (s.softmax(-1) @ v).transpose(1, 2).reshape(2, 5, 12)
        ref = o @ attn.proj.weight.double()[:12, :12].T + attn.proj.bias.double()[:12]
        torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-6)


def test_text_pooling_ignores_padding_and_later_tokens():
    m = GrowCLIP(PRESETS["tiny"].arch, seed=0).eval()
    _, tokens = _inputs(PRESETS["tiny"].arch, n=1)
    tokens[0, 4:] = 0
    other = tokens.clone()
    other[0, 4:] = 0  # same prefix, same padding
    with torch.no_grad():
        torch.testing.assert_close(m.encode_text(tokens), m.encode_text(other))
        changed = tokens.clone()
        changed[0, 1] = (changed[0, 1] % 60) + 1
        assert not torch.allclose(m.encode_text(tokens), m.encode_text(changed))


def test_logit_scale_is_clamped_at_100():
    m = GrowCLIP(PRESETS["tiny"].arch, seed=0)
    with torch.no_grad():
        m.logit_scale.fill_(10.0)
    _, _, scale = m(*_inputs(PRESETS["tiny"].arch, n=2))
    assert scale.item() == pytest.approx(100.0)


def test_shared_width_is_the_image_width_and_paper_step2_reaches_growclip_s2():
    """docs/method.md section 2: D^S = the image width. Then +4 shared blocks cost what +4 image blocks
    cost (Table 9: +7.1M at step 2), and a step-2 candidate is within 1% of GrowCLIP-S2's 116.6M."""
    from growclip_ds.growth import space

    cfg = PRESETS["paper"]
    cands = space.candidates(cfg.arch, cfg.growth)
    with torch.device("meta"):
        m = GrowCLIP(cands[63], seed=None)
    assert m.shared.blocks[0].attn.qkv_weight.shape == (3, 640, 640) and m.text.proj.weight.shape == (640, 512)
    wide = cands[2]                                 # image heads grown: width 640
    shared_cost = param_count(space.candidate(wide, cfg.growth, 32)) - param_count(wide)
    blocks_cost = param_count(space.candidate(wide, cfg.growth, 1)) - param_count(wide)
    assert abs(shared_cost - blocks_cost) / blocks_cost < 0.002     # only the second LayerNorm pair differs
    every_but_text_blocks = cands[63 - 8]
    assert abs(param_count(every_but_text_blocks) - 116.6e6) / 116.6e6 < 0.01
