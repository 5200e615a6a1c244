"""Step 1 for real on 2 ranks: DeepSpeed and torchrun launchers, ZeRO-2 vs ZeRO-3, stop and resume,
consolidation with DeepSpeed's zero_to_fp32, eval.json. Four launches, ~1 min in all."""
import json

import pytest
import torch
from safetensors.torch import load_file

from growclip_ds.config import PRESETS
from growclip_ds.model import param_count
from tests.conftest import launch


def _losses(run):
    rows = [json.loads(line) for line in (run / "step1" / "train" / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows], [r["loss"] for r in rows]


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    common = ["--step", "1", "--config", "tiny", "--set", f"data.root={tiny_data}", "--set", "train.epochs=3",
              "--set", "train.log_every=1"]
    out = {k: base / k for k in ("zero2", "zero3", "resumed")}
    launch(common + ["--run-dir", str(out["zero2"]), "--set", "train.zero_stage=2"], launcher="deepspeed")
    launch(common + ["--run-dir", str(out["zero3"]), "--set", "train.zero_stage=3"], launcher="torchrun")
    resumed = common + ["--run-dir", str(out["resumed"]), "--set", "train.zero_stage=2", "--set",
                        "data.num_workers=1"]
    launch(resumed + ["--stop-after-steps", "5"], launcher="deepspeed")
    out["stopped_files"] = sorted(p.name for p in (out["resumed"] / "step1").iterdir())
    launch(resumed, launcher="deepspeed")
    return out


def test_zero2_and_zero3_give_the_same_weights(runs):
    a = load_file(runs["zero2"] / "step1" / "model.safetensors")
    b = load_file(runs["zero3"] / "step1" / "model.safetensors")
    init = PRESETS["tiny"].arch
    assert a.keys() == b.keys() and sum(v.numel() for v in a.values()) == param_count(init)
    moved = max((a[k] - b[k]).abs().max().item() for k in a)
    assert moved <= 1e-5
    assert _losses(runs["zero2"])[1] == pytest.approx(_losses(runs["zero3"])[1], abs=1e-5)


def test_resume_continues_the_same_loss_sequence(runs):
    assert "model.safetensors" not in runs["stopped_files"]  # the planned stop left no final model
    steps, losses = _losses(runs["resumed"])
    ref_steps, ref = _losses(runs["zero2"])
    assert steps == ref_steps == list(range(1, 13))
    assert losses == pytest.approx(ref, abs=1e-6)
    assert ref[-1] < ref[0]  # it trained
    a = load_file(runs["zero2"] / "step1" / "model.safetensors")
    b = load_file(runs["resumed"] / "step1" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_step_artifacts_follow_the_contract(runs):
    step = runs["zero2"] / "step1"
    arch = json.loads((step / "arch.json").read_text())
    assert arch["params"] == param_count(PRESETS["tiny"].arch)
    ev = json.loads((step / "eval.json").read_text())
    assert set(ev["zero_shot"]) == {"colour", "shape", "position"}
    for task in ev["zero_shot"].values():
        assert 0 <= task["top1"] <= task["top5"] <= 1 and task["num_classes"] >= 5
    for direction in ("image_to_text", "text_to_image"):
        r = ev["retrieval"][direction]
        assert 0 <= r["R@1"] <= r["R@5"] <= r["R@10"] <= 1
    ckpt = step / "train" / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == "global_step12"
    assert (ckpt / "zero_to_fp32.py").exists()
    # DeepSpeed's own offline tool reads our checkpoint and agrees with the consolidated model
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    sd = get_fp32_state_dict_from_zero_checkpoint(str(ckpt))
    ours = load_file(step / "model.safetensors")
    assert all(torch.equal(sd[k].float(), ours[k]) for k in ours)
