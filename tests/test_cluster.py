"""``plan --cluster``: model-state bytes per rank against DeepSpeed's own estimators, the largest
layer against DeepSpeed's rule on a real model, activations against what autograd really saves."""
import pytest
import torch
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs, model_to_params
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

from growclip_ds.growth import space
from growclip_ds.model import GrowCLIP, param_count
from growclip_train.presets import load_config
from growclip_train import cli
from growclip_train.plan_cluster import activation_bytes, largest_layer, model_state_bytes, parse_cluster

PAPER = load_config("paper", ["train.precision=bf16"])


@pytest.mark.parametrize("spec", ["2x8xH100", "16x1xV100"])
@pytest.mark.parametrize("which", ["step1", "supernet"])
def test_model_states_match_deepspeeds_estimators(spec, which):
    c = parse_cluster(spec)
    arch = PAPER.arch if which == "step1" else space.supernet(PAPER.arch, PAPER.growth)
    p = param_count(arch)
    z2 = estimate_zero2_model_states_mem_needs(p, c.gpus_per_node, c.nodes, cpu_offload=False)[1]
    z3 = estimate_zero3_model_states_mem_needs(p, largest_layer(arch), c.gpus_per_node, c.nodes, cpu_offload=False,
                                               cpu_offload_params=False)[1]
    assert model_state_bytes(arch, 2, c.world, "bf16")["total"] == pytest.approx(z2, rel=1e-6)
    assert model_state_bytes(arch, 3, c.world, "bf16")["total"] == pytest.approx(z3, rel=1e-6)
    # ZeRO-1 (DeepSpeed has no estimator): 16-bit params and grads whole, fp32 state partitioned, by hand
    assert model_state_bytes(arch, 1, c.world, "bf16")["total"] == pytest.approx(4 * p + 16 * p / c.world)


def test_largest_layer_is_deepspeeds_rule_on_a_real_model():
    model = GrowCLIP(PAPER.arch, seed=None)       # real (uninitialised) tensors, as DeepSpeed counts them
    total, largest = model_to_params(model)
    assert total == param_count(PAPER.arch) and largest == largest_layer(PAPER.arch)
    assert largest == (PAPER.arch.vocab_size + PAPER.arch.context_length) * PAPER.arch.txt_width   # token + positions


@pytest.mark.parametrize("overrides", [
    ["arch.stem=patch", "arch.stem_channels=0", "arch.img_conv_layers=0", "growth.delta_conv_layers=0"],
    [], ["arch.shared_blocks=2"]])
def test_activations_within_15_percent_of_what_autograd_saves(overrides):
    """Without recomputation: within 15% of the tensors autograd keeps for the backward. With gradient
    checkpointing: at least what it keeps (each block's input; the estimate adds one block's
    recomputed activations), and below the no-recomputation figure."""
    arch = load_config("demo", overrides).arch
    b = 8
    kept = {ckpt: _saved_bytes(arch, b, ckpt) for ckpt in (False, True)}
    assert activation_bytes(arch, b, "fp32", recompute=False) == pytest.approx(kept[False], rel=0.15)
    assert kept[True] <= activation_bytes(arch, b, "fp32", recompute=True) <= kept[False]


def _saved_bytes(arch, b: int, checkpointing: bool) -> int:
    model = GrowCLIP(arch, seed=0)
    model.set_grad_checkpointing(checkpointing)
    params = {p.data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        if t.data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.randn(b, 3, arch.image_size, arch.image_size), torch.randint(1, 100, (b, arch.context_length)))
    return sum(saved.values())


def test_plan_command_prints_every_stage_and_gpu_hours(capsys):
    assert cli.main(["plan", "--config", "paper", "--cluster", "2x8xH100", "--set", "train.precision=bf16"]) == 0
    out = capsys.readouterr().out
    assert "| 4 | final |" in out and "ZeRO-3 [DS]" in out and "GPU-hours on H100" in out
    assert cli.main(["plan", "--config", "paper", "--cluster", "2x8xTPU"]) == 2
    assert "--cluster" in capsys.readouterr().err
