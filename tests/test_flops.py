"""Analytic FLOPs against two independent references: DeepSpeed's flops profiler run on the built
model, and OpenCLIP's published ViT-B/16 figures (2 FLOPs per MAC)."""
import pytest
import torch
from deepspeed.profiling.flops_profiler import FlopsProfiler

from growclip_ds.model import GrowCLIP
from growclip_ds.model.flops import forward_flops, hardware_train_flops, image_flops, text_flops, train_flops
from growclip_train.presets import load_config
from growclip_train.presets import PRESETS

ARCHS = [("tiny", []),                                                 # conv stem, no shared stack
         ("tiny", ["arch.shared_blocks=2", "arch.img_conv_layers=2"]),  # shared stack: every token projected
         ("tiny", ["arch.stem=patch", "arch.stem_channels=0", "arch.img_conv_layers=0", "growth.delta_conv_layers=0"]),
         ("tiny", ["arch.stem=patch", "arch.stem_channels=0", "arch.img_conv_layers=0", "arch.tower=clip",
                   "growth.delta_shared_blocks=0", "growth.delta_conv_layers=0"])]                # CLIP's towers


def profile(arch, batch=3):
    """(2 x MACs per sample of the whole forward, 2 x MACs per sample inside transformer blocks)."""
    model = GrowCLIP(arch)
    images = torch.randn(batch, 3, arch.image_size, arch.image_size)
    tokens = torch.randint(1, arch.vocab_size, (batch, arch.context_length))
    prof = FlopsProfiler(model)
    prof.start_profile()
    with torch.no_grad():
        model(images, tokens)
    total = 2 * prof.get_total_macs() / batch
    blocks = sum(2 * m.__macs__ for n, m in model.named_modules() if ".blocks." in n) / batch
    prof.end_profile()
    return total, blocks


@pytest.mark.parametrize("preset,overrides", ARCHS)
def test_forward_flops_equal_deepspeed_profiler(preset, overrides):
    arch = load_config(preset, overrides).arch
    total, blocks = profile(arch)
    assert forward_flops(arch) == total
    # gradient checkpointing re-runs exactly the block forwards
    assert hardware_train_flops(arch, recompute=True) - train_flops(arch) == blocks
    assert hardware_train_flops(arch, recompute=False) == 3 * total


def test_vit_b_16_matches_openclip_figures():
    arch = PRESETS["vit-b-16"].arch
    assert round(image_flops(arch) / 1e9, 2) == 35.13
    assert round(text_flops(arch) / 1e9, 2) == 5.96
    assert abs(train_flops(arch) / 1e9 - 123.3) < 0.05


def test_step_costs_count_phases_as_the_trainer_runs_them():
    """step_phases.step_costs (what plan, plan --cluster, cost.py read) against a hand count: whole global
    batches of each phase's epochs, the supernet's / the mean candidate's / the choice's training FLOPs,
    GAS as 16 image variants over the images plus 16 text variants over the texts."""
    from growclip_ds.config import replace
    from growclip_ds.growth import space
    from growclip_train.step_phases import growth_phases, phases_before, step_costs

    cfg = load_config("tiny", ["growth.supernet_epochs=0.5", "growth.final_epochs=2.5"])
    gb, arch, g = cfg.train.global_batch, cfg.arch, cfg.growth
    (one,) = step_costs(cfg, 1, None, 200)
    assert (one.phase, one.samples, one.flops) == ("train", 6 * gb, 6 * gb * train_flops(arch))   # 200 // 32 = 6
    capped = replace(cfg, train=replace(cfg.train, num_samples=64))
    assert step_costs(capped, 1, None, 200)[0].samples == 64                                     # train.num_samples
    cands, sup = space.candidates(arch, g), space.supernet(arch, g)
    chosen = cands[37]
    got = {c.phase: c for c in step_costs(cfg, 2, arch, 256, chosen=chosen, gas_images=10, gas_texts=7)}
    assert list(got) == ["supernet", "sample", "gas", "final"]
    assert got["supernet"].samples == 4 * gb and got["supernet"].flops == 4 * gb * train_flops(sup)   # 0.5 x 8 steps
    assert got["sample"].samples == 8 * gb
    assert got["sample"].flops == pytest.approx(8 * gb * sum(train_flops(c) for c in cands) / 64)
    assert got["final"].samples == 20 * gb and got["final"].flops == 20 * gb * train_flops(chosen)
    img = {space.image_variant(c): image_flops(c) for c in cands}
    txt = {space.text_variant(c): text_flops(c) for c in cands}
    assert len(img) == len(txt) == 16
    assert got["gas"].flops == 10 * sum(img.values()) + 7 * sum(txt.values())
    open_final = step_costs(cfg, 2, arch, 256)[-1]
    lo, hi = min(train_flops(c) for c in cands), max(train_flops(c) for c in cands)
    assert open_final.arch is None and open_final.flops_range == (lo, hi) and open_final.flops == 20 * gb * (lo + hi) / 2
    recompute = {c.phase: c for c in step_costs(cfg, 2, arch, 256, chosen=chosen, recompute=True)}
    assert recompute["final"].flops_per_sample == hardware_train_flops(chosen, True) > train_flops(chosen)
    # the phase order, and what an ablation switches off (Table 5) or copies from the full run (reproduce.py)
    assert growth_phases({"st"}) == ["sample", "gas", "final"] and growth_phases(set(), candidate=3) == ["supernet", "final"]
    assert [c.phase for c in step_costs(cfg, 2, arch, 256, ablate={"gas"})] == ["supernet", "final"]
    assert phases_before({"gas"}) == ("pim1", "supernet")
