"""Preemption, resume at another world size (universal checkpoints), a full disk during a save, and
ranks that disagree on the data step, each for real through the launcher."""
import json
import os
import shutil
import subprocess
import time

import pytest
from safetensors.torch import load_file

from growclip_train.train import checkpoint
from growclip_train.train.preempt import PREEMPTED_EXIT
from tests.conftest import PicklePayload, launch, launches

BATCH = ["--set", "train.global_batch=48", "--set", "train.micro_batch=8"]  # divides 1, 2 and 3 ranks


def common(data, run):
    return ["--step", "1", "--config", "tiny", "--set", f"data.root={data}", "--set", "train.log_every=1",
            "--run-dir", str(run)] + BATCH


def losses(run):
    rows = [json.loads(x) for x in (run / "step1" / "train" / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


@pytest.fixture(scope="module")
@launches
def resized(tiny_data, tmp_path_factory):
    """One run folder through three world sizes (issue experiment 3 included): preempted on 2 ranks after one
    step; resumed on 3 ranks, where rank 0 dies inside the save of step 4 (rank 2's optimizer file written);
    resumed on 1 rank, which must not save step 4 into that half-written folder, and finishes. Each resume
    converts the last checkpoint for its world size (universal checkpoints); ``snapshots`` keeps the checkpoint
    folder as each launch left it (retention deletes the early checkpoints later)."""
    base = tmp_path_factory.mktemp("resize")
    run = base / "run"
    run.mkdir()
    args = common(tiny_data, run) + ["--set", "train.checkpoint_every=2", "--set", "train.num_samples=288",
                                     "--set", "train.keep_checkpoints=3"]
    ckpt = run / "step1" / "train" / "checkpoints"
    out = {"src": run, "ckpt": ckpt, "launches": {}, "snapshots": {}}

    def snapshot(ranks):
        out["snapshots"][ranks] = shutil.copytree(ckpt, base / f"after{ranks}" / "checkpoints")

    stop = run / "STOP"   # what the SLURM batch script writes when preemption is announced: dated after the
    stop.write_text("")   # launch began, as the batch script's trap writes it (an older STOP is ignored)
    os.utime(stop, (time.time() + 600, time.time() + 600))
    out["launches"][2] = launch(args, ranks=2, check=False)   # torchrun (DeepSpeed's launcher: test_training)
    out["evaluated_when_preempted"] = (run / "step1" / "eval.json").exists()
    snapshot(2)
    stop.unlink()
    out["launches"][3] = launch(args, ranks=3, check=False, env={"GROWCLIP_FAULT": "save@0:4"})
    snapshot(3)
    (run / "STOP").write_text("")   # a STOP left by a killed job: older than the launch, ignored with a warning
    os.utime(run / "STOP", (time.time() - 3600, time.time() - 3600))
    out["launches"][1] = launch(args, ranks=1)
    out["snapshots"][1] = ckpt   # the last launch: nothing changes the folder after it
    return out


def test_preemption_checkpoints_and_exits_for_requeue(resized):
    p = resized["launches"][2]
    assert p.returncode == PREEMPTED_EXIT, p.stdout[-2000:] + p.stderr[-2000:]
    ckpt = resized["snapshots"][2]
    assert checkpoint.latest_tag(ckpt) == "global_step1" and checkpoint.verify(ckpt / "global_step1") is None
    assert [d.name for d in ckpt.glob("global_step*")] == ["global_step1"]
    assert not resized["evaluated_when_preempted"]


@pytest.mark.parametrize("ranks,tag", [(3, "global_step1"), (1, "global_step2")])
def test_resume_at_another_world_size_restores_weights_and_moments(resized, ranks, tag):
    out = resized["launches"][ranks].stdout + resized["launches"][ranks].stderr
    assert "converting" in out and f"at world size {ranks}" in out and f"resuming from {resized['ckpt'] / tag}" in out
    if ranks == 1:   # the stale STOP did not stop it (it trained to the end, below), and the user was told
        assert f"ignoring {resized['src'] / 'STOP'}: it is older than this launch" in out
    # the engine's check (weights exact, moments' summed squares) ran and passed; independently, the
    # universal conversion holds exactly the weights that zero_to_fp32 reads from the checkpoint it converted
    ckpt = resized["snapshots"][ranks]
    saved = checkpoint.consolidated_state_dict(ckpt, tag)
    import torch

    for name, w in saved.items():
        conv = torch.load(ckpt / f"{tag}_universal" / "zero" / name / "fp32.pt", weights_only=True)["param"]
        assert torch.equal(conv.float(), w)
    assert checkpoint.read_meta(ckpt / tag)["world_size"] == {3: 2, 1: 3}[ranks]   # written by the launch before
    meta = checkpoint.read_meta(ckpt / checkpoint.latest_tag(ckpt))
    assert meta["world_size"] == ranks


def test_crash_mid_save_then_resume_at_fewer_ranks_finishes(resized):
    """Issue experiment 3: the rerun at fewer ranks used to save step 4 into the half-written folder of the
    3-rank launch and fail to consolidate."""
    crashed, ckpt, run = resized["launches"][3], resized["ckpt"], resized["src"]
    assert crashed.returncode != 0 and "fault injection: SIGKILL" in crashed.stdout + crashed.stderr
    assert len(list((resized["snapshots"][3] / "global_step4").glob("*optim_states.pt"))) == 3
    assert checkpoint.latest_tag(resized["snapshots"][3]) == "global_step2"
    p = resized["launches"][1]
    assert f"removing {ckpt / 'global_step4'}" in p.stdout + p.stderr
    assert (run / "step1" / "eval.json").exists()
    kept = sorted(d.name for d in ckpt.glob("global_step?"))
    assert kept == ["global_step2", "global_step4", "global_step6"]   # train.keep_checkpoints=3
    assert len(list((ckpt / "global_step4").glob("*optim_states.pt"))) == 1
    seen = losses(run)                    # redone steps log again: each step once in the dict
    assert sorted(seen) == list(range(1, 7))


def test_a_tampered_universal_conversion_is_converted_again_never_loaded(resized, tmp_path):
    """``<tag>_universal/`` is signed when written and verified before DeepSpeed reads it: a file swapped
    or added there is never unpickled; the conversion is redone from the verified checkpoint."""
    import torch

    ckpt = tmp_path / "ckpt"
    shutil.copytree(resized["snapshots"][3], ckpt)
    uni = ckpt / "global_step1_universal"
    assert checkpoint.verify(uni) is None and checkpoint.read_meta(uni) == {"universal_of": "global_step1"}
    marker = tmp_path / "RAN"
    victim = next(uni.glob("zero/*/fp32.pt"))
    torch.save(PicklePayload(marker), victim)
    assert "keyed hash" in checkpoint.verify(uni) or "bytes" in checkpoint.verify(uni)
    assert checkpoint.universal_conversion(ckpt, "global_step1") == "global_step1_universal"
    assert not marker.exists() and checkpoint.verify(uni) is None
    saved = checkpoint.consolidated_state_dict(ckpt, "global_step1")
    name = victim.parent.name
    assert torch.equal(torch.load(victim, weights_only=True)["param"].float(), saved[name])


@pytest.mark.launch
def test_ranks_disagreeing_on_the_data_step_abort(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("GROWCLIP_FAULT", "datastep@1")
    p = launch(common(tiny_data, tmp_path / "run") + ["--stop-after-iterations", "1"], ranks=2, check=False)
    assert p.returncode != 0
    assert "ranks hold different optimizer steps" in p.stdout + p.stderr
    assert "(rank 0: 1, rank 1: 2)" in p.stdout + p.stderr


@pytest.mark.launch
def test_full_disk_during_a_save_keeps_the_previous_checkpoint(tiny_data, tmp_path):
    """A real 12 MiB tmpfs filled up, where this machine lets the test mount one (root, as here and in CI);
    elsewhere the same ENOSPC raised inside DeepSpeed's checkpoint writes (GROWCLIP_FAULT=nospace), not a skip."""
    mnt = tmp_path / "small_disk"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mnt)],
                             capture_output=True).returncode == 0
    try:
        run = mnt / "run"
        args = common(tiny_data, run) + ["--set", "train.checkpoint_every=1", "--set", "train.epochs=4"]
        launch(args + ["--stop-after-iterations", "2"], ranks=1)
        ckpt = run / "step1" / "train" / "checkpoints"
        before = checkpoint.consolidated_state_dict(ckpt)
        if mounted:
            with open(mnt / "filler", "wb") as f:  # leave 64 KiB: enough for logs, not for a checkpoint
                free = shutil.disk_usage(mnt).free - 64 * 1024
                f.write(b"\0" * max(0, free))
        p = launch(args, ranks=1, check=False, env=None if mounted else {"GROWCLIP_FAULT": "nospace@0:3"})
        out = p.stdout + p.stderr
        assert p.returncode != 0
        assert "saving checkpoint" in out and "The previous checkpoint global_step2 is intact" in out
        assert checkpoint.latest_tag(ckpt) == "global_step2" and not (ckpt / "global_step3").exists()
        assert checkpoint.verify(ckpt / "global_step2") is None
        after = checkpoint.consolidated_state_dict(ckpt)
        assert all(after[k].equal(before[k]) for k in before)
        if mounted:
            (mnt / "filler").unlink()
        launch(args, ranks=1)  # space freed: the same command resumes and finishes
        assert (run / "step1" / "eval.json").exists() and load_file(run / "step1" / "model.safetensors")
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.launch
def test_diverged_run_exits_4_keeps_the_last_finite_checkpoint(tiny_data, tmp_path):
    """Issue experiment 1: weight decay 1e30 makes the loss NaN after step 1."""
    run = tmp_path / "run"
    p = launch(common(tiny_data, run) + ["--set", "train.weight_decay=1e30", "--set", "train.checkpoint_every=1",
                                         "--set", "train.epochs=3", "--set", "train.max_nonfinite=2"],
               ranks=2, check=False, launcher="deepspeed")   # it passes the ranks' exit code 4 on
    out = p.stdout + p.stderr
    assert p.returncode == 4, out[-3000:]
    assert "diverged" in out and "latest` is global_step1" in out
    ckpt = run / "step1" / "train" / "checkpoints"
    assert checkpoint.latest_tag(ckpt) == "global_step1" and [d.name for d in ckpt.glob("global_step*")] == ["global_step1"]
    meta = checkpoint.read_meta(ckpt / "global_step1")
    assert meta["global_step"] == 1
    assert not (run / "step1" / "model.safetensors").exists() and not (run / "step1" / "eval.json").exists()
    rows = [json.loads(x) for x in (run / "step1" / "train" / "metrics.jsonl").read_text().splitlines()]
    import math

    assert math.isfinite(rows[0]["loss"]) and not any(math.isfinite(r["loss"]) for r in rows[1:])


