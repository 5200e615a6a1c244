"""Reliability round 3 without a launch: what a resume checks (config, data, tokenizer, key, phase),
the run-folder lock, shard paths opened as files only, validation, atomic tokenizer training.
Real files, real processes (the lock's holder), the real launcher's ``check``; no process group."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import webdataset as wds

from growclip_ds.config import ConfigError
from growclip_train.presets import load_config
from growclip_train import launch as launcher
from growclip_train import provenance
from growclip_train.rundir import RunDir
from growclip_train.runlock import RunLock, RunLocked
from growclip_train.train import signing


def _args(data, run, *more):
    return launcher.parse_args(["--step", "1", "--config", "tiny", "--set", f"data.root={data}", "--run-dir", str(run),
                                *more])


def _check(args):
    lock = launcher._Lock()
    try:
        return launcher.check(args, lock)
    finally:
        lock.release()


@pytest.fixture
def data(tiny_data, tmp_path):
    """A private copy of the tiny corpus (these tests change it)."""
    return shutil.copytree(tiny_data, tmp_path / "data")


def test_a_resume_with_another_training_field_is_refused_naming_it(data, tmp_path):
    run = tmp_path / "run"
    _check(_args(data, run))                       # first launch: records config.json and data.json
    recorded = json.loads((run / "step1" / "config.json").read_text())
    assert recorded["train"]["lr"] == load_config("tiny").train.lr
    fp = json.loads((run / "step1" / "data.json").read_text())
    assert fp["num_samples"] > 0 and fp["tokenizer"] == provenance.tokenizer_hash(run / "tokenizer")
    lr = recorded["train"]["lr"]
    with pytest.raises(ConfigError, match=rf"train\.lr: {lr} -> {lr * 3}.*--allow-config-change"):
        _check(_args(data, run, "--set", f"train.lr={lr * 3}"))
    # operational fields change freely; the recorded config is unchanged by the refusal
    _check(_args(data, run, "--set", "train.log_every=1", "--set", "data.num_workers=0"))
    assert json.loads((run / "step1" / "config.json").read_text())["train"]["lr"] == recorded["train"]["lr"]
    # allowed: recorded as a change, and GAS scores computed under old values are set aside
    (run / "step1" / "gas.jsonl").write_text('{"index": 0}\n')
    alpha = recorded["growth"]["alpha"] * 2 + 0.25
    _check(_args(data, run, "--set", f"growth.alpha={alpha}", "--allow-config-change"))
    change = json.loads((run / "step1" / "config_changes.jsonl").read_text().splitlines()[-1])
    assert change["changes"]["growth.alpha"][1] == alpha and not (run / "step1" / "gas.jsonl").exists()
    assert list((run / "step1").glob("gas.jsonl.*.old"))
    assert json.loads((run / "step1" / "config.json").read_text())["growth"]["alpha"] == alpha


def test_a_finished_phase_is_not_rerun_by_phase(data, tmp_path):
    run = tmp_path / "run"
    _check(_args(data, run))
    step = RunDir(run).step(1)
    step.phase("train").path.mkdir(parents=True)
    step.phase("train").done_file.write_text("{}")
    step.eval_file.write_text("{}")
    with pytest.raises(ConfigError, match="--phase train: step 1's train phase is finished"):
        _check(_args(data, run, "--phase", "train"))
    assert _check(_args(data, run)).todo == []       # without --phase: complete, nothing to do


def test_changed_data_or_tokenizer_refuse_the_resume_and_a_lost_tokenizer_is_not_recopied(data, tmp_path):
    from growclip_ds.data.manifest import Manifest, ShardEntry

    run = tmp_path / "run"
    _check(_args(data, run))
    m = Manifest.load(data)   # data split --force with another seed: other held-out keys
    e = m.entries[0]
    m.entries[0] = ShardEntry(e.path, e.step, e.num_samples - 1, tuple(e.holdout) + ("some-trained-key",))
    saved = (data / "manifest.parquet").read_bytes()
    m.save()
    with pytest.raises(ConfigError, match="data of step 1 changed.*num_samples, holdout.*held-out"):
        _check(_args(data, run))
    (data / "manifest.parquet").write_bytes(saved)
    _check(_args(data, run))   # restored: resumes
    tok = run / "tokenizer" / "tokenizer.json"
    tok.write_text(tok.read_text().replace('"<unk>"', '"<UNK>"', 1))
    with pytest.raises(ConfigError, match="tokenizer differ"):
        _check(_args(data, run))
    shutil.rmtree(run / "tokenizer")
    with pytest.raises(FileNotFoundError, match="tokenizer is missing, but .* has trained steps"):
        _check(_args(data, run))
    assert not (run / "tokenizer").exists()


def test_validation_of_eps_epochs_and_stop_after(data, tmp_path):
    for bad, field in (("train.eps=nan", "train.eps"), ("train.eps=-1e-8", "train.eps"),
                       ("train.epochs=inf", "train.epochs"), ("train.lr=inf", "train.lr")):
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            load_config("tiny", [bad])
    if importlib.util.find_spec("wandb") is None:   # not a dependency: asking for it says what to install
        with pytest.raises(ConfigError, match="train.monitor: wandb needs the wandb package"):
            load_config("tiny", ["train.monitor=csv,wandb"])
    assert load_config("tiny", ["train.monitor=csv, tensorboard"]).train.monitors == ["csv", "tensorboard"]
    with pytest.raises(ConfigError, match="--stop-after-iterations: must be >= 0"):
        _check(_args(data, tmp_path / "run", "--stop-after-iterations", "-1"))
    with pytest.raises(ConfigError, match="--stop-after-iterations: must be >= 0"):   # the old name still works
        _check(_args(data, tmp_path / "run", "--stop-after-steps", "-1"))
    assert not (tmp_path / "run" / "method.json").exists()   # refused before anything was written


def test_the_checkpoint_key_is_checked_before_training(tmp_path, monkeypatch):
    monkeypatch.delenv(signing.KEY_ENV, raising=False)
    monkeypatch.setenv(signing.KEY_FILE_ENV, str(tmp_path / "keys" / "k"))
    assert signing.check_key(set()) == signing.key_id(signing.key())           # made at start, not at first save
    assert (tmp_path / "keys" / "k").stat().st_mode & 0o777 == 0o600
    kid = signing.key_id(signing.key())
    with pytest.raises(signing.CheckpointKeyError, match="signed with key id.*resign"):
        signing.check_key({"0123456789abcdef"})
    assert signing.check_key({kid}) == kid
    (tmp_path / "keys" / "k").unlink()            # the key is lost (or rank 0 sees another HOME)
    with pytest.raises(signing.CheckpointKeyError, match=f"no checkpoint key at .*{kid}.*restore that key file"):
        signing.check_key({kid})
    assert not (tmp_path / "keys" / "k").exists()  # no silent new key
    (tmp_path / "file").write_text("")
    monkeypatch.setenv(signing.KEY_FILE_ENV, str(tmp_path / "file" / "k"))   # unwritable: under a file
    with pytest.raises(signing.CheckpointKeyError, match="cannot create or read the checkpoint key"):
        signing.check_key(set())
    monkeypatch.setenv(signing.KEY_ENV, "short")
    with pytest.raises(signing.CheckpointKeyError, match="5 bytes; a checkpoint key needs at least 16"):
        signing.check_key(set())


def test_shard_paths_are_opened_as_files_never_as_commands(data, tmp_path):
    from growclip_ds.data.shards import tar_samples

    marker = tmp_path / "RAN"
    evil = f"pipe:touch {marker}"
    with pytest.raises(FileNotFoundError):
        list(tar_samples([evil], wds.reraise_exception))
    assert not marker.exists()
    shard = sorted(data.glob("**/*.tar"))[0]
    keys = [s["__key__"] for s in tar_samples([str(shard)], wds.reraise_exception)]
    with __import__("tarfile").open(shard) as tf:   # the same samples a plain tarfile read finds
        want = sorted({m.name.rsplit(".", 1)[0].split("/")[-1] for m in tf.getmembers() if m.isfile()})
    assert sorted(k.split("/")[-1] for k in keys) == want


def test_tokenizer_training_is_atomic(tmp_path, monkeypatch):
    """A crash inside the BPE training (a full disk) leaves no tokenizer folder that a later split keeps."""
    from growclip_ds.data import split

    def dies(caps, out, vocab):
        out.mkdir(parents=True)
        (out / "tokenizer.json").write_text("{")   # half written
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(split, "train_bpe", dies)
    root = tmp_path / "corpus"
    _img2dataset_folder(root)
    with pytest.raises(OSError, match="No space"):
        split.split_corpus(root, num_steps=2, holdout=4, vocab_size=64, progress=lambda *_: None)
    assert not (root / "tokenizer").exists()


def _img2dataset_folder(root):
    """Two tiny img2dataset shards (jpg + txt + json per sample, a parquet each)."""
    import io
    import tarfile

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    root.mkdir(parents=True)
    for s in range(2):
        rows = []
        with tarfile.open(root / f"{s:05d}.tar", "w") as tf:
            for i in range(20):
                key = f"{s:05d}{i:04d}"
                buf = io.BytesIO()
                Image.new("RGB", (8, 8), (i * 10, 0, 0)).save(buf, format="JPEG")
                for ext, data in (("jpg", buf.getvalue()), ("txt", f"a red thing {i}".encode()),
                                  ("json", json.dumps({"key": key}).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
                rows.append({"key": key, "caption": f"a red thing {i}", "status": "success"})
        pq.write_table(pa.Table.from_pylist(rows), root / f"{s:05d}.parquet")


_HOLD = """
import sys, time
sys.path.insert(0, {repo!r})
from growclip_train.runlock import RunLock
RunLock({run!r}).acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_one_launch_per_run_folder_and_a_dead_holder_never_blocks(tmp_path):
    from tests.conftest import REPO

    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD.format(repo=str(REPO), run=str(run))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rec = json.loads((run / "LOCK").read_text())
        assert rec["pid"] == holder.pid
        with pytest.raises(RunLocked, match=f"in use by another launch: host {rec['host']}, pid {holder.pid}, since"):
            RunLock(run).acquire()
    finally:
        holder.kill()
        holder.wait()
    said = []
    mine = RunLock(run)
    mine.acquire(log=said.append)              # its holder died without releasing: taken over, said so
    assert f"its process {holder.pid} is gone" in said[0]
    assert json.loads((run / "LOCK").read_text())["pid"] == os.getpid()
    mine.acquire(log=said.append)              # the same process again (the next phase after exec): fine
    mine.release()
    assert not (run / "LOCK").exists()
    # a holder on another host: live while it beats, taken over when its heartbeat is older than STALE_S
    (run / "LOCK").write_text(json.dumps({"host": "node-b", "pid": 1, "start": "1", "since": "then"}))
    with pytest.raises(RunLocked, match="host node-b"):
        RunLock(run).acquire()
    old = time.time() - 400
    os.utime(run / "LOCK", (old, old))
    RunLock(run).acquire(log=said.append)
    assert "no heartbeat for" in said[-1]


