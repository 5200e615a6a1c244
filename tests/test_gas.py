"""GAS: 32 shared-variant passes equal 64 separate scorings and a standalone-model evaluation;
the choice is the formula's argmax; a restarted GAS redoes only what was not finished."""
import json

import pytest
import torch

from growclip_ds.config import replace
from growclip_ds.data.tokenizer import TextTokenizer
from growclip_ds.eval.evaluate import EvalSets, evaluate, selection_accuracy
from growclip_ds.growth import space
from growclip_ds.growth.slicing import slice_state_dict
from growclip_ds.model import GrowCLIP, param_count
from growclip_train.presets import load_config
from growclip_train.gas import read_scores, run_gas, score_each_candidate
from growclip_train.rundir import StepDir

CFG = load_config("tiny")
PREV = CFG.arch
SUPER = space.supernet(PREV, CFG.growth)


@pytest.fixture(scope="module", params=["zeroshot", "retrieval"])
def setup(tiny_data, request):
    """The selection split's classification sets (built-in data), or its retrieval set alone (what a
    user's own shards give: `data split` carves retrieval sets only)."""
    model = GrowCLIP(SUPER, seed=11)
    sets = EvalSets(replace(CFG.data, root=str(tiny_data)), SUPER.image_size, "selection", kinds=(request.param,))
    tok = TextTokenizer(tiny_data / "tokenizer", SUPER.context_length)
    return model, sets, tok


@pytest.fixture(scope="module")
def supernet_and_tokenizer(tiny_data):
    """What the prompt-batching test needs, once: it reads no evaluation set, so it does not run per kind."""
    return GrowCLIP(SUPER, seed=11), TextTokenizer(tiny_data / "tokenizer", SUPER.context_length)


def _run(model, sets, tok, d):
    return run_gas(model, PREV, CFG.growth, sets, tok, StepDir(d, 2), param_count(PREV), n_prev=1, n_now=2,
                   progress=False)


def test_shared_variants_equal_per_candidate_scoring(setup, tmp_path):
    model, sets, tok = setup
    idx, arch = _run(model, sets, tok, tmp_path)
    rows = sorted(read_scores(StepDir(tmp_path, 2).gas_scores), key=lambda r: r["index"])
    assert len(list((tmp_path / "gas").glob("*.safetensors"))) == 32
    ref = score_each_candidate(model, PREV, CFG.growth, sets, tok)
    assert [r["accuracy"] for r in rows] == pytest.approx(ref, abs=1e-9)
    # independent: a standalone model of the candidate, built from sliced weights, through evaluate()
    for i in (0, 21, 63):
        c = space.candidate(PREV, CFG.growth, i)
        small = GrowCLIP(c)
        small.load_state_dict(slice_state_dict(model.state_dict(), SUPER, c))
        res = evaluate(small, sets, tok)
        assert rows[i]["accuracy"] == pytest.approx(selection_accuracy(res), abs=1e-6)
    # the argmax of the formula, recomputed from gas.jsonl
    p_prev = param_count(PREV)
    scores = [r["accuracy"] + CFG.growth.alpha * 0.5 * p_prev / r["params"] for r in rows]
    assert [r["score"] for r in rows] == pytest.approx(scores)
    best = max(range(64), key=lambda i: (scores[i], -rows[i]["params"], -i))
    assert idx == best and arch == space.candidate(PREV, CFG.growth, best)


def test_restarted_gas_scores_only_the_rest(setup, tmp_path):
    model, sets, tok = setup
    _run(model, sets, tok, tmp_path)
    jsonl = StepDir(tmp_path, 2).gas_scores
    lines = jsonl.read_text().splitlines()
    jsonl.write_text("\n".join(lines[:34]) + "\n" + lines[34][:20])  # killed mid-write of line 35
    files = sorted((tmp_path / "gas").glob("*.safetensors"))
    removed = files[:5]
    for f in removed:
        f.unlink()
    kept = {f: f.stat().st_mtime_ns for f in files[5:]}
    idx, _ = _run(model, sets, tok, tmp_path)
    rows = read_scores(jsonl)
    assert sorted(r["index"] for r in rows) == list(range(64))
    assert [json.dumps(r) for r in rows[:34]] == [json.dumps(json.loads(x)) for x in lines[:34]]
    assert all(f.exists() for f in removed)
    assert all(f.stat().st_mtime_ns == t for f, t in kept.items())  # finished variants were not redone


