"""Growth step 2 for real on 2 ranks (ZeRO-3, conftest.grown_run), the sampled phase under ZeRO-2, a forced
rank divergence, skipped-layer updates, and step 3 resharded onto 1 rank."""
import json

import pytest
import torch
from safetensors.torch import load_file

from growclip_train.accelerator import accelerator_device
from growclip_ds.growth import space
from growclip_ds.growth.pim import pim
from growclip_ds.model.init import name_seed
from growclip_ds.model_folder import read_model
from growclip_train.presets import load_config
from growclip_train.train.checkpoint import consolidated_state_dict
from growclip_train.train.schedule import warmup_for
from tests.conftest import copy_run, launch


def _common(data, run):
    return ["--config", "tiny", "--set", f"data.root={data}", "--run-dir", str(run)]


@pytest.fixture(scope="module")
def run(grown_run):
    """conftest.grown_run: step 1 on 2 ranks, then step 2 on 2 ranks under ZeRO-3."""
    return grown_run


def _metrics(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_step2_runs_every_phase_and_ranks_agree_under_zero3(run):
    d = run / "step2"
    for phase in ("supernet", "sample", "gas"):
        assert (d / phase / "done.json").exists()
    assert (d / "model.safetensors").exists() and (d / "eval.json").exists()
    rows = _metrics(d / "sample" / "metrics.jsonl")
    # check_every=1 compared the draw on both ranks at every iteration; the sequence is the seeded one
    assert [r["subnet"] for r in rows] == [space.sample_index(0, 2, "sample", r["step"] - 1) for r in rows]
    assert len(rows) >= 4
    # GAS and the step's evaluation ran where the engine trained (the accelerator; here DeepSpeed's CPU one)
    engine = json.loads((d / "supernet" / "done.json").read_text())["device"]
    assert engine == str(accelerator_device()) and json.loads((d / "gas" / "done.json").read_text())["device"] == engine
    assert json.loads((d / "eval.json").read_text())["device"] == engine


def test_phases_and_steps_record_where_their_time_went(run):
    """Each training phase records its set-up and checkpoint seconds inside its wall time (device_s counts both
    ranks' step time); a finished step records writing its model and evaluating it (benchmarks/step_breakdown.py)."""
    d = run / "step2"
    for phase in ("supernet", "sample", "final"):
        rec = json.loads((d / phase / "done.json").read_text())
        assert rec["setup_s"] > 0 and rec["save_s"] > 0     # an engine was built; at least the last checkpoint
        assert rec["setup_s"] + rec["device_s"] / 2 + rec["save_s"] < rec["wall_s"]
    fin = json.loads((d / "finish.json").read_text())
    assert set(fin) == {"consolidate_s", "eval_s"} and fin["consolidate_s"] > 0 and fin["eval_s"] > 0


def test_growth_records_what_it_kept(run, tiny_data):
    """pim1/pim3 done.json: loss on the fixed batch and selection top-1 of the old and grown model;
    the old model's loss recomputed here from step 1's weights and the first samples of step 2's new data."""
    from growclip_ds.data.loader import first_samples
    from growclip_ds.data.manifest import Manifest
    from growclip_ds.data.tokenizer import load_tokenizer
    from growclip_ds.loss import clip_loss
    from growclip_ds.model import GrowCLIP

    d = run / "step2"
    cfg = load_config("tiny", [f"data.root={tiny_data}"])
    rec = {w: json.loads((d / w / "done.json").read_text()) for w in ("pim1", "pim3")}
    assert rec["pim1"]["inherit"] == "pim" and rec["pim1"]["beta"] == cfg.growth.beta
    sd, arch = read_model(run / "step1")
    model = GrowCLIP(arch, seed=None)
    model.load_state_dict(sd)
    shards = [e.path for e in Manifest.load(tiny_data).shards([2])]
    batch = first_samples(shards, cfg.train.global_batch, arch.image_size, load_tokenizer(cfg, arch))
    assert batch["images"].shape[0] == cfg.train.global_batch
    with torch.no_grad():
        loss = clip_loss(*model.eval()(batch["images"], batch["tokens"]), gather=False).item()
    assert rec["pim1"]["kept"]["old"]["loss"] == pytest.approx(loss, rel=1e-5)
    for r in rec.values():
        for side in ("old", "grown"):
            assert 0 <= r["kept"][side]["top1"] <= 1 and r["kept"][side]["loss"] > 0
    # PIM@3's "old": the chosen candidate inside the trained supernet (after sampling), recomputed here
    sup_sd, sup_arch = read_model(d / "sample")
    supernet = GrowCLIP(sup_arch, seed=None)
    supernet.load_state_dict(sup_sd)
    supernet.set_arch(read_model(d)[1])
    with torch.no_grad():
        inside = clip_loss(*supernet.eval()(batch["images"], batch["tokens"]), gather=False).item()
    assert rec["pim3"]["kept"]["old"]["loss"] == pytest.approx(inside, rel=1e-5)


def test_gas_choice_is_the_argmax_of_gas_jsonl(run):
    d = run / "step2"
    cfg = load_config("tiny")
    rows = [json.loads(line) for line in (d / "gas.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in rows) == list(range(64))
    prev = read_model(run / "step1")[1]
    from growclip_ds.model import param_count

    p_prev = param_count(prev)
    # N^1 / N^2 from the tiny corpus: equal steps
    best = max(rows, key=lambda r: (r["accuracy"] + cfg.growth.alpha * 0.5 * p_prev / r["params"], -r["params"]))
    chosen = json.loads((d / "arch.json").read_text())
    assert chosen["index"] == best["index"] and chosen["chosen_by"] == "gas"
    assert read_model(d)[1] == space.candidate(prev, cfg.growth, best["index"])


@pytest.mark.launch
def test_sampled_phase_under_zero2_and_skipped_layer_update(run, tiny_data, tmp_path):
    # a second run folder that shares step 1 and the step-2 supernet, then trains 1 sampled step at ZeRO-2
    other = copy_run(run, tmp_path / "run", ["step1", "step2/supernet"])
    launch(["--step", "2", "--phase", "sample", "--stop-after-iterations", "1", "--set", "train.zero_stage=2"]
           + _common(tiny_data, other))
    before = load_file(other / "step2" / "supernet" / "model.safetensors")
    after = consolidated_state_dict(other / "step2" / "sample" / "checkpoints")
    idx = space.sample_index(0, 2, "sample", 0)
    assert idx == 48  # text heads and shared blocks grown: the extra image/text blocks sit idle
    cfg = load_config("tiny")
    total = len(_metrics(run / "step2" / "sample" / "metrics.jsonl"))
    lr = cfg.train.lr / (warmup_for(cfg.train, "inherited", total) + 1)  # first step of the short re-warm-up
    for name in ("image.blocks.2.attn.qkv_weight", "image.blocks.2.mlp.fc1.weight", "text.blocks.2.mlp.fc2.weight",
                 "image.stem_layers.1.conv.weight"):
        expect = before[name].double() * (1 - lr * cfg.train.weight_decay)  # AdamW, zero grad: decay only
        torch.testing.assert_close(after[name].double(), expect, rtol=0, atol=1e-7)
        assert not torch.equal(after[name], before[name])
    for name in ("image.blocks.2.ln1.weight", "image.blocks.2.attn.qkv_bias"):  # no weight decay: unchanged
        assert torch.equal(after[name], before[name])
    assert not torch.allclose(after["text.blocks.0.attn.qkv_weight"], before["text.blocks.0.attn.qkv_weight"] *
                              (1 - lr * cfg.train.weight_decay), atol=1e-6)  # active weights learn
    # resume the stopped phase: the draws after the restart continue the seeded sequence
    launch(["--step", "2", "--phase", "sample", "--set", "train.zero_stage=2"] + _common(tiny_data, other))
    rows = _metrics(other / "step2" / "sample" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1)) and len(rows) >= 4
    assert [r["subnet"] for r in rows] == [space.sample_index(0, 2, "sample", r["step"] - 1) for r in rows]


@pytest.mark.launch
def test_diverging_rank_aborts_with_a_message(run, tiny_data, tmp_path):
    other = copy_run(run, tmp_path / "run", ["step1", "step2/supernet"])
    p = launch(["--step", "2", "--phase", "sample", "--set", "train.zero_stage=3"] + _common(tiny_data, other),
               check=False, timeout=120, env={"GROWCLIP_FAULT_SUBNET_RANK": "1"})
    assert p.returncode != 0
    assert "ranks hold different subnet candidates at iteration 0 (rank 0: 48, rank 1: 49)" in p.stderr + p.stdout


@pytest.mark.launch
def test_step3_on_one_rank_starts_from_the_pim_output(run, tiny_data, tmp_path):
    run = copy_run(run, tmp_path / "run", ["step1", "step2"])
    launch(["--step", "3", "--stop-after-iterations", "0", "--set", "train.zero_stage=1"] + _common(tiny_data, run),
           ranks=1)
    cfg = load_config("tiny")
    prev_sd, prev_arch = read_model(run / "step2")
    sup = space.supernet(prev_arch, cfg.growth)
    seed = name_seed(0, "pim/t3/pim1") % (2 ** 31)
    expect = pim(prev_sd, prev_arch, sup, cfg.growth.beta, cfg.growth.gamma, seed)  # single process, here
    loaded = consolidated_state_dict(run / "step3" / "supernet" / "checkpoints")  # what the 1-rank engine held
    assert expect.keys() == loaded.keys()
    for k in expect:
        assert torch.equal(expect[k], loaded[k]), k


def test_plan_and_report_of_the_run(run, tiny_data):
    from growclip_train.plan_step import plan_next_step
    from growclip_train.report import step_rows, write_report

    cfg = load_config("tiny", [f"data.root={tiny_data}"])
    text = plan_next_step(cfg, run)
    assert "growth step 3 of 4" in text and "64 candidates" in text and "32 encoder variants" in text
    kept = json.loads((run / "step2" / "pim1" / "done.json").read_text())["kept"]
    assert f"kept at step 2 pim1 (pim): loss {kept['old']['loss']:.3f} -> {kept['grown']['loss']:.3f}" in text
    assert "inheritance at step 3: the paper's PIM" in text
    rows = step_rows(run)
    assert [r["step"] for r in rows][:2] == [1, 2]
    # every training phase's analytic FLOPs are summed per step: step 2 = supernet + sample + final
    phases = [json.loads((run / "step2" / p / "done.json").read_text()) for p in ("supernet", "sample", "final")]
    assert rows[1]["train_flops"] == sum(p["train_flops"] for p in phases) > 0
    md = write_report(run)
    assert (run / "report.png").stat().st_size > 0 and "GAS at step 2" in md.read_text()
    loss = f"{kept['old']['loss']:.3f} -> {kept['grown']['loss']:.3f}"
    assert f"| 2 | PIM@1: step t-1 model -> supernet | pim | {loss} |" in md.read_text()


@pytest.mark.launch
def test_preserve_through_deepspeed_keeps_the_function(run, tiny_data, tmp_path):
    """Step 2 trained at 2 ranks under ZeRO-3, consolidated, grown with inherit=preserve, and loaded
    by a 1-rank ZeRO-3 engine: the engine holds exactly preserve()'s output, and the grown model's
    loss and selection top-1 equal the old model's (the done-when: within 5% and 2 points)."""
    from growclip_ds.growth.preserve import preserve

    other = copy_run(run, tmp_path / "run", ["step1", "step2"])
    launch(["--step", "3", "--stop-after-iterations", "0", "--set", "train.zero_stage=3", "--set",
            "growth.inherit=preserve"] + _common(tiny_data, other), ranks=1)
    cfg = load_config("tiny")
    prev_sd, prev_arch = read_model(other / "step2")
    sup = space.supernet(prev_arch, cfg.growth)
    expect = preserve(prev_sd, prev_arch, sup, seed=name_seed(0, "pim/t3/pim1") % (2 ** 31))
    loaded = consolidated_state_dict(other / "step3" / "supernet" / "checkpoints")
    assert expect.keys() == loaded.keys() and all(torch.equal(expect[k], loaded[k]) for k in expect)
    kept = json.loads((other / "step3" / "pim1" / "done.json").read_text())
    assert kept["inherit"] == "preserve"
    old, grown = kept["kept"]["old"], kept["kept"]["grown"]
    assert abs(grown["loss"] - old["loss"]) <= 1e-3 * old["loss"] and abs(grown["top1"] - old["top1"]) <= 0.02
