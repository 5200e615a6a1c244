"""Built-in corpus v2 (data/scenes_v2.py): what its captions and evaluation labels say is what its
pixels show, step 1 holds no two-object scene, and the corpus is deterministic for a seed."""
import io
import json
import random
import tarfile

import numpy as np
import pytest

from growclip_ds.data import scenes, scenes_v2
from growclip_ds.data.builtin import make_builtin, recorded_corpus
from growclip_ds.data.manifest import Manifest
from growclip_ds.eval.sets import ZeroShotSet

INVERSE = {"left": "right", "right": "left", "above": "below", "below": "above"}


def _phrase_table(table: dict) -> dict:
    return {syn: name for name, (_, syns) in table.items() for syn in syns}


def _parse_pair(text: str) -> set:
    """The facts a two-object caption states, read back with the synonym tables: {(colour, shape)} objects and,
    when it names one, the relation as (first object, relation, second object) in both directions."""
    colours, shapes = _phrase_table(scenes_v2.COLOURS), _phrase_table(scenes_v2.SHAPES)
    rels = {syn: r for r, (_, _, syns, _) in scenes_v2.RELATIONS.items() for syn in syns}
    text = text.split(" on a ")[0].removeprefix("a picture of ")
    syn = next((s for s in sorted(rels, key=len, reverse=True) if f" {s} a " in text), None)
    rel = rels.get(syn)
    left, right = text.split(f" {syn} a " if syn else " and a ")

    def obj(words):
        words = words.removeprefix("a ").split(" ", 1)
        return colours[words[0]], shapes[words[1]]
    a, b = obj(left), obj(right)
    return {a, b} if rel is None else {(a, rel, b), (b, INVERSE[rel], a)}


def _facts(p: scenes_v2.PairScene, with_relation: bool) -> set:
    a, b = (p.colour_a, p.shape_a), (p.colour_b, p.shape_b)
    return {(a, p.relation, b), (b, INVERSE[p.relation], a)} if with_relation else {a, b}


def _centroid(img, rgb) -> np.ndarray:
    """Mean (x, y) of the pixels within 40 of ``rgb`` (an object's colour, jittered by at most 15)."""
    px = np.asarray(img).astype(int)
    ys, xs = np.nonzero(np.abs(px - np.array(rgb)).max(-1) <= 40)
    assert len(xs) > 10
    return np.array([xs.mean(), ys.mean()])


def test_captions_state_the_scene_in_either_order():
    rng = random.Random(3)
    for _ in range(300):
        p = scenes_v2._pair(rng, scenes_v2.concepts_at(4, 4))
        text = scenes_v2.caption(p, rng)
        facts = _parse_pair(text)
        assert facts == _facts(p, with_relation=" and a " not in text), (text, p)


def test_relations_are_where_the_pixels_are():
    rng = random.Random(5)
    for rel in scenes_v2.RELATIONS:
        for _ in range(10):
            p = scenes_v2._pair(rng, scenes_v2.concepts_at(1, 4), relation=rel, colour_a="red", colour_b="blue")
            img = scenes_v2.render(p, rng)
            (xa, ya), (xb, yb) = _centroid(img, scenes_v2.COLOURS["red"][0]), _centroid(img, scenes_v2.COLOURS["blue"][0])
            assert {"left": xa < xb - 8, "right": xa > xb + 8, "above": ya < yb - 8, "below": ya > yb + 8}[rel]


def test_a_family_is_a_pair_and_its_three_one_binding_contrasts():
    rng = random.Random(11)
    for _ in range(50):
        family = next(d for d in iter(lambda: scenes_v2.draw_train(rng, 4, 4), None)
                      if isinstance(d[0], scenes_v2.PairScene))
        assert len(family) == 4 and len(set(family)) == 4
        for p in family:
            # exactly one other member flips the relation over the same objects; two bind the same four
            # attributes differently under the same relation
            objs = {(p.colour_a, p.shape_a), (p.colour_b, p.shape_b)}
            others = [q for q in family if q != p]
            flips = [q for q in others if {(q.colour_a, q.shape_a), (q.colour_b, q.shape_b)} == objs]
            assert len(flips) == 1
            assert _facts(flips[0], True) == {(x, INVERSE[r], y) for x, r, y in _facts(p, True)}
            assert all({q.colour_a, q.colour_b} == {p.colour_a, p.colour_b} and
                       {q.shape_a, q.shape_b} == {p.shape_a, p.shape_b} for q in others)


def test_a_single_scene_family_differs_in_one_attribute_each():
    rng = random.Random(2)
    for _ in range(50):
        family = scenes_v2.draw_train(rng, 1, 4)
        assert len(family) == 4 and all(isinstance(s, scenes.Scene) for s in family)
        diffs = sorted(sum(a != b for a, b in zip(p.__dict__.values(), q.__dict__.values()))
                       for i, p in enumerate(family) for q in family[i + 1:])
        assert diffs.count(1) >= 3 and max(diffs) <= 2     # the scene and each contrast: one; two contrasts: two


