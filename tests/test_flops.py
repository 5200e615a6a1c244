"""Analytic FLOPs against two independent references: DeepSpeed's flops profiler run on the built
model, and OpenCLIP's published ViT-B/16 figures (2 FLOPs per MAC)."""
import pytest
import torch
from deepspeed.profiling.flops_profiler import FlopsProfiler

from growclip_ds.config import load_config
from growclip_ds.presets import PRESETS
from growclip_ds.model import GrowCLIP
from growclip_ds.model.flops import forward_flops, hardware_train_flops, image_flops, text_flops, train_flops

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
