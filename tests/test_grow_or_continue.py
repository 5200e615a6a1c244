"""benchmarks/grow_or_continue.py: the arms it launches, the folders it starts them from, the paired differences."""
import json

import pytest

from benchmarks.grow_or_continue import CONTINUE, arms, paired, plan_for, prepare
from growclip_ds.config import GrowthConfig


def test_each_grown_arm_plans_its_candidate_at_the_step_and_keeps_the_net_before():
    assert plan_for(4, 18) == "0,0,18" and plan_for(2, 5) == "5"
    g = GrowthConfig(plan=plan_for(4, 18))
    assert [g.planned(t) for t in (2, 3, 4, 5)] == [0, 0, 18, None]     # step 5 would search again
    got = arms([18, 3], 3)
    assert got[CONTINUE] == ["--method", "twp"]
    assert got["grow-3"] == ["--method", "growclip", "--set", "growth.plan=0,3"]
    assert list(got) == [CONTINUE, "grow-18", "grow-3"]


def _step(run, t, finished=True):
    d = run / f"step{t}"
    (d / "final" / "checkpoints").mkdir(parents=True)
    (d / "final" / "checkpoints" / "big.pt").write_text("x")
    (d / "model.safetensors").write_text(f"weights {t}")
    if finished:
        (d / "eval.json").write_text(json.dumps({"zero_shot": {}}))


def test_an_arm_starts_from_copies_of_the_finished_steps_without_checkpoints(tmp_path):
    src, dst = tmp_path / "twp", tmp_path / "arm"
    for t in (1, 2, 3):
        _step(src, t)
    _step(src, 4)                        # a later step is not copied
    (src / "tokenizer").mkdir()
    (src / "tokenizer" / "vocab.json").write_text("{}")
    prepare(src, dst, 4)
    assert sorted(p.name for p in dst.iterdir()) == ["step1", "step2", "step3", "tokenizer"]
    assert (dst / "step3" / "model.safetensors").read_text() == "weights 3"
    assert not (dst / "step2" / "final" / "checkpoints").exists()
    assert (src / "step2" / "final" / "checkpoints" / "big.pt").exists()     # the source is left as it was
    prepare(src, dst, 4)                                                    # a rerun copies nothing again


def test_a_source_without_the_step_before_is_refused_by_name(tmp_path):
    src = tmp_path / "twp"
    _step(src, 1)
    _step(src, 2, finished=False)
    with pytest.raises(SystemExit, match=r"twp: step\(s\) \[2, 3\] not finished"):
        prepare(src, tmp_path / "arm", 4)


def test_paired_differences_are_per_seed_grown_minus_continued():
    rows = [{"budget": 7.5, "arm": CONTINUE, "seed": s, "top1_mean": v} for s, v in [(0, 69.0), (1, 69.1), (2, 73.5)]]
    rows += [{"budget": 7.5, "arm": "grow-18", "seed": s, "top1_mean": v} for s, v in [(0, 70.0), (1, 69.7), (2, 71.7)]]
    rows += [{"budget": 15.0, "arm": "grow-18", "seed": 0, "top1_mean": 73.0}]     # no continued run at 15: no pair
    (p,) = paired(rows)
    assert p["budget"] == 7.5 and p["seeds"] == [0, 1, 2] and p["diff"] == [1.0, 0.6, -1.8]
    mean = (1.0 + 0.6 - 1.8) / 3
    sd = (sum((d - mean) ** 2 for d in (1.0, 0.6, -1.8)) / 2) ** 0.5
    assert p["mean"] == round(mean, 2) and p["sd"] == round(sd, 2)
    for r in rows:
        r["i2t_r1"] = 50.0 + r["seed"] if r["arm"] == CONTINUE else 40.0
    assert [q["diff"] for q in paired(rows, "i2t_r1")] == [[-10.0, -11.0, -12.0]]
