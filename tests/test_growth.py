"""Growth space and PIM, tensor by tensor, against float64 recomputations."""
import math

import pytest
import torch

from growclip_ds.config import ArchConfig, GrowthConfig
from growclip_ds.growth import space
from growclip_ds.growth.pim import pim, rand_draw
from growclip_ds.growth.slicing import state_shapes
from growclip_ds.model import GrowCLIP, check_contains, param_count
from growclip_ds.model.clip import arch_specs
from growclip_ds.model.init import normal_std

OLD = ArchConfig(img_conv_layers=1, img_blocks=2, img_heads=2, txt_blocks=2, txt_heads=2, shared_blocks=0,
                 head_dim=16, image_size=32, patch_size=8, context_length=12, embed_dim=48, stem_channels=6,
                 vocab_size=64)
G = GrowthConfig(delta_img_blocks=2, delta_img_heads=2, delta_conv_layers=1, delta_txt_blocks=1,
                 delta_txt_heads=2, delta_shared_blocks=2)
B, GAM = 0.3, 0.001


def test_growth_space():
    cands = space.candidates(OLD, G)
    assert len(cands) == 64 == len(set(cands))
    assert cands[0] == OLD and cands[63] == space.supernet(OLD, G)
    sup = space.supernet(OLD, G)
    for c in cands:
        check_contains(sup, c)
    assert len({space.image_variant(c) for c in cands}) == 16
    assert len({space.text_variant(c) for c in cands}) == 16     # the image heads set the shared width
    assert max(param_count(c) for c in cands) == param_count(sup)
    draws = [space.sample_index(0, 2, "sample", i) for i in range(6400)]
    assert draws == [space.sample_index(0, 2, "sample", i) for i in range(6400)]
    counts = torch.bincount(torch.tensor(draws), minlength=64).float()
    assert counts.min() > 50 and counts.max() < 150  # uniform: 100 expected each


@pytest.fixture(scope="module")
def grown():
    old = GrowCLIP(OLD, seed=1).state_dict()
    with torch.no_grad():
        old["logit_scale"].fill_(3.3)
    sup = space.supernet(OLD, G)
    return old, sup, pim(old, OLD, sup, beta=B, gamma=GAM, seed=5)


def _expect(old_t, name, shape, arch=None):
    spec = arch_specs(arch or space.supernet(OLD, G))[name][1]
    overlap = tuple(slice(0, min(a, b)) for a, b in zip(old_t.shape, shape))
    ref = B * old_t.double()[overlap] + GAM * rand_draw(name, spec, shape, 5).double()[overlap]
    return overlap, ref


def test_pim_inherited_slices(grown):
    old, sup, new = grown
    assert new.keys() == state_shapes(sup).keys()
    checked = 0
    for name, t in new.items():
        if name in old and name != "logit_scale":
            overlap, ref = _expect(old[name], name, tuple(t.shape))
            torch.testing.assert_close(t[overlap].double(), ref, rtol=1e-6, atol=1e-7)
            checked += 1
    assert checked == len([k for k in old if k != "logit_scale"])
    assert new["logit_scale"].item() == pytest.approx(3.3)


def test_pim_new_blocks_copy_the_last_block(grown):
    old, sup, new = grown
    for new_idx in (2, 3):  # image blocks 0,1 existed; 2 and 3 copy block 1
        for leaf in ("attn.qkv_weight", "mlp.fc1.weight", "ln1.weight", "attn.proj.bias"):
            name = f"image.blocks.{new_idx}.{leaf}"
            overlap, ref = _expect(old[f"image.blocks.1.{leaf}"], name, tuple(new[name].shape))
            torch.testing.assert_close(new[name][overlap].double(), ref, rtol=1e-6, atol=1e-7)
    name = "image.stem_layers.1.conv.weight"
    overlap, ref = _expect(old["image.stem_layers.0.conv.weight"], name, tuple(new[name].shape))
    torch.testing.assert_close(new[name][overlap].double(), ref, rtol=1e-6, atol=1e-7)
    assert not torch.equal(new["image.blocks.2.attn.qkv_weight"], new["image.blocks.3.attn.qkv_weight"])


def test_pim_new_heads_and_new_stacks_have_the_initializer_statistics(grown):
    old, sup, new = grown
    w = new["image.blocks.0.mlp.fc1.weight"]  # (4*64, 64): old (4*32, 32) in the corner
    fresh_part = torch.cat([w[128:].flatten(), w[:128, 32:].flatten()]).double()
    std = normal_std(arch_specs(sup)["image.blocks.0.mlp.fc1.weight"][1], tuple(w.shape))
    assert abs(fresh_part.std().item() - std) / std < 0.05 and abs(fresh_part.mean().item()) < 0.01 * std * 10
    ln = new["image.blocks.0.ln1.weight"]
    assert torch.all(ln[32:] == 1.0)  # new channels of a gain: its initializer (ones)
    q = new["shared.blocks.1.attn.qkv_weight"]  # the shared stack was empty: all fresh, at the image width
    assert q.shape == (3, 64, 64) and abs(q.double().std().item() - 64 ** -0.5) / 64 ** -0.5 < 0.05
    assert torch.all(new["shared.blocks.0.ln1.img.weight"] == 1.0)


def test_pim_is_deterministic_and_seeded(grown):
    old, sup, new = grown
    again = pim(old, OLD, sup, beta=B, gamma=GAM, seed=5)
    assert all(torch.equal(new[k], again[k]) for k in new)
    other = pim(old, OLD, sup, beta=B, gamma=GAM, seed=6)
    assert not torch.equal(new["image.blocks.0.attn.qkv_weight"], other["image.blocks.0.attn.qkv_weight"])


def test_pim_shrinks_a_supernet_to_a_subnet(grown):
    _, sup, super_state = grown
    sub = space.candidate(OLD, G, 0b010110)
    new = pim(super_state, sup, sub, beta=B, gamma=GAM, seed=5)
    for name, t in new.items():
        if name == "logit_scale":
            continue
        overlap, ref = _expect(super_state[name], name, tuple(t.shape), sub)
        assert all(s.stop == n for s, n in zip(overlap, t.shape))  # the whole tensor is inherited
        torch.testing.assert_close(t.double(), ref, rtol=1e-6, atol=1e-7)
    model = GrowCLIP(sub)
    model.load_state_dict(new)  # exactly the subnet's tensors


def test_pim_scope_weights_copies_norms_and_biases(grown):
    old, sup, _ = grown
    new = pim(old, OLD, sup, beta=B, gamma=GAM, seed=5, scope="weights")
    assert torch.equal(new["image.blocks.0.ln1.weight"][:32], old["image.blocks.0.ln1.weight"])
    assert torch.equal(new["image.blocks.3.attn.proj.bias"][:32], old["image.blocks.1.attn.proj.bias"])
    assert math.isclose(new["logit_scale"].item(), 3.3, rel_tol=1e-6)
