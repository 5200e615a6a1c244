"""Baselines and TiC-CLIP's methods as recipes: initial weights, data mixtures counted from the
loader, LwF's loss against float64, and Patching's interpolation through a real 2-rank run."""
import json
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from growclip_ds import model_folder
from growclip_ds.config import replace
from growclip_ds.data.loader import EpochPlan, make_loader
from growclip_ds.data.manifest import Manifest
from growclip_ds.data.mixture import in_buffer, replay_mixture
from growclip_ds.loss import lwf_kl
from growclip_ds.model import GrowCLIP
from growclip_ds.model.clip import arch_specs
from growclip_ds.model.init import normal_std
from growclip_ds.model.roles import Role
from growclip_train.presets import PRESETS
from growclip_train import methods
from growclip_train.rundir import RunDir
from tests.conftest import copy_run, launch


def test_replay_buffers_by_hand():
    sizes = {1: 100, 2: 100, 3: 100, 4: 100}
    exp = {s.steps[0]: s for s in replay_mixture("exp", 4, sizes)}   # D = N^4 = 100: 50, 25, 25
    assert [exp[j].keep for j in (1, 2, 3, 4)] == [0.25, 0.25, 0.5, 1.0]
    assert [exp[j].weight for j in (1, 2, 3, 4)] == pytest.approx([25 / 200, 25 / 200, 50 / 200, 100 / 200])
    eq = {s.steps[0]: s for s in replay_mixture("equal", 4, sizes, buffer=60)}
    assert [eq[j].keep for j in (1, 2, 3)] == pytest.approx([0.2] * 3)
    assert eq[4].weight == pytest.approx(100 / 160)
    w = {s.steps[0]: s.weight for s in replay_mixture("equal", 3, sizes, new_weight=0.8)}
    assert w == pytest.approx({1: 0.1, 2: 0.1, 3: 0.8})
    assert [s.steps for s in replay_mixture("all", 3, sizes)] == [(1, 2, 3)]
    assert [s.steps for s in replay_mixture("new", 3, sizes)] == [(3,)]


def test_loader_draws_the_replay_proportions_from_the_buffers(tiny_data):
    m = Manifest.load(tiny_data)
    step_of = {e.path.stem: e.step for e in m.entries}     # key = shard id (5 digits) + index
    sizes = {j: m.num_samples([j]) for j in range(1, 5)}
    mix = replay_mixture("exp", 4, sizes)
    sources = [([e.path for e in m.shards(list(s.steps))], s.weight, s.keep) for s in mix]
    plan = EpochPlan(shards=[], seed=3, epoch=0, rank=0, world=1, micro_batch=16, batches=60, sources=sources)
    keys = [k for b in make_loader(plan, 32, lambda texts: torch.zeros(len(texts), 16, dtype=torch.long))
            for k in b["keys"]]
    by_step = Counter(step_of[k[:5]] for k in keys)
    n = len(keys)
    for s in mix:
        j, p = s.steps[0], s.weight
        assert abs(by_step[j] - n * p) < 4 * (n * p * (1 - p)) ** 0.5, (j, by_step, n * p)
        seen = {k for k in keys if step_of[k[:5]] == j}
        assert all(in_buffer(k, s.keep, 3) for k in seen)          # only the buffer is replayed
        assert len(seen) <= round(s.keep * sizes[j] * 1.6) + 2      # ~keep x N distinct samples
    # a smaller buffer later is a subset of the earlier one (Exp halves, it does not redraw)
    all_keys = [f"{i:05d}{j:04d}" for i in range(4) for j in range(32)]
    assert {k for k in all_keys if in_buffer(k, 0.25, 3)} <= {k for k in all_keys if in_buffer(k, 0.5, 3)}


def test_lwf_loss_equals_float64_recomputation():
    g = torch.Generator().manual_seed(0)
    img, txt, oi, ot = (F.normalize(torch.randn(6, 8, generator=g), dim=-1) for _ in range(4))
    scale, old_scale = torch.tensor(7.0), torch.tensor(3.0)
    got = lwf_kl(img, txt, scale, oi, ot, old_scale)

    def kl(a, b, sa, oa, ob, so):
        p_new = torch.softmax(sa.double() * a.double() @ b.double().T, dim=1)
        p_old = torch.softmax(so.double() * oa.double() @ ob.double().T, dim=1)
        return sum((p_old[i, j] * (p_old[i, j] / p_new[i, j]).log()).item()
                   for i in range(6) for j in range(6)) / 6
    ref = 0.5 * (kl(img, txt, scale, oi, ot, old_scale) + kl(txt, img, scale, ot, oi, old_scale))
    assert got.item() == pytest.approx(ref, rel=1e-5)
    assert lwf_kl(oi, ot, old_scale, oi, ot, old_scale).item() == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope="module")
def prev_run(tmp_path_factory, tiny_data):
    """A run folder whose step 1 is a (randomly initialised) consolidated model."""
    cfg = replace(PRESETS["tiny"], data=replace(PRESETS["tiny"].data, root=str(tiny_data)))
    run = tmp_path_factory.mktemp("prev")
    model_folder.write_model(run / "step1", GrowCLIP(cfg.arch, seed=5).state_dict(), cfg.arch)
    return cfg, run