def _junk_copy(tiny_data, dst):
    """The tiny corpus with every training image replaced by bytes no decoder reads."""
    import io
    import tarfile

    shutil.copytree(tiny_data, dst)
    for tar_path in (dst / "shards").glob("*.tar"):
        with tarfile.open(tar_path) as src:
            members = [(m, src.extractfile(m).read()) for m in src.getmembers()]
        with tarfile.open(tar_path, "w") as out:
            for m, data in members:
                if m.name.endswith(".jpg"):
                    data = b"not an image " * 20
                    m.size = len(data)
                out.addfile(m, io.BytesIO(data))
    return dst


@pytest.mark.launch
def test_undecodable_corpus_stops_with_the_shard_and_the_error(tiny_data, tmp_path):
    """Issue experiment 2: it used to hang forever."""
    data = _junk_copy(tiny_data, tmp_path / "junk")
    p = launch(["--step", "1", "--config", "tiny", "--set", f"data.root={data}", "--run-dir", str(tmp_path / "run"),
                "--set", "data.max_bad_in_row=200"], ranks=2, check=False, timeout=180)
    out = p.stdout + p.stderr
    assert p.returncode != 0
    assert "200 undecodable samples in a row" in out and "UnidentifiedImageError" in out
    assert "/shards/0000" in out and ".tar" in out


