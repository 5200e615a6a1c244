"""Preemption, resume at another world size (universal checkpoints), a full disk during a save, and
ranks that disagree on the data step, each for real through the launcher."""
import json
import shutil
import subprocess

import pytest
from safetensors.torch import load_file

from growclip_ds.train import checkpoint
from growclip_ds.train.preempt import PREEMPTED_EXIT
from tests.conftest import launch

BATCH = ["--set", "train.global_batch=48", "--set", "train.micro_batch=8"]  # divides 1, 2 and 3 ranks


def common(data, run):
    return ["--step", "1", "--config", "tiny", "--set", f"data.root={data}", "--set", "train.log_every=1",
            "--run-dir", str(run)] + BATCH


def losses(run):
    rows = [json.loads(x) for x in (run / "step1" / "train" / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


@pytest.fixture(scope="module")
def resized(tiny_data, tmp_path_factory):
    """Preempted on 2 ranks after one step, then resumed on 3 ranks and (a copy) on 1 rank."""
    base = tmp_path_factory.mktemp("resize")
    run = base / "two"
    run.mkdir()
    (run / "STOP").write_text("")  # what the SLURM batch script writes when preemption is announced
    first = launch(common(tiny_data, run), ranks=2, check=False)
    (run / "STOP").unlink()
    out = {"first": first, "runs": {}}
    for ranks in (3, 1):
        dst = base / f"to{ranks}"
        shutil.copytree(run, dst)
        out["runs"][ranks] = (dst, launch(common(tiny_data, dst), ranks=ranks))
    out["src"] = run
    return out


def test_preemption_checkpoints_and_exits_for_requeue(resized):
    p = resized["first"]
    assert p.returncode == PREEMPTED_EXIT, p.stdout[-2000:] + p.stderr[-2000:]
    ckpt = resized["src"] / "step1" / "train" / "checkpoints"
    assert checkpoint.latest_tag(ckpt) == "global_step1" and checkpoint.verify(ckpt / "global_step1") is None
    assert not (resized["src"] / "step1" / "eval.json").exists()


@pytest.mark.parametrize("ranks", [3, 1])
def test_resume_at_another_world_size_restores_weights_and_moments(resized, ranks):
    run, p = resized["runs"][ranks]
    out = p.stdout + p.stderr
    assert "converting" in out and f"at world size {ranks}" in out
    # the engine's check (weights exact, moments' summed squares) ran and passed; independently, the
    # universal conversion holds exactly the weights that zero_to_fp32 reads from the 2-rank checkpoint
    ckpt = run / "step1" / "train" / "checkpoints"
    saved = checkpoint.consolidated_state_dict(ckpt, "global_step1")
    import torch

    for name, w in saved.items():
        conv = torch.load(ckpt / "global_step1_universal" / "zero" / name / "fp32.pt", weights_only=True)["param"]
        assert torch.equal(conv.float(), w)
    seen = losses(run)
    assert sorted(seen) == list(range(1, max(seen) + 1)) and (run / "step1" / "eval.json").exists()
    meta = checkpoint.read_meta(ckpt / checkpoint.latest_tag(ckpt))
    assert meta["world_size"] == ranks


def test_ranks_disagreeing_on_the_data_step_abort(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("GROWCLIP_FAULT", "datastep@1")
    p = launch(common(tiny_data, tmp_path / "run") + ["--stop-after-steps", "1"], ranks=2, check=False)
    assert p.returncode != 0
    assert "ranks hold different optimizer steps" in p.stdout + p.stderr
    assert "(rank 0: 1, rank 1: 2)" in p.stdout + p.stderr


def test_full_disk_during_a_save_keeps_the_previous_checkpoint(tiny_data, tmp_path):
    mnt = tmp_path / "small_disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mnt)], check=True)
    try:
        run = mnt / "run"
        args = common(tiny_data, run) + ["--set", "train.checkpoint_every=1", "--set", "train.epochs=4"]
        launch(args + ["--stop-after-steps", "2"], ranks=1)
        ckpt = run / "step1" / "train" / "checkpoints"
        before = checkpoint.consolidated_state_dict(ckpt)
        with open(mnt / "filler", "wb") as f:  # leave 64 KiB: enough for logs, not for a checkpoint
            free = shutil.disk_usage(mnt).free - 64 * 1024
            f.write(b"\0" * max(0, free))
        p = launch(args, ranks=1, check=False)
        out = p.stdout + p.stderr
        assert p.returncode != 0
        assert "saving checkpoint" in out and "The previous checkpoint global_step2 is intact" in out
        assert checkpoint.latest_tag(ckpt) == "global_step2" and not (ckpt / "global_step3").exists()
        assert checkpoint.verify(ckpt / "global_step2") is None
        after = checkpoint.consolidated_state_dict(ckpt)
        assert all(after[k].equal(before[k]) for k in before)
        (mnt / "filler").unlink()
        launch(args, ranks=1)  # space freed: the same command resumes and finishes
        assert (run / "step1" / "eval.json").exists() and load_file(run / "step1" / "model.safetensors")
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