def test_recipes_start_from_the_right_weights_and_data(prev_run):
    cfg, run = prev_run
    rd = RunDir(run)
    prev, arch = model_folder.read_model(rd.step(1).path)
    twp = methods.baseline_phase(cfg, methods.get("twp"), 2, rd)
    assert all(torch.equal(twp.init_state[k], prev[k]) for k in prev) and twp.num_samples is None
    assert methods.baseline_phase(cfg, methods.get("tfs"), 2, rd).init_state is None
    seq = methods.baseline_phase(cfg, methods.get("sequential"), 2, rd)
    assert [s.steps for s in seq.mixture] == [(2,)] and seq.warmup == "none"     # TiC-CLIP: no warm-up
    assert methods.baseline_phase(cfg, methods.get("twp"), 2, rd).warmup == "inherited"   # paper's rule
    assert methods.baseline_phase(cfg, methods.get("tfs"), 2, rd).warmup == "scratch"
    assert seq.num_samples == round(cfg.train.epochs * 128)                     # C = cost of step 1
    assert methods.baseline_phase(cfg, methods.get("oracle"), 2, rd).num_samples == 2 * 128
    assert [s.steps for s in methods.baseline_phase(cfg, methods.get("cumulative-all"), 2, rd).mixture] \
        == [(1, 2)]
    lwf = methods.baseline_phase(cfg, methods.get("lwf"), 2, rd)
    assert lwf.teacher[1] == arch and lwf.distill_weight == cfg.method.lwf_weight

    cfg = replace(cfg, method=replace(cfg.method, sap_shrink=0.4, sap_noise=0.05))
    sap = methods.baseline_phase(cfg, methods.get("sap"), 2, rd).init_state
    specs = arch_specs(arch)
    for name, w in prev.items():
        spec = specs[name][1]
        kind = "normal" if spec.decays else "ones" if spec.role in (Role.NORM_GAIN, Role.GATE) else "other"
        std = normal_std(spec, tuple(w.shape)) if spec.decays else 0.0
        if name == "logit_scale":
            assert torch.equal(sap[name], w)
            continue
        noise = (sap[name].double() - 0.4 * w.double()) / 0.05      # what was added, per unit of sigma
        if kind == "normal" and w.numel() >= 256:                      # a draw of the initializer
            assert noise.mean().abs() < 4 * std / w.numel() ** 0.5 + 1e-6 and abs(noise.std() / std - 1) < 0.2
        elif kind != "normal":                                         # ones / zeros initializers
            assert torch.allclose(noise, torch.full_like(noise, 1.0 if kind == "ones" else 0.0), atol=1e-4)


def test_interpolation_is_exact():
    a, b = {"w": torch.randn(5, 3, dtype=torch.float64)}, {"w": torch.randn(5, 3, dtype=torch.float64)}
    out = methods.interpolate(a, b, 0.3)
    assert torch.allclose(out["w"].double(), 0.7 * a["w"] + 0.3 * b["w"], atol=1e-6)
    with pytest.raises(ValueError, match="one architecture"):
        methods.interpolate(a, {"v": b["w"]}, 0.5)


@pytest.mark.launch
def test_patching_step_on_two_ranks(step1_run, tiny_data, tmp_path):
    """Patching's step 2 on 2 ranks after conftest.step1_run's step 1: the step's model is exactly the
    interpolation of the step-1 model and step 2's trained one at the recorded alpha; the trained phase
    read step 2 only; eval.json has a retrieval row per growth step (the TiC matrix's inputs)."""
    run = copy_run(step1_run, tmp_path / "run", ["step1"])
    common = ["--config", "tiny", "--set", f"data.root={tiny_data}", "--run-dir", str(run), "--method", "patching"]
    launch(["--step", "2"] + common)
    how = json.loads((run / "step2" / "patch" / "done.json").read_text())
    old, new = load_file(str(run / "step1" / "model.safetensors")), load_file(str(run / "step2" / "train" /
                                                                                    "model.safetensors"))
    got = load_file(str(run / "step2" / "model.safetensors"))
    a = how["alpha"]
    assert how["scores"][str(a)] == max(how["scores"].values())       # chosen on old-step retrieval
    for k in got:
        assert torch.allclose(got[k].double(), (1 - a) * old[k].double() + a * new[k].double(), atol=1e-6)
    cost = json.loads((run / "step2" / "train" / "done.json").read_text())
    assert cost["samples_by_source"] == {"step 2": 128} and cost["samples_seen"] == 128 and cost["device_s"] > 0
    ev = json.loads((run / "step2" / "eval.json").read_text())
    assert set(ev["retrieval_by_step"]) == {"1", "2", "3", "4"}
    assert json.loads((run / "method.json").read_text())["method"] == "patching"


def test_tic_matrix_and_transfer_by_hand(tmp_path):
    from growclip_train.tic_matrix import eval_matrix, transfer_summary

    values = [[0.5, 0.1, 0.2], [0.4, 0.6, 0.3]]       # two finished steps, three data steps
    for i, row in enumerate(values, 1):
        (tmp_path / f"step{i}").mkdir()
        (tmp_path / f"step{i}" / "eval.json").write_text(json.dumps(
            {"retrieval_by_step": {str(j): {"mean_R@1": v} for j, v in enumerate(row, 1)}}))
    m = eval_matrix(tmp_path)
    assert m == values
    s = transfer_summary(m)
    assert s["in_domain"] == pytest.approx((0.5 + 0.6) / 2)
    assert s["backward"] == pytest.approx(0.4)
    assert s["forward"] == pytest.approx((0.1 + 0.2 + 0.3) / 3)