@pytest.mark.launch
def test_disk_full_on_one_rank_of_two_then_a_tampered_pickle(tiny_data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    args = common(tiny_data, run) + ["--set", "train.checkpoint_every=2", "--set", "train.epochs=4"]
    monkeypatch.setenv("GROWCLIP_FAULT", "nospace@1:4")
    p = launch(args, ranks=2, check=False)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and "No space left on device (injected)" in out
    assert out.count("The previous checkpoint global_step2 is intact") == 2        # both ranks agreed
    ckpt = run / "step1" / "train" / "checkpoints"
    assert checkpoint.latest_tag(ckpt) == "global_step2" and not (ckpt / "global_step4").exists()
    monkeypatch.delenv("GROWCLIP_FAULT")
    # someone who can write the run folder swaps in a pickle that runs code when loaded
    victim = next((ckpt / "global_step2").glob("*optim_states.pt"))
    original, marker = victim.read_bytes(), tmp_path / "PWNED"
    victim.write_bytes(f"cos\nsystem\n(S'touch {marker}'\ntR.".encode().ljust(len(original), b" "))
    with pytest.raises(checkpoint.CheckpointError, match="refusing to load"):
        checkpoint.consolidated_state_dict(ckpt, "global_step2")
    assert not marker.exists()
    said = []   # what resume runs on rank 0 before any DeepSpeed load (the launch path of this check)
    assert checkpoint.pick_tag(ckpt, log=said.append) is None   # the only checkpoint is damaged: the phase restarts
    assert "fails its keyed hash" in said[0] and "restarts from its initial weights" in said[-1]
    moved = list((ckpt / checkpoint.REFUSED).glob("global_step2.*"))
    assert len(moved) == 1 and next(moved[0].glob(victim.name)).read_bytes()[:3] == b"cos"   # kept, never loaded
    assert not marker.exists() and checkpoint.latest_tag(ckpt) is None
    launch(args, ranks=2)   # the same command: the phase trains again from its start and finishes
    assert (run / "step1" / "eval.json").exists() and not marker.exists()