def test_step1_has_no_pairs_and_later_steps_more():
    for t, want in ((1, 0.0), (2, 0.5), (4, 0.875)):
        rng = random.Random(t)
        draws = [d for _ in range(1000) for d in scenes_v2.draw_train(rng, t, 4)]
        share = sum(isinstance(d, scenes_v2.PairScene) for d in draws) / len(draws)
        assert abs(share - want) < 0.05, (t, share)
    first, last = scenes_v2.concepts_at(1, 4), scenes_v2.concepts_at(4, 4)
    assert len(first["colour"]) == 5 and len(first["shape"]) == 4
    assert last["colour"] == list(scenes_v2.COLOURS) and last["shape"] == list(scenes_v2.SHAPES)


@pytest.fixture(scope="module")
def small_v2(tmp_path_factory):
    root = tmp_path_factory.mktemp("v2") / "data"
    make_builtin(root, num_steps=4, samples_per_step=64, shard_size=32, eval_per_class=3, retrieval_size=16,
                 vocab_size=256, seed=4, progress=False, corpus="v2")
    return root


def test_binding_and_relation_labels_match_the_scenes(small_v2):
    """Each binding class is (colour of the circle, colour of the square); its swap is a class too, so a bag
    of attributes cannot tell them apart. Each relation class names where the circle is."""
    for role in ("test", "selection"):
        bind = ZeroShotSet("binding", small_v2 / "eval" / role / "binding")
        assert len(bind.classes) == 12 and bind.templates[0] == "a {c}"
        named = [tuple(w for w in c.split() if w in scenes_v2.BIND_COLOURS) for c in bind.classes]
        assert all((b, a) in named for a, b in named)
        rel = ZeroShotSet("relation", small_v2 / "eval" / role / "relation")
        for task, dset in (("binding", bind), ("relation", rel)):
            with tarfile.open(dset.tars[0]) as tar:
                metas = [json.loads(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".json")]
            assert len(metas) == len(dset.labels) == 3 * len(dset.classes)
            for meta, label in zip(metas, dset.labels):
                by_shape = {meta["shape_a"]: (meta["colour_a"], "a"), meta["shape_b"]: (meta["colour_b"], "b")}
                if task == "binding":
                    assert (by_shape["circle"][0], by_shape["square"][0]) == named[label]
                else:
                    assert meta["shape_a"] == "circle" and meta["shape_b"] == "square"
                    assert meta["relation"] == list(scenes_v2.RELATIONS)[label]
                    assert scenes_v2.RELATIONS[meta["relation"]][2][1] in dset.classes[label]


def test_make_is_deterministic_and_records_its_corpus(small_v2, tmp_path):
    again = tmp_path / "again"
    make_builtin(again, num_steps=4, samples_per_step=64, shard_size=32, eval_per_class=3, retrieval_size=16,
                 vocab_size=256, seed=4, progress=False, corpus="v2")
    for f in sorted(p.relative_to(small_v2) for p in small_v2.rglob("*") if p.is_file()):
        if not f.name.endswith("_stats.json"):     # img2dataset's stats hold the time of writing
            assert (again / f).read_bytes() == (small_v2 / f).read_bytes(), f
    assert recorded_corpus(small_v2) == "v2"
    m = Manifest.load(small_v2)
    with tarfile.open(m.shards([1])[0].path) as tar:
        kinds = {json.loads(tar.extractfile(x).read())["kind"] for x in tar.getmembers() if x.name.endswith(".json")}
    assert kinds == {"single"}
    img = tarfile.open(m.shards([4])[0].path)
    captions = [img.extractfile(x).read().decode() for x in img.getmembers() if x.name.endswith(".txt")]
    assert sum(" and a " in c or " of a " in c or " above a " in c for c in captions) > len(captions) // 2
    v1 = scenes.eval_tasks(4)
    assert list(v1) == ["colour", "shape", "position"]


def test_data_make_refuses_a_folder_of_the_other_corpus(small_v2, capsys):
    from growclip_train import cli

    before = (small_v2 / "manifest.parquet").read_bytes()
    assert cli.main(["data", "make", "--config", "tiny", "--set", "data.corpus=v1", "--root", str(small_v2)]) == 2
    err = capsys.readouterr().err
    assert "holds built-in data made with {'corpus': 'v2'" in err and "--force" in err
    same = ["--set", "data.samples_per_step=64", "--seed", "4"]            # what small_v2 was made with
    assert cli.main(["data", "make", "--config", "tiny", "--root", str(small_v2), *same]) == 0   # the same: kept
    assert (small_v2 / "manifest.parquet").read_bytes() == before
