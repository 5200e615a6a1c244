"""Function-preserving growth (growth/preserve.py): the grown model computes the old function, on
every growing preset's step-2 growth, and every weight that starts at zero still gets a gradient."""
import dataclasses

import pytest
import torch

from growclip_ds.growth import space
from growclip_ds.growth.pim import rand_draw
from growclip_ds.growth.preserve import preserve
from growclip_ds.growth.slicing import slice_state_dict
from growclip_ds.loss import clip_loss
from growclip_ds.model import GrowCLIP
from growclip_ds.model.clip import arch_specs
from growclip_train.presets import PRESETS

DEPTH_ONLY = 1 + 4 + 8 + 32          # image blocks, conv layers, text blocks, shared blocks: no new heads
WIDTH_BOUND = 5e-4                   # measured: <= 1e-4 on unit-norm features (LayerNorm eps, fp32 rounding)


def _preset(name):
    cfg = PRESETS[name]
    arch = cfg.arch
    if name == "paper":   # the paper's widths and depths; fewer pixels and tokens keep the test fast
        arch = dataclasses.replace(arch, image_size=64, context_length=16, vocab_size=1000)
    return arch, cfg.growth


def _trained_like(arch, seed=1):
    """A model whose gains, biases and positions are all away from their initial values."""
    model = GrowCLIP(arch, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "logit_scale":
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def _inputs(arch, n=4):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, arch.image_size, arch.image_size, generator=g)
    tokens = torch.randint(1, arch.vocab_size, (n, arch.context_length), generator=g)
    tokens[:, 6:] = 0
    tokens[0, 9:] = 0
    tokens[0, 6:9] = 5
    return images, tokens


def _max_diff(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b))


@pytest.mark.parametrize("preset", ["tiny", "demo", "paper"])
def test_preserve_keeps_the_function(preset):
    arch, growth = _preset(preset)
    old = _trained_like(arch).eval()
    x = _inputs(arch)
    with torch.no_grad():
        ref = old(*x)
    for index, bound in ((DEPTH_ONLY, 1e-5), (space.NUM_CANDIDATES - 1, WIDTH_BOUND)):
        new_arch = space.candidate(arch, growth, index)
        grown = GrowCLIP(new_arch, seed=None)
        grown.load_state_dict(preserve(old.state_dict(), arch, new_arch, seed=4))
        with torch.no_grad():
            out = grown.eval()(*x)
        assert _max_diff(ref, out) <= bound, (preset, index, _max_diff(ref, out))
        assert out[2].item() == ref[2].item()


def test_zero_started_weights_get_gradients_and_shrinking_is_slicing():
    arch, growth = _preset("tiny")
    old = _trained_like(arch)
    sup = space.supernet(arch, growth)
    state = preserve(old.state_dict(), arch, sup, seed=4)
    new_block = f"image.blocks.{arch.img_blocks}"
    assert torch.all(state[f"{new_block}.attn.proj.weight"] == 0)
    assert torch.all(state[f"{new_block}.mlp.fc2.weight"] == 0)
    assert torch.all(state[f"image.stem_layers.{arch.img_conv_layers}.gate"] == 0)
    assert torch.all(state["shared.blocks.0.mlp.fc2.weight"] == 0)
    w = arch.img_width
    assert torch.all(state["image.blocks.0.attn.proj.weight"][:, w:] == 0)     # new heads write nothing yet
    assert state["image.blocks.0.attn.qkv_weight"][:, w:].std() > 0            # ... but read: fresh init
    model = GrowCLIP(sup, seed=None)
    model.load_state_dict(state)
    loss = clip_loss(*model(*_inputs(arch)), gather=False)
    loss.backward()
    grads = dict(model.named_parameters())
    for name in (f"{new_block}.attn.proj.weight", f"{new_block}.mlp.fc2.weight",
                 f"image.stem_layers.{arch.img_conv_layers}.gate", "shared.blocks.0.attn.proj.weight",
                 "text.blocks.0.mlp.fc2.weight"):
        assert grads[name].grad.abs().sum() > 0, name
    assert grads["image.blocks.0.attn.proj.weight"].grad[:, w:].abs().sum() > 0
    cand = space.candidate(arch, growth, 0b101010)
    assert all(torch.equal(a, b) for a, b in zip(preserve(state, sup, cand).values(),
                                                  slice_state_dict(state, sup, cand).values()))


def test_exploration_term_perturbs_inherited_weights_only():
    arch, growth = _preset("tiny")
    old = _trained_like(arch)
    sup = space.supernet(arch, growth)
    exact = preserve(old.state_dict(), arch, sup, seed=4)
    noisy = preserve(old.state_dict(), arch, sup, seed=4, gamma=1e-3)

    name = "text.blocks.0.mlp.fc1.weight"
    spec = arch_specs(sup)[name][1]
    o = old.state_dict()[name]
    rows, cols = o.shape
    delta = (noisy[name] - exact[name])[:rows, :cols]
    torch.testing.assert_close(delta, 1e-3 * rand_draw(name, spec, tuple(exact[name].shape), 4)[:rows, :cols])
    new_block = f"text.blocks.{arch.txt_blocks}.attn.proj.weight"
    assert torch.all(noisy[new_block] == 0)                                   # new blocks still start as the identity
    assert torch.equal(noisy["image.blocks.0.ln1.weight"], exact["image.blocks.0.ln1.weight"])   # gains: no noise
