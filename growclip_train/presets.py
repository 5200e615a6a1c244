"""Named presets: tiny (tests), demo (the main job on 2 CPU cores), paper (GrowCLIP's recipe) and
vit-b-16 (CLIP's plain ViT-B/16 baselines), and ``load_config``: a preset or a JSON file plus overrides.

    >>> cfg = load_config("demo", ["train.lr=0.002"])
"""
from __future__ import annotations

import json
from pathlib import Path

from .config import SECTIONS, ArchConfig, ConfigError, DataConfig, GrowthConfig, RunConfig, TrainConfig

_TINY_ARCH = ArchConfig(img_conv_layers=1, img_blocks=2, img_heads=2, txt_blocks=2, txt_heads=2,
                        shared_blocks=0, head_dim=16, image_size=32, patch_size=8, context_length=16,
                        embed_dim=32, stem_channels=8, vocab_size=512)
# plain stem layers and random final-LN gains: the 2026-11-23 model, 40.4 vs 33.5 mean selection top-1 at
# step 1 over 3 seeds against the gated residual stem and unit gains (docs/results/growth_pays_cpu2_2026-11-30)
_DEMO_ARCH = ArchConfig(img_conv_layers=2, img_blocks=2, img_heads=4, txt_blocks=2, txt_heads=4,
                        shared_blocks=0, head_dim=16, image_size=32, patch_size=8, context_length=20,
                        embed_dim=64, stem_channels=32, vocab_size=512, stem_residual=False,
                        final_ln_init="normal")

PRESETS: dict[str, RunConfig] = {
    "tiny": RunConfig(
        name="tiny", arch=_TINY_ARCH,
        train=TrainConfig(global_batch=32, micro_batch=16, lr=2e-3, warmup_steps=2, epochs=1.0,
                          optimizer="adamw", weight_decay=0.01, zero_stage=2, log_every=1),
        data=DataConfig(root="data/tiny", samples_per_step=128, shard_size=32, eval_per_class=4,
                        retrieval_size=32, shuffle_buffer=32),
        growth=GrowthConfig(delta_img_blocks=1, delta_img_heads=1, delta_conv_layers=1,
                            delta_txt_blocks=1, delta_txt_heads=1, delta_shared_blocks=1,
                            supernet_epochs=1.0, sample_epochs=1.0, final_epochs=1.0, check_every=1)),
    # The main job on 2 CPU cores in minutes. AdamW, not the paper's LAMB: LAMB's update is relative to
    # each tensor's norm, too slow for small-init tensors in a few hundred steps. Growth deltas and
    # phase epochs are scaled down so that 4 steps fit the budget; alpha is 0.05: at this scale
    # candidates differ by a few points of accuracy, which alpha=0.5's size term (0.1-0.4) would swamp;
    # growth is function-preserving (growth.inherit=preserve): chosen on the selection split against the
    # paper's PIM (docs/growth.md: mean top-1 at step 4 77.1 vs 47.6). Where growth.plan says "gas", GAS is
    # compute-aware (growth.select=compute, kappa 0.1): the best of 6 GAS recipes at matched compute on corpus v1's
    # selection split, 3 seeds (docs/results/growth_pays_cpu2_2026-11-30 and -12-04). For inherit=pim the preset keeps
    # beta=0.7 on weights only: beta=0.3 on every tensor collapses these narrow models to uniform logits.
    "demo": RunConfig(
        name="demo", arch=_DEMO_ARCH,
        train=TrainConfig(global_batch=128, micro_batch=64, lr=2e-3, warmup_steps=50, epochs=30.0,
                          optimizer="adamw", weight_decay=0.05, zero_stage=2, checkpoint_every=100,
                          log_every=10),
        # a shuffle buffer of 32 keeps most of corpus v2's contrast families (4 scenes one attribute apart,
        # written together) in one batch of 128 (data/scenes_v2.py), so that the loss needs what the scenes
        # hold (docs/results/headroom_cpu2_2026-12-07 section 2: the pilots with and without families)
        data=DataConfig(root="data/builtin", samples_per_step=3072, shard_size=256, num_workers=1, shuffle_buffer=32),
        # growth.plan "0,0,18": steps 2-3 keep the net, step 4 grows image and text towers from 4 to 8 heads
        # (998,785 parameters), function-preserving, without supernet phases or search: the best of 4 recipes on
        # corpus v2's selection split at matched compute, 3 seeds, where GAS's search cost more than it found
        # (docs/results/growth_v2_cpu2_2026-12-07); 8 heads is the size the headroom map favours at D^4 (+8.8
        # from scratch), and it is grown where the map shows headroom (D^4), not at D^1-D^3
        growth=GrowthConfig(delta_img_blocks=1, delta_img_heads=4, delta_conv_layers=0,
                            delta_txt_blocks=1, delta_txt_heads=4, delta_shared_blocks=1, alpha=0.05,
                            select="compute", compute_penalty=0.1, plan="0,0,18",
                            beta=0.7, pim_scope="weights", inherit="preserve",
                            supernet_epochs=0.5, sample_epochs=0.5, final_epochs=4.0, check_every=10)),
    "paper": RunConfig(name="paper", arch=ArchConfig()),
    # CLIP's own towers (arch.tower=clip): what growclip-ds export writes for Hugging Face and open_clip
    "vit-b-16": RunConfig(
        name="vit-b-16",
        arch=ArchConfig(img_conv_layers=0, img_blocks=12, img_heads=12, txt_blocks=12, txt_heads=8,
                        shared_blocks=0, stem="patch", stem_channels=0, tower="clip"),
        growth=GrowthConfig(delta_conv_layers=0, delta_shared_blocks=0)),
}


def load_config(source: str, overrides: list[str] | None = None) -> RunConfig:
    """A preset name or a JSON file path, then ``section.field=value`` overrides, validated."""
    if source in PRESETS:
        d = PRESETS[source].to_dict()
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config: {source!r} is neither a preset ({', '.join(PRESETS)}) nor a JSON file")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"config: {path} is not valid JSON ({e})") from None
        if "preset" in d:  # a file may start from a preset and change a few fields
            base = load_config(d.pop("preset")).to_dict()
            for sec, vals in d.items():
                if sec not in base:
                    raise ConfigError(f"{path}: {sec}: unknown config section; known: "
                                      f"{', '.join(k for k in base if k != 'name')}, name, preset")
                base[sec] = {**base[sec], **vals} if isinstance(vals, dict) else vals
            d = base
    for ov in overrides or []:
        if "=" not in ov or "." not in ov.split("=", 1)[0]:
            raise ConfigError(f"override {ov!r}: expected section.field=value, e.g. train.lr=0.001")
        key, value = ov.split("=", 1)
        sec, fname = key.split(".", 1)
        if sec not in SECTIONS:
            raise ConfigError(f"{key}: unknown config section {sec!r}; known: {', '.join(SECTIONS)}")
        d[sec] = {**d.get(sec, {}), fname: value}
    return RunConfig.from_dict(d).validate()
