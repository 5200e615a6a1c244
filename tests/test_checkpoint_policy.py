"""Checkpoint cadence and retention, the non-finite guard, and the keyed manifests that gate every
unpickling, as pure functions on real folders (the launches that use them: test_reliability.py)."""
import json
import pickle

import pytest
import torch

from growclip_train.train import checkpoint, signing
from growclip_train.train.cadence import Cadence, retain, step_tags
from growclip_train.train.nonfinite import Guard, NonFiniteError, nonfinite_tensors
from tests.conftest import PicklePayload


def test_cadence_by_steps_and_by_wall_time():
    now = [0.0]
    c = Cadence(every_steps=5, every_minutes=2, clock=lambda: now[0])
    assert [s for s in range(1, 11) if c.due(s)] == [5, 10]     # no time passed: steps only
    now[0] = 119.0
    assert not c.due(3)
    now[0] = 120.0
    assert c.due(3)                                              # two minutes since the start
    c.saved()
    now[0] = 200.0
    assert not c.due(4) and c.due(5)
    assert not Cadence(0, 0, clock=lambda: 1e9).due(7)           # both off: only the phase end saves


def test_retention_keeps_the_newest_and_latest(tmp_path):
    for s in (2, 4, 6, 8, 10):
        (tmp_path / f"global_step{s}").mkdir()
    (tmp_path / "global_step4_universal").mkdir()
    (tmp_path / "global_step10.partial").mkdir()   # not a checkpoint name: never touched
    assert retain(tmp_path, keep=2, latest="global_step4") == ["global_step2", "global_step6"]
    assert step_tags(tmp_path) == ["global_step4", "global_step8", "global_step10"]
    assert (tmp_path / "global_step4_universal").exists() and (tmp_path / "global_step10.partial").exists()
    assert retain(tmp_path, keep=0, latest="global_step10") == []


def test_guard_skips_then_aborts_and_names_the_last_good_checkpoint():
    net = torch.nn.Linear(2, 2)
    g = Guard(max_in_row=2, where="runs/x/step1/train", latest=lambda: "global_step4")
    g.after_step(5, False, net, last_step=False)
    g.after_step(6, True, net, last_step=False)
    g.after_step(7, True, net, last_step=False)
    g.after_step(8, False, net, last_step=False)     # a finite step resets the count
    g.after_step(9, True, net, last_step=False)
    g.after_step(10, True, net, last_step=False)
    with pytest.raises(NonFiniteError, match=r"from step 9 to 11: 3 non-finite steps in a row.*global_step4"):
        g.after_step(11, True, net, last_step=False)
    with torch.no_grad():
        net.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="weights are no longer finite"):
        Guard(5, "w").after_step(3, True, net, last_step=False)
    with pytest.raises(NonFiniteError, match="last step of the phase"):
        Guard(5, "w").after_step(3, True, torch.nn.Linear(2, 2), last_step=True)
    assert nonfinite_tensors({"a": torch.ones(2), "b": torch.tensor([1.0, float("inf")]),
                              "n": torch.tensor([3])}) == ["b"]


def _fake_checkpoint(folder, step):
    folder.mkdir(parents=True)
    torch.save({"module": {"w": torch.full((2,), float(step))}}, folder / "mp_rank_00_model_states.pt")
    checkpoint.write_manifest(folder, folder.name, {"global_step": step})


def test_tampered_pickle_is_refused_before_unpickling(tmp_path, monkeypatch):
    monkeypatch.setenv(signing.KEY_FILE_ENV, str(tmp_path / "key"))
    ckpt = tmp_path / "checkpoints"
    for s in (2, 4):
        _fake_checkpoint(ckpt / f"global_step{s}", s)
    (ckpt / "latest").write_text("global_step4")
    assert (tmp_path / "key").stat().st_mode & 0o777 == 0o600
    target = ckpt / "global_step4" / "mp_rank_00_model_states.pt"
    marker = tmp_path / "PWNED"
    target.write_bytes(pickle.dumps(PicklePayload(marker)))
    man = json.loads((ckpt / "global_step4" / checkpoint.MANIFEST).read_text())
    man["files"][target.name]["bytes"] = target.stat().st_size   # what a writer without the key can fix
    (ckpt / "global_step4" / checkpoint.MANIFEST).write_text(json.dumps(man))
    said = []
    assert checkpoint.pick_tag(ckpt, log=said.append) == "global_step2"
    assert "not signed with this machine's checkpoint key" in said[0]      # the edited manifest
    with pytest.raises(checkpoint.CheckpointError, match="refusing to load"):
        checkpoint.consolidated_state_dict(ckpt, "global_step4")
    assert not marker.exists()
    assert checkpoint.consolidated_state_dict(ckpt)["w"].tolist() == [2.0, 2.0]   # the intact one loads
    # a file changed under an untouched manifest: refused by its keyed hash
    other = ckpt / "global_step2" / "mp_rank_00_model_states.pt"
    other.write_bytes(pickle.dumps(PicklePayload(marker)).ljust(other.stat().st_size, b"\0"))
    assert "fails its keyed hash" in checkpoint.verify(ckpt / "global_step2") and not marker.exists()
    # another key (another machine, or a forger): nothing verifies; the message tells a lost or other
    # key (the manifest names its key id) from an edit, and says how to re-sign what the user trusts
    monkeypatch.setenv(signing.KEY_ENV, "someone else's key")
    _fake_checkpoint(tmp_path / "fresh" / "global_step1", 1)
    monkeypatch.setenv(signing.KEY_ENV, "a third key, long enough")
    why = checkpoint.verify(tmp_path / "fresh" / "global_step1")
    assert "signed with another checkpoint key" in why and "growclip-ds checkpoint resign" in why
    man = tmp_path / "fresh" / "global_step1" / checkpoint.MANIFEST
    doc = json.loads(man.read_text())
    del doc["key_id"]                                       # a forger dropping the id: still refused
    man.write_text(json.dumps(doc))
    assert "not signed with this machine's checkpoint key" in checkpoint.verify(tmp_path / "fresh" / "global_step1")
    # a byte of the manifest flipped into one that is not UTF-8 (scripts/chaos.py found every rerun crashing on it):
    # refused like any unreadable manifest, its key id unknown, and the checkpoint before it used
    raw = bytearray((ckpt / "global_step2" / checkpoint.MANIFEST).read_bytes())
    raw[len(raw) // 2] = 0x9E
    (ckpt / "global_step2" / checkpoint.MANIFEST).write_bytes(bytes(raw))
    assert checkpoint.verify(ckpt / "global_step2").endswith("is unreadable")
    assert checkpoint.manifest_key_id(ckpt / "global_step2") is None


def test_skipped_fraction_is_reported_and_warned_above_the_rate(capsys):
    from growclip_train.train.trainer import skipped_fraction

    assert skipped_fraction({"bad": 3, "raw": 400}, 0.01, "step1/train") == pytest.approx(0.0075)
    assert capsys.readouterr().err == ""                     # under the rate: no warning
    assert skipped_fraction({"bad": 12, "raw": 400}, 0.01, "step1/train") == pytest.approx(0.03)
    assert "[growclip_ds] step1/train: 12 of 400 samples read (3.0%) could not be decoded" in capsys.readouterr().err
    assert skipped_fraction({"bad": 0, "raw": 0}, 0.01, "x") == 0.0
