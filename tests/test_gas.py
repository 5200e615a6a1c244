"""GAS: 32 shared-variant passes equal 64 separate scorings and a standalone-model evaluation;
the choice is the formula's argmax; a restarted GAS redoes only what was not finished."""
import json

import pytest

from growclip_ds.config import load_config, replace
from growclip_ds.data.tokenizer import TextTokenizer
from growclip_ds.eval.evaluate import EvalSets, evaluate, selection_accuracy
from growclip_ds.growth import space
from growclip_ds.growth.gas import read_scores, run_gas, score_each_candidate
from growclip_ds.growth.slicing import slice_state_dict
from growclip_ds.model import GrowCLIP, param_count

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


def _run(model, sets, tok, d):
    return run_gas(model, PREV, CFG.growth, sets, tok, d, param_count(PREV), n_prev=1, n_now=2, progress=False)


def test_shared_variants_equal_per_candidate_scoring(setup, tmp_path):
    model, sets, tok = setup
    idx, arch = _run(model, sets, tok, tmp_path)
    rows = sorted(read_scores(tmp_path / "gas.jsonl"), key=lambda r: r["index"])
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
    jsonl = tmp_path / "gas.jsonl"
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