def test_config_changes_name_training_fields_only():
    cfg = load_config("tiny")
    assert provenance.config_changes(cfg.to_dict(), cfg.to_dict()) == {}
    other = load_config("tiny", ["train.lr=0.5", "train.log_every=3", "train.zero_stage=3"])
    assert provenance.config_changes(cfg.to_dict(), other.to_dict()) == {"train.lr": (cfg.train.lr, 0.5)}


def test_atomic_path_replaces_whole_or_not_at_all(tmp_path):
    from growclip_ds.fileio import atomic_path, atomic_write_text

    f = tmp_path / "a" / "model.bin"
    atomic_write_text(f, "old")
    with pytest.raises(OSError):
        with atomic_path(f) as tmp:
            tmp.write_text("half")
            raise OSError(28, "No space left on device")
    assert f.read_text() == "old" and sorted(p.name for p in f.parent.iterdir()) == ["model.bin"]
    with atomic_path(f) as tmp:
        tmp.write_text("new")
    assert f.read_text() == "new" and sorted(p.name for p in f.parent.iterdir()) == ["model.bin"]
    folder = tmp_path / "export"
    folder.mkdir()                      # an empty folder is replaced by a whole one
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        (tmp / "x").write_text("1")
    assert (folder / "x").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["a", "export"]
