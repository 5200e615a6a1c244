"""FLOP budgets (train.match=flops) and GAS's compute-aware rule, against hand computations, and one
launched growth step that must land on its step budget F_t."""
import json
import math
import random

import pytest
import torch

from growclip_ds.config import replace
from growclip_ds.growth import space
from growclip_ds.model import param_count
from growclip_ds.model.flops import train_flops
from growclip_train.presets import load_config
from growclip_train.gas import choose, size_term
from growclip_train.rundir import RunDir, StepDir
from growclip_train.train.budget import growth_shares, step_flops, steps_for_flops
from tests.conftest import copy_run, launch


def test_steps_for_flops_is_the_closest_whole_number_of_steps():
    rng = random.Random(0)
    for _ in range(200):
        per = [rng.uniform(1.0, 5.0) for _ in range(60)]
        budget, gb = rng.uniform(3.0, 120.0), rng.choice([1, 4])
        n = steps_for_flops(budget, gb, lambda i: per[i])
        cums = [gb * sum(per[:k]) for k in range(1, 61)]
        best = min(range(1, 61), key=lambda k: abs(cums[k - 1] - budget))
        assert n == best
    assert steps_for_flops(10.0, 1, lambda i: 100.0) == 1     # at least one step
    with pytest.raises(ValueError, match="final_epochs"):
        steps_for_flops(-1.0, 1, lambda i: 1.0)


def test_step_budget_and_growth_shares_by_hand():
    cfg = load_config("demo", ["train.epochs=3", "growth.supernet_epochs=0.2", "growth.sample_epochs=0.2",
                               "growth.final_epochs=2.6"])
    assert step_flops(cfg, 6144) == 3 * 6144 * train_flops(cfg.arch)
    other = replace(cfg, train=replace(cfg.train, flops_per_sample=1000.0))
    assert step_flops(other, 6144) == 3 * 6144 * 1000.0
    assert growth_shares(cfg, ["supernet", "sample", "final"]) == pytest.approx(
        {"supernet": 0.2 / 3, "sample": 0.2 / 3, "final": 2.6 / 3})
    assert growth_shares(cfg, ["sample", "final"]) == pytest.approx({"sample": 0.2 / 2.8, "final": 2.6 / 2.8})


def test_compute_rule_penalises_each_doubling_and_keeps_no_growth_free(tmp_path):
    cfg = load_config("demo", ["growth.select=compute", "growth.compute_penalty=0.05"])
    prev, g = cfg.arch, cfg.growth
    cands = space.candidates(prev, g)
    terms = [size_term(c, prev, 1, 1, 2, g) for c in cands]
    f0 = float(train_flops(prev))
    assert terms == pytest.approx([-0.05 * math.log2(float(train_flops(c)) / f0) for c in cands], abs=1e-12)
    assert terms[0] == 0 and all(t < 0 for t, c in zip(terms, cands) if train_flops(c) > f0)

    def choice(acc: list[float]) -> int:
        step = StepDir(tmp_path, 2)
        step.gas_scores.parent.mkdir(parents=True, exist_ok=True)
        step.gas_scores.write_text("".join(json.dumps({"index": i, "params": i, "accuracy": a, "score": a + terms[i]})
                                           + "\n" for i, a in enumerate(acc)))
        return choose(step.gas_scores, prev, g)[0]

    assert choice([0.5] * 64) == 0                            # equal accuracy: growth never pays
    k = 21
    gain = -terms[k]                                          # what candidate k must gain to break even
    assert choice([0.5] * k + [0.5 + gain + 1e-3] + [0.5] * (63 - k)) == k
    assert choice([0.5] * k + [0.5 + gain - 1e-3] + [0.5] * (63 - k)) == 0
    paper = replace(g, select="paper")
    assert size_term(cands[5], prev, 1000, 1, 2, paper) == pytest.approx(paper.alpha * 0.5 * 1000 / param_count(cands[5]))


