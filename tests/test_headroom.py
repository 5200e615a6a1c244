"""benchmarks/headroom.py: D^t as one step, equal-FLOPs budgets, the thresholds of issue 31."""
import subprocess
import sys

import pytest

from benchmarks import headroom
from growclip_ds.data.manifest import Manifest
from growclip_ds.model.flops import train_flops
from growclip_train.presets import PRESETS
from growclip_train.rundir import RunDir
from tests.conftest import REPO


def test_one_step_data_is_d_t_as_step_one(tiny_data, tmp_path):
    src = Manifest.load(tiny_data)
    for t in (1, 3):
        m = Manifest.load(headroom.one_step_data(tiny_data, tmp_path / f"D{t}", t))
        assert m.num_steps == 1 and m.num_samples(1) == src.num_samples(t)
        assert [e.path.resolve() for e in m.entries] == [e.path.resolve() for e in src.shards(t)]
        assert (tmp_path / f"D{t}" / "eval" / "sets.json").read_bytes() == (tiny_data / "eval" / "sets.json").read_bytes()


def _rows(t, match, means):
    params = {"narrow": 100, "base": 300, "deep": 500, "wider": 1000}
    return [{"data_step": t, "match": match, "arch": a, "params": params[a], "seed": s, "top1_mean": m + d}
            for a, m in means.items() for s, d in enumerate((-1.0, 0.0, 1.0))]


def test_verdict_hand_computed():
    rows = _rows(1, "flops", {"narrow": 40, "base": 50, "deep": 50.9, "wider": 51.5}) + \
        _rows(4, "flops", {"narrow": 40, "base": 60, "deep": 70, "wider": 64.9}) + \
        _rows(4, "samples", {"base": 60, "wider": 90})
    v = headroom.verdict(rows, 1, 4)
    assert v["D1"]["gains_over_base"] == {"narrow": -10.0, "deep": 0.9, "wider": 1.5} and not v["D1"]["holds"]
    # deep (500 / 300 = 1.7x) is outside 2-4x: its +10 does not count; wider's +4.9 is short of 5
    assert v["D4"]["gains_2_4x"] == {"wider": 4.9} and not v["D4"]["holds"]
    agg = headroom.aggregate(rows)
    assert agg[(4, "samples")]["wider"]["mean"] == 90 and agg[(4, "samples")]["wider"]["sd"] == pytest.approx(1.0)
    assert headroom.verdict(_rows(1, "flops", {"base": 50, "wider": 51}), 1, 1)["D1"]["holds"]
    # a map of D^T alone (--data-steps 4) is held to the D^T threshold, not D^1's
    alone = headroom.verdict(_rows(4, "flops", {"base": 60, "wider": 65.5}), 4, 4)["D4"]
    assert alone["want"] == "headroom" and alone["holds"] and alone["gains_2_4x"] == {"wider": 5.5}


def test_sizes_span_a_third_to_three_times_the_step1_net():
    from growclip_ds.arch import ArchConfig
    from growclip_ds.model.clip import param_count

    a = PRESETS["demo"].arch
    ratio = {n: param_count(ArchConfig.from_dict({**a.__dict__, **o}, "arch")) / param_count(a)
             for n, o in headroom.sizes(a).items()}
    assert ratio["narrow"] < 0.4 and ratio["base"] == 1 and 1.5 < ratio["deep"] < 2 and 2 < ratio["wider"] < 4


@pytest.mark.launch
def test_equal_flops_runs_spend_the_step1_nets_budget(tiny_data, tmp_path):
    """Two real runs of the tool (tiny preset, one rank each): the narrow net at equal FLOPs sees more samples,
    in proportion to its FLOPs per sample, and spends what the step-1 net spends; rows and files written."""
    out = tmp_path / "hr"
    cmd = [sys.executable, "benchmarks/headroom.py", "--config", "tiny", "--data-root", str(tiny_data),
           "--sizes", "narrow,base", "--match", "flops", "--data-steps", "2", "--seeds", "0", "--epochs", "2",
           "--jobs", "2", "--threads", "1", "--out", str(out)]
    subprocess.run(cmd, cwd=REPO, check=True, timeout=600, capture_output=True)
    import json

    rows = {(r["arch"], r["match"]): r for r in json.loads((out / "summary.json").read_text())["headroom"]}
    base, narrow = rows[("base", "flops")], rows[("narrow", "flops")]
    assert rows[("base", "samples")]["samples"] == base["samples"] == 2 * Manifest.load(tiny_data).num_samples(1)
    cfg = PRESETS["tiny"]
    narrow_arch = {**cfg.arch.__dict__, **headroom.sizes(cfg.arch)["narrow"]}
    assert {k: RunDir(out / "runs" / "D2" / "narrow" / "flops" / "s0").step(1).read_choice()[k]
            for k in ("img_heads", "txt_heads")} == {k: narrow_arch[k] for k in ("img_heads", "txt_heads")}
    unit, small = train_flops(cfg.arch), train_flops(type(cfg.arch).from_dict(narrow_arch, "arch"))
    step = cfg.train.global_batch
    assert abs(narrow["samples"] - base["samples"] * unit / small) <= step   # within one optimizer step
    assert abs(narrow["tflops"] - base["tflops"]) <= step * small / 1e12 + 1e-4
    assert narrow["corpus"] == "v2" and 0 <= narrow["top1_mean"] <= 100
    assert (out / "headroom.png").stat().st_size > 0 and "| D^2 | flops |" in (out / "headroom.md").read_text()
