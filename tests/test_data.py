"""Built-in corpus in img2dataset format, manifest, split, tokenizer and the resumable loader."""
import io
import json
import shutil
import tarfile

import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds
from PIL import Image

from growclip_ds.data.loader import EpochPlan, make_loader
from growclip_ds.data.manifest import Manifest, split_shards
from growclip_ds.data.shards import write_shard
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


def test_manifest_growth_and_split(tiny_data, tmp_path):
    m = Manifest.load(tiny_data)
    per = m.num_samples([1])
    assert [m.num_samples(t) for t in range(1, 5)] == [per, 2 * per, 3 * per, 4 * per]
    assert set(m.shards(2)) == set(m.shards([1])) | set(m.shards([2]))
    folder = tmp_path / "i2d"
    folder.mkdir()
    for e in m.entries:
        for suffix in (".tar", ".parquet"):
            shutil.copy(e.path.with_suffix(suffix), folder)
    a, b = split_shards(folder, 4, seed=7), split_shards(folder, 4, seed=7)
    assert [len(a.shards([t])) for t in range(1, 5)] == [len(m.entries) // 4] * 4
    assert [(e.path.name, e.step) for e in a.entries] == [(e.path.name, e.step) for e in b.entries]
    assert a.num_samples(4) == m.num_samples(4)
    assert Manifest.load(folder).num_samples(2) == a.num_samples(2)


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
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2 + 100])
    plan = _plan([bad], micro_batch=8, batches=1, resample=False, shuffle_buffer=1)
    (batch,) = _batches(plan, tok)
    # 10 samples in the first shard, 2 bad (jpeg, empty caption): 8 good make the batch
    assert batch["images"].shape[0] == 8 and batch["bad_samples"] == 2 and batch["raw_done"] == 10
    plan = _plan([truncated], batches=1, resample=False, shuffle_buffer=1, micro_batch=20)
    (batch,) = _batches(plan, tok)  # the readable head (~16 samples) serves, twice; the cut is counted
    assert batch["images"].shape[0] == 20 and batch["bad_shards"] >= 1
    with pytest.raises(RuntimeError, match="no readable sample"):
        _batches(_plan([tmp_path / "empty.tar"], batches=1, resample=False), tok)
