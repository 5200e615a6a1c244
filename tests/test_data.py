"""Built-in corpus in img2dataset format, manifest, split, tokenizer and the resumable loader."""
import io
import json
import shutil
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds
from PIL import Image

from growclip_ds.data.loader import EpochPlan, make_loader
from growclip_ds.data.manifest import Manifest
from growclip_ds.data.shards import write_shard
from growclip_ds.data.split import split_corpus
from growclip_ds.data.tokenizer import TextTokenizer


def test_shards_read_back_with_tarfile_and_webdataset(tiny_data):
    m = Manifest.load(tiny_data)
    shard = m.entries[0].path
    with tarfile.open(shard) as tar:
        names = tar.getnames()
        keys = sorted({n.rsplit(".", 1)[0] for n in names})
        assert sorted(names) == sorted(f"{k}.{e}" for k in keys for e in ("jpg", "txt", "json"))
        meta = json.loads(tar.extractfile(f"{keys[0]}.json").read())
        caption = tar.extractfile(f"{keys[0]}.txt").read().decode()
        img = Image.open(io.BytesIO(tar.extractfile(f"{keys[0]}.jpg").read()))
    assert meta["key"] == keys[0] and meta["caption"] == caption and meta["status"] == "success"
    assert (meta["width"], meta["height"]) == img.size
    samples = list(wds.WebDataset(str(shard), shardshuffle=False))
    assert [s["__key__"] for s in samples] == keys
    table = pq.read_table(shard.with_suffix(".parquet")).to_pylist()
    assert [r["key"] for r in table] == keys
    assert [r["caption"] for r in table] == [s["txt"].decode() for s in samples]


def _copy_corpus(m, folder, parquet=True):
    """The tiny corpus's training shards as a user's img2dataset folder (no manifest, no eval, no tokenizer)."""
    folder.mkdir()
    for e in m.entries:
        shutil.copy(e.path, folder)
        if parquet:
            shutil.copy(e.path.with_suffix(".parquet"), folder)
    return folder


def _all_keys(shards) -> list:
    return [s["__key__"] for s in wds.tariterators.tarfile_samples(iter({"url": str(p)} for p in shards))]