def test_gas_encodes_imagenet_sized_prompt_sets_in_bounded_batches(supernet_and_tokenizer):
    """1000 classes x 80 templates: every GAS text variant feeds the encoder at most ``batch`` prompts
    at once (activation memory set by the batch, not by classes x templates), and the classifier rows
    equal a per-class recomputation."""
    from growclip_train.gas import text_embeddings

    model, tok = supernet_and_tokenizer
    dset = type("Set", (), {"name": "imagenet-like", "kind": "zeroshot",
                            "classes": [f"class {i}" for i in range(1000)],
                            "templates": [f"photo {j} of a {{c}}" for j in range(80)]})()
    dset.prompts = lambda: [t.replace("{c}", c) for c in dset.classes for t in dset.templates]
    sets = type("Sets", (), {"sets": [dset]})()
    arch = space.candidate(PREV, CFG.growth, 21)
    seen, encode = [], model.encode_text
    model.encode_text = lambda t: (seen.append(len(t)), encode(t))[1]
    try:
        cls = text_embeddings(model, arch, sets, tok, batch=256)["imagenet-like"]
    finally:
        del model.encode_text
    assert max(seen) == 256 and sum(seen) == 80_000 and cls.shape == (1000, arch.embed_dim)
    with torch.no_grad():
        model.set_arch(arch)
        for i in (0, 999):
            e = torch.nn.functional.normalize(encode(tok([t.replace("{c}", dset.classes[i]) for t in dset.templates])).mean(0), dim=-1)
            torch.testing.assert_close(cls[i], e, rtol=0, atol=1e-5)


def test_zero_deltas_score_each_distinct_net_once(setup, tmp_path, monkeypatch):
    """With two growth deltas at 0 the 64 indices hold 16 distinct nets: each is scored once, its
    duplicates carry its row marked ``same_as`` (the lowest index), encoder variants shrink from 16 + 16 to 8 + 8,
    and the accuracies still equal one full pass per candidate."""
    import growclip_train.gas as gas
    from growclip_train.report import gas_table

    model, sets, tok = setup
    growth = replace(CFG.growth, delta_conv_layers=0, delta_txt_heads=0)
    calls, score = [], gas.accuracy
    monkeypatch.setattr(gas, "accuracy", lambda *a: calls.append(1) or score(*a))
    step = StepDir(tmp_path, 2)
    step.path.mkdir(parents=True, exist_ok=True)
    gas.run_gas(model, PREV, growth, sets, tok, step, param_count(PREV), n_prev=1, n_now=2, progress=False)
    rows = sorted(read_scores(step.gas_scores), key=lambda r: r["index"])
    cands = space.candidates(PREV, growth)
    distinct = {c: i for i, c in reversed(list(enumerate(cands)))}   # net -> lowest index
    assert len(distinct) == 16 and len(calls) == 16
    assert len(list((tmp_path / "gas").glob("*.safetensors"))) == len(space.variants(PREV, growth)) == 8 + 8
    for i, r in enumerate(rows):
        lowest = distinct[cands[i]]
        assert r.get("same_as", i) == lowest and r["score"] == rows[lowest]["score"]
    ref = score_each_candidate(model, PREV, growth, sets, tok)
    assert [r["accuracy"] for r in rows] == pytest.approx(ref, abs=1e-9)
    step.choice_file.write_text(json.dumps({"index": 0}))
    table = gas_table(step, top=64)
    assert "16 distinct nets among 64 candidates" in table[0] and sum(t.startswith("| ") for t in table[3:]) == 16
    assert any(t.startswith("| 0 (4, 16, 20) (chosen) |") for t in table)    # conv (bit 2) and text heads (bit 4) grow by 0