@pytest.mark.launch
def test_growth_step_spends_its_flop_budget(step1_run, tiny_data, tmp_path):
    """A GrowCLIP step 2 at match=flops on one rank after conftest.step1_run's step 1 (3 epochs): each
    phase's recorded FLOPs recomputed by hand from its architecture (the sampled candidates re-drawn), the
    step within half a final step of F_2."""
    run = copy_run(step1_run, tmp_path / "run", ["step1"])
    sets = ["train.match=flops", "growth.select=compute", "train.epochs=3", "growth.supernet_epochs=0.3",
            "growth.sample_epochs=0.3", "growth.final_epochs=2.4", f"data.root={tiny_data}"]
    launch(["--step", "2", "--config", "tiny", "--run-dir", str(run)] + sum((["--set", s] for s in sets), []), ranks=1)
    cfg = load_config("tiny", sets)
    gb, n1, n2 = cfg.train.global_batch, 128, 256
    unit = train_flops(cfg.arch)
    s1, s2 = RunDir(run).step(1), RunDir(run).step(2)
    assert s1.phase("train").read_done()["train_flops"] == pytest.approx(round(3 * n1 / gb) * gb * unit)
    sup = space.supernet(cfg.arch, cfg.growth)
    rec = {p: s2.phase(p).read_done() for p in ("supernet", "sample", "final")}
    f2 = 3 * n2 * unit
    assert rec["supernet"]["train_flops"] == rec["supernet"]["steps"] * gb * train_flops(sup)
    assert abs(rec["supernet"]["train_flops"] - 0.1 * f2) <= gb * train_flops(sup) / 2
    drawn = [space.candidate(cfg.arch, cfg.growth, space.sample_index(cfg.train.seed, 2, "sample", i))
             for i in range(rec["sample"]["steps"])]
    assert rec["sample"]["train_flops"] == sum(gb * train_flops(c) for c in drawn)
    chosen = space.candidate(cfg.arch, cfg.growth, s2.read_choice()["index"])
    assert rec["final"]["train_flops"] == rec["final"]["steps"] * gb * train_flops(chosen)
    spent = sum(r["train_flops"] for r in rec.values())
    assert abs(spent - f2) <= gb * train_flops(chosen) / 2
    rows = {json.loads(line)["index"]: json.loads(line) for line in s2.gas_scores.read_text().splitlines()}
    for i in (0, 7, 63):
        c = space.candidate(cfg.arch, cfg.growth, i)
        assert rows[i]["size_term"] == pytest.approx(-0.05 * math.log2(train_flops(c) / unit))


def test_step_schedule_is_one_warm_up_and_one_cosine_over_the_phases():
    from growclip_train.train.engine import span_of_step_schedule

    w = 0.05
    ref = lambda x: (x + 1e-3) / (w + 1e-3) if x < w else 0.5 * (1 + math.cos(math.pi * (x - w) / (1 - w)))  # noqa: E731
    a = span_of_step_schedule(10, (0.0, 0.25), w)
    b = span_of_step_schedule(4, (0.25, 1.0), w)
    assert [a(i) for i in range(11)] == pytest.approx([ref(0.025 * i) for i in range(11)])
    assert [b(i) for i in range(5)] == pytest.approx([ref(0.25 + 0.1875 * i) for i in range(5)])
    assert a(10) == pytest.approx(b(0)) and b(4) == pytest.approx(0.0, abs=1e-12)


def test_demo_stem_and_final_norm_choices():
    from growclip_ds.config import ConfigError
    from growclip_ds.model import GrowCLIP
    from growclip_ds.model.init import normal_draw
    from growclip_train.train.engine import param_groups

    with pytest.raises(ConfigError, match="growth.delta_conv_layers"):
        load_config("demo", ["growth.delta_conv_layers=1"])        # a plain stem layer cannot start as the identity
    cfg = load_config("demo", [])
    m = GrowCLIP(cfg.arch, seed=3)
    sd = m.state_dict()
    assert not any(k.endswith(".gate") for k in sd) and sum(p.numel() for p in m.parameters()) == param_count(cfg.arch)
    w = cfg.arch.img_width
    assert torch.equal(sd["img_ln_final.weight"], normal_draw("img_ln_final.weight", (w,), 3, w ** -0.5))
    decayed = {id(p) for p in param_groups(m, 0.1)[0]["params"]}
    assert id(m.img_ln_final.weight) in decayed and id(m.img_ln_final.bias) not in decayed
    x = torch.randn(2, cfg.arch.stem_channels, 8, 8)
    layer = m.image.stem_layers[0]
    assert torch.equal(layer(x), torch.relu(layer.norm(layer.conv(x))))   # plain, no residual path


def test_a_growth_plan_trains_only_the_planned_net():
    """growth.plan "0,18": step 2 keeps the net, step 3 grows image and text heads (bits 1 and 4), each without
    supernet phases or search: one phase, which gets the step's whole FLOP budget (train.match=flops)."""
    from growclip_ds.config import ConfigError
    from growclip_train.step_phases import step_costs

    cfg = load_config("tiny", ["growth.plan=0,18", "train.match=flops"])
    assert [cfg.growth.planned(t) for t in (1, 2, 3, 4)] == [None, 0, 18, None]     # step 4: GAS, as the paper
    prev = cfg.arch
    (c2,) = step_costs(cfg, 2, prev, 256)
    (c3,) = step_costs(cfg, 3, prev, 384)
    grown = space.candidate(prev, cfg.growth, 18)
    assert (c2.phase, c2.arch, c3.phase, c3.arch) == ("final", prev, "final", grown)
    assert (grown.img_heads, grown.txt_heads, grown.img_blocks) == (prev.img_heads + 1, prev.txt_heads + 1, prev.img_blocks)
    assert growth_shares(cfg, [c3.phase]) == {"final": 1.0}
    assert [c.phase for c in step_costs(cfg, 4, prev, 512)] == ["supernet", "sample", "gas", "final"]
    with pytest.raises(ConfigError, match="growth.plan"):
        load_config("tiny", ["growth.plan=0,64"])