def test_split_carves_disjoint_heldout_sets_never_trained_on(tiny_data, tmp_path):
    m = Manifest.load(tiny_data)
    per = m.num_samples([1])
    assert [m.num_samples(t) for t in range(1, 5)] == [per, 2 * per, 3 * per, 4 * per]
    assert set(m.shards(2)) == set(m.shards([1])) | set(m.shards([2]))
    folder = _copy_corpus(m, tmp_path / "i2d")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    a = split_corpus(folder, 4, holdout=8, seed=7, vocab_size=512, progress=lambda _: None)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.name in before} == before   # user files untouched
    assert [len(a.shards([t])) for t in range(1, 5)] == [len(m.entries) // 4] * 4
    held = {s["__key__"]: s for s in wds.tariterators.tarfile_samples(
        iter({"url": str(p)} for p in sorted((folder / "eval").glob("*/retrieval/test/*.tar"))))}
    test_keys = set(_all_keys((folder / "eval" / "test" / "retrieval" / "test").glob("*.tar")))
    sel_keys = set(_all_keys((folder / "eval" / "selection" / "retrieval" / "test").glob("*.tar")))
    assert len(test_keys) == len(sel_keys) == 8 and not test_keys & sel_keys and a.holdout == test_keys | sel_keys
    for k, s in held.items():   # 2 per step per role, each labelled with the step of its shard
        assert json.loads(s["json"])["step"] == next(e.step for e in a.entries if k in e.holdout)
    assert sorted(json.loads(held[k]["json"])["step"] for k in test_keys) == [1, 1, 2, 2, 3, 3, 4, 4]
    assert a.num_samples(4) == m.num_samples(4) - 16
    # the loader never yields a held-out key: one pass over every shard of every step
    plan = EpochPlan(shards=[e.path for e in a.entries], seed=0, epoch=0, rank=0, world=1, micro_batch=16,
                     batches=a.num_samples(4) // 16, resample=False, shuffle_buffer=1, exclude=a.holdout)
    tok = TextTokenizer(folder / "tokenizer", 16)
    seen = [k for b in make_loader(plan, 32, tok) for k in b["keys"]]
    assert len(seen) == len(set(seen)) == a.num_samples(4) and not set(seen) & a.holdout
    # a BPE trained on step 1's training captions, deterministic; the split too
    assert tok.vocab_size <= 512 and tok(["a red circle"])[0, 0] > 0
    b = split_corpus(tmp_path / "i2d", 4, holdout=8, seed=7, vocab_size=512, progress=lambda _: None)
    assert [(e.path.name, e.step, e.holdout) for e in a.entries] == [(e.path.name, e.step, e.holdout) for e in b.entries]
    assert Manifest.load(folder).holdout == a.holdout


def test_split_unequal_sizes_and_by_column(tiny_data, tmp_path):
    m = Manifest.load(tiny_data)
    q = lambda _: None  # noqa: E731
    u = split_corpus(_copy_corpus(m, tmp_path / "u"), 2, sizes=[3, 1], holdout=2, vocab_size=512, progress=q)
    assert [len(u.shards([t])) for t in (1, 2)] == [12, 4]
    # TiC-CLIP style, a column of img2dataset's parquet (--save_additional_columns): the built-in step
    folder = _copy_corpus(m, tmp_path / "year")
    for e in m.entries:
        t = pq.read_table(folder / e.path.with_suffix(".parquet").name)
        pq.write_table(t.append_column("year", pa.array([2000 + e.step] * t.num_rows)),
                       folder / e.path.with_suffix(".parquet").name)
    y = split_corpus(folder, None, by="year", holdout=4, vocab_size=512, progress=q)
    assert {(e.path.name, e.step) for e in y.entries} == {(e.path.name, e.step) for e in m.entries}
    # a column that varies inside shards (the scene's background, from the tars' json): step-pure copies
    folder = _copy_corpus(m, tmp_path / "background", parquet=False)
    c = split_corpus(folder, 2, by="background", holdout=2, vocab_size=512, progress=q)
    assert all(e.path.parent.name == "regrouped" for e in c.entries)
    colours = {}
    for e in c.entries:
        for s in wds.tariterators.tarfile_samples(iter([{"url": str(e.path)}])):
            colours.setdefault(json.loads(s["json"])["background"], set()).add(e.step)
    assert all(len(steps) == 1 for steps in colours.values())      # each value in exactly one step
    order = sorted(colours)
    assert [next(iter(colours[v])) for v in order] == sorted(next(iter(colours[v])) for v in order)  # oldest first
    assert c.num_samples(2) + len(c.holdout) == m.num_samples(4)  # nothing dropped
    with pytest.raises(ValueError, match="no column 'year'.*save_additional_columns"):
        split_corpus(_copy_corpus(m, tmp_path / "noyear"), None, by="year", progress=q)


def test_missing_shard_is_a_clear_error(tiny_data, tmp_path):
    m = Manifest.load(tiny_data)
    gone = m.entries[3].path
    broken = Manifest(tmp_path, [*m.entries[:3], type(m.entries[3])(tmp_path / gone.name, 1, 32)])
    with pytest.raises(FileNotFoundError, match=gone.name):
        broken.check_files()


def test_tokenizer_shifts_ids_and_ends_with_eot(tiny_data):
    tok = TextTokenizer(tiny_data / "tokenizer", context_length=8)
    t = tok(["two red circles on the left", "a " * 20])
    assert t.shape == (2, 8) and t.min() >= 0
    assert t[0, 0] == tok.sot + 1
    n = int((t[0] != 0).sum())
    assert t[0, n - 1] == tok.eot + 1 and (t[0, n:] == 0).all()
    assert t[1, -1] == tok.eot + 1  # truncated, end token kept
    assert tok.vocab_size <= 512


def test_plain_bpe_read_without_transformers_gives_transformers_ids(tiny_data, tmp_path):
    """The built-in BPE folder is read with ``tokenizers`` alone and gives transformers' AutoTokenizer's ids; a copy
    whose config names another class (CLIP's) is read by transformers, as that class splits text."""
    import json
    import pickle
    import shutil

    from transformers import AutoTokenizer

    texts = ["two red circles on the left", "A BLUE Square, right of 3 tiny stars!", "", "ünïcödé café 東京",
             "zzqx unknownword " * 6, "the  spaces\tand\nlines"]
    hf = AutoTokenizer.from_pretrained(str(tiny_data / "tokenizer"))
    plain = TextTokenizer(tiny_data / "tokenizer", context_length=128)
    assert type(plain.backend).__module__.startswith("tokenizers")
    expect = torch.zeros(len(texts), 128, dtype=torch.long)
    for i, ids in enumerate(hf(texts, add_special_tokens=False)["input_ids"]):
        ids = [hf.bos_token_id, *ids, hf.eos_token_id]
        expect[i, :len(ids)] = torch.tensor(ids) + 1
    assert torch.equal(plain(texts), expect)
    assert torch.equal(pickle.loads(pickle.dumps(plain))(texts), expect)   # as a spawned data worker gets it
    assert (plain.sot, plain.eot, plain.vocab_size) == (hf.bos_token_id, hf.eos_token_id, len(hf) + 1)
    other = shutil.copytree(tiny_data / "tokenizer", tmp_path / "other")
    config = json.loads((other / "tokenizer_config.json").read_text())
    (other / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "CLIPTokenizer"}))
    clip, via_hf = AutoTokenizer.from_pretrained(str(other)), TextTokenizer(other, context_length=128)
    got = via_hf(texts)   # CLIP's own splitting of the same files: other ids, read as transformers reads them
    assert not torch.equal(got, expect)
    for row, ids in zip(got, clip(texts, add_special_tokens=False)["input_ids"]):
        assert row[:len(ids) + 2].tolist() == [clip.bos_token_id + 1, *(i + 1 for i in ids), clip.eos_token_id + 1]


