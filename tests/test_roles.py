"""Parameter roles: declared by each layer, walked for every preset (and its step-2 supernet), and
what they decide: the initial values, the weight-decay groups, an error for an undeclared tensor."""
import pytest
import torch
import torch.nn as nn

from growclip_ds.growth import space
from growclip_ds.model import GrowCLIP
from growclip_ds.model.elastic import ElasticAttention, ElasticLayerNorm, ElasticLinear
from growclip_ds.model.encoders import ElasticPatchify, ImageEncoder, ResidualConvLayer, TextEncoder
from growclip_ds.model.roles import Role, param_specs
from growclip_train.presets import PRESETS
from growclip_train.train.engine import param_groups

WRITERS = ("attn.proj", "mlp.fc2", "image.proj", "text.proj")   # layers whose output rows are stream channels


def expected_role(mod_name: str, mod: nn.Module, p_name: str) -> Role:
    """The role from the module's type and place, written independently of the declarations."""
    if isinstance(mod, (ElasticLayerNorm, nn.GroupNorm)):
        return Role.NORM_GAIN if p_name == "weight" else Role.NORM_BIAS
    if isinstance(mod, nn.Conv2d):
        return Role.CONV if p_name == "weight" else Role.BIAS
    if isinstance(mod, ElasticPatchify):
        return Role.PATCH if p_name == "weight" else Role.PATCH_BIAS
    if isinstance(mod, ElasticAttention):
        return Role.MATRIX if p_name == "qkv_weight" else Role.BIAS
    if isinstance(mod, ElasticLinear):
        writer = mod_name.endswith(WRITERS)
        if p_name == "weight":
            return Role.WRITER if writer else Role.MATRIX
        return Role.WRITER_BIAS if writer else Role.BIAS
    if isinstance(mod, ResidualConvLayer):
        return Role.GATE
    if isinstance(mod, ImageEncoder):
        return {"cls_token": Role.CLASS_TOKEN, "pos_emb": Role.POSITION}[p_name]
    if isinstance(mod, TextEncoder):
        return {"tok_emb": Role.EMBEDDING, "pos_emb": Role.POSITION}[p_name]
    if isinstance(mod, GrowCLIP):
        return {"logit_scale": Role.LOGIT_SCALE}[p_name]
    raise AssertionError(f"{mod_name}.{p_name}: unexpected module {type(mod).__name__}")


def _archs():
    for name, cfg in PRESETS.items():
        yield name, cfg.arch
        if cfg.arch.stem == "conv":
            yield f"{name}-supernet", space.supernet(cfg.arch, cfg.growth)


@pytest.mark.parametrize("name,arch", list(_archs()), ids=[n for n, _ in _archs()])
def test_every_parameter_of_every_preset_has_its_role(name, arch):
    with torch.device("meta"):
        model = GrowCLIP(arch, seed=None)
    specs = param_specs(model)
    seen = 0
    for mod_name, mod in model.named_modules():
        for p_name, _ in mod.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            assert specs[full].role == expected_role(mod_name, mod, p_name), full
            seen += 1
    assert seen == len(specs) == len(dict(model.named_parameters()))


def test_initial_values_and_decay_groups_follow_the_roles():
    arch = space.supernet(PRESETS["tiny"].arch, PRESETS["tiny"].growth)
    model = GrowCLIP(arch, seed=3)
    specs = param_specs(model)
    for name, p in model.named_parameters():
        role = specs[name].role
        if role in (Role.NORM_GAIN, Role.GATE):
            assert torch.all(p == 1), name      # includes img_ln_final / txt_ln_final
        elif role in (Role.BIAS, Role.NORM_BIAS, Role.WRITER_BIAS, Role.PATCH_BIAS):
            assert torch.all(p == 0), name
        elif role == Role.LOGIT_SCALE:
            assert p.item() == pytest.approx(2.6593, abs=1e-4)     # log(1 / 0.07)
        else:
            assert p.std() > 0, name
    assert torch.all(model.img_ln_final.weight == 1) and torch.all(model.txt_ln_final.weight == 1)
    pos = model.image.pos_emb.detach().double()
    assert abs(pos.std().item() - 0.2) < 0.02 and abs(model.text.pos_emb.detach().double().std().item() - 0.01) < 0.002
    decay, no_decay = param_groups(model, 0.1)
    ids = {id(p) for p in decay["params"]}
    for name, p in model.named_parameters():
        normal = specs[name].role in (Role.MATRIX, Role.WRITER, Role.CONV, Role.PATCH, Role.EMBEDDING,
                                      Role.POSITION, Role.CLASS_TOKEN)
        assert (id(p) in ids) == normal, name
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0


def test_a_parameter_without_a_role_is_refused():
    model = GrowCLIP(PRESETS["tiny"].arch, seed=0)
    model.extra = nn.Linear(2, 2)      # a layer that declared nothing
    with pytest.raises(TypeError, match="extra.weight: Linear declares no role"):
        param_specs(model)