def _plan(shards, **kw):
    base = dict(shards=shards, seed=3, epoch=0, rank=0, world=1, micro_batch=8, batches=6, num_workers=0,
                resample=True, shuffle_buffer=16)
    return EpochPlan(**{**base, **kw})


def _batches(plan, tok):
    return list(make_loader(plan, 32, tok))


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_resume_equals_uninterrupted(tiny_data, workers):
    tok = TextTokenizer(tiny_data / "tokenizer", 16)
    shards = [e.path for e in Manifest.load(tiny_data).shards(2)]
    full = _batches(_plan(shards, num_workers=workers), tok)
    assert len(full) == 6
    again = _batches(_plan(shards, num_workers=workers), tok)
    assert all(torch.equal(a["tokens"], b["tokens"]) for a, b in zip(full, again))
    k = 3
    raw_done = [0] * max(1, workers)
    for b in full[:k]:
        raw_done[b["role"]] = b["raw_done"]
    rest = _batches(_plan(shards, num_workers=workers, start_batch=k, raw_done=raw_done), tok)
    assert len(rest) == 6 - k
    for a, b in zip(full[k:], rest):
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["tokens"], b["tokens"])
    other_rank = _batches(_plan(shards, num_workers=workers, rank=1, world=2), tok)
    assert not torch.equal(other_rank[0]["tokens"], full[0]["tokens"])


def test_corrupt_sample_and_shard_are_skipped_and_counted(tiny_data, tmp_path):
    tok = TextTokenizer(tiny_data / "tokenizer", 16)
    good = Manifest.load(tiny_data).entries[0].path
    samples = []
    with tarfile.open(good) as tar:
        for i, key in enumerate(sorted({n.rsplit(".", 1)[0] for n in tar.getnames()})[:10]):
            jpg = tar.extractfile(f"{key}.jpg").read()
            txt = tar.extractfile(f"{key}.txt").read().decode()
            if i == 2:
                jpg = b"not a jpeg"
            if i == 5:
                txt = "   "
            samples.append({"key": key, "jpg": jpg, "txt": txt, "width": 48, "height": 48})
    bad = tmp_path / "00000.tar"
    write_shard(bad, samples)
    truncated = tmp_path / "00001.tar"
    with tarfile.open(good) as tar:   # cut inside the data of a member half way in (not between members)
        member = tar.getmembers()[len(tar.getmembers()) // 2]
    truncated.write_bytes(good.read_bytes()[: member.offset_data + member.size // 2])
    plan = _plan([bad], micro_batch=8, batches=1, resample=False, shuffle_buffer=1)
    (batch,) = _batches(plan, tok)
    # 10 samples in the first shard, 2 bad (jpeg, empty caption): 8 good make the batch
    assert batch["images"].shape[0] == 8 and batch["bad_samples"] == 2 and batch["raw_done"] == 10
    whole = Manifest.load(tiny_data).entries[0].num_samples
    plan = _plan([truncated], batches=1, resample=False, shuffle_buffer=1, micro_batch=whole)
    (batch,) = _batches(plan, tok)  # the readable head (about half) serves, twice; the cut is counted
    assert batch["images"].shape[0] == whole and batch["bad_shards"] >= 1
    with pytest.raises(RuntimeError, match="no readable sample"):
        _batches(_plan([tmp_path / "empty.tar"], batches=1, resample=False), tok)
