"""Step 1 for real on 2 ranks: DeepSpeed and torchrun launchers, ZeRO-2 (conftest.step1_run, shared with the
growth tests) vs ZeRO-3, stop and resume, kill -9 of rank 0 while saving (steps trained past the last
checkpoint are lost and redone) and while consolidating, consolidation with DeepSpeed's zero_to_fp32,
eval.json, signals."""
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from growclip_ds.model import param_count
from growclip_train.presets import PRESETS
from tests.conftest import REPO, STEP1, PicklePayload, launch, launches, run_bounded, start


def _losses(run):
    rows = [json.loads(line) for line in (run / "step1" / "train" / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows], [r["loss"] for r in rows]


@pytest.fixture(scope="module")
@launches
def runs(step1_run, tiny_data, tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    common = STEP1[:-4] + ["--set", f"data.root={tiny_data}"]       # conftest.STEP1 without its ZeRO stage and monitors
    # the killed run is ZeRO-3: it is also the ZeRO-3 run that ZeRO-2's (step1_run) is compared with
    killed = common + ["--run-dir", str(base / "killed"), "--set", "train.zero_stage=3",
                       "--set", "train.checkpoint_every=2", "--set", "data.num_workers=1"]
    out = {"zero2": step1_run, "killed": base / "killed", "kills": []}
    # the save of step 4 killed: steps 3-4 trained since the last checkpoint are lost and trained again, as after a
    # kill mid-step (one launch fewer than killing in both places; test_chaos.py kills ranks at random moments)
    for fault in ("save@0:4", "consolidate@0"):   # the relaunch resumes, then dies again
        # DeepSpeed's launcher for the first (a killed rank's peer is stopped by it), torchrun for the other
        p = launch(killed, launcher="deepspeed" if fault == "save@0:4" else None, check=False,
                   env={"GROWCLIP_FAULT": fault})
        out["kills"].append((fault, p.returncode, p.stdout + p.stderr))
    # the phase's last checkpoint (what `latest` names) corrupted before its consolidation: the rerun
    # falls back to the previous one, moves the refused one aside, trains those steps again and finishes
    optim = base / "killed" / "step1" / "train" / "checkpoints" / "global_step12" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    with open(optim, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    out["final"] = launch(killed)
    return out


def test_zero2_and_zero3_give_the_same_weights(runs):
    """ZeRO-3 (the killed and resumed run, whose redone steps log again: the last of each) ends where ZeRO-2 does."""
    a = load_file(runs["zero2"] / "step1" / "model.safetensors")
    b = load_file(runs["killed"] / "step1" / "model.safetensors")
    init = PRESETS["tiny"].arch
    assert a.keys() == b.keys() and sum(v.numel() for v in a.values()) == param_count(init)
    moved = max((a[k] - b[k]).abs().max().item() for k in a)
    assert moved <= 1e-5
    steps, losses = _losses(runs["killed"])
    last = dict(zip(steps, losses))
    ref_steps, ref = _losses(runs["zero2"])
    assert sorted(last) == ref_steps and [last[s] for s in ref_steps] == pytest.approx(ref, abs=1e-5)


def test_deepspeed_monitors_record_what_metrics_jsonl_records(runs):
    """train.monitor=tensorboard,csv goes to DeepSpeed's own monitors: its CSV files hold our logged loss (the mean
    over ranks) at every logged step, beside DeepSpeed's per-step events; TensorBoard wrote its event file."""
    import csv

    phase = runs["zero2"] / "step1" / "train"
    steps, losses = _losses(runs["zero2"])
    with open(phase / "csv" / "growclip_loss.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "loss"]
    assert [int(r[0]) for r in rows[1:]] == steps and [float(r[1]) for r in rows[1:]] == pytest.approx(losses, abs=1e-6)
    assert (phase / "csv" / "Train_Samples_lr.csv").exists()        # DeepSpeed's own events, same folder
    assert list((phase / "tb").rglob("events.out.tfevents.*"))


def test_step_artifacts_follow_the_contract(runs):
    step = runs["zero2"] / "step1"
    arch = json.loads((step / "arch.json").read_text())
    assert arch["params"] == param_count(PRESETS["tiny"].arch)
    ev = json.loads((step / "eval.json").read_text())
    from growclip_ds.data import scenes_v2

    classes = {name: len(spec[0]) for name, spec in scenes_v2.eval_tasks(4).items()}   # corpus v2's tasks
    assert {k: v["num_classes"] for k, v in ev["zero_shot"].items()} == classes
    for task in ev["zero_shot"].values():
        assert 0 <= task["top1"] <= task["top5"] <= 1
    for direction in ("image_to_text", "text_to_image"):
        r = ev["retrieval"][direction]
        assert 0 <= r["R@1"] <= r["R@5"] <= r["R@10"] <= 1
    done = json.loads((step / "train" / "done.json").read_text())
    assert done["nonfinite_steps"] == 0 and done["bad_fraction"] == 0.0   # clean data, finite losses
    ckpt = step / "train" / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == "global_step12"
    assert (ckpt / "zero_to_fp32.py").exists()
    # DeepSpeed's own offline tool reads our checkpoint and agrees with the consolidated model
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    sd = get_fp32_state_dict_from_zero_checkpoint(str(ckpt))
    ours = load_file(step / "model.safetensors")
    assert all(torch.equal(sd[k].float(), ours[k]) for k in ours)


def test_kill_9_anywhere_loses_nothing_and_resumes_the_same_run(runs):
    for fault, rc, out in runs["kills"]:
        assert rc != 0 and "fault injection: SIGKILL" in out, fault
    # the save killed at step 4 (its files written, manifest and 'latest' not): the next start resumed step 2
    assert "resuming from" in runs["kills"][1][2] and "global_step2" in runs["kills"][1][2]
    # rank 0 was killed holding the run folder's lock: the next launch took it over (a dead holder never blocks)
    assert "taking over" in runs["kills"][1][2] and "is gone" in runs["kills"][1][2]
    final = runs["final"].stdout + runs["final"].stderr
    assert "refusing checkpoint" in final and "global_step12" in final and "global_step10 instead" in final
    assert "moved the refused checkpoint(s) global_step12" in final
    refused = list((runs["killed"] / "step1" / "train" / "checkpoints" / "refused").glob("global_step12.*"))
    assert len(refused) == 1 and (refused[0] / "zero_pp_rank_0_mp_rank_00_optim_states.pt").exists()   # kept
    # that it ends as the uninterrupted run does: test_zero2_and_zero3_give_the_same_weights
    ckpt = runs["killed"] / "step1" / "train" / "checkpoints"
    from growclip_train.train.checkpoint import verify

    # retention (train.keep_checkpoints=3): the three newest are kept and verify, the older are gone
    assert sorted(int(d.name[11:]) for d in ckpt.glob("global_step*")) == [8, 10, 12]
    assert all(verify(ckpt / f"global_step{s}") is None for s in (8, 10, 12))


def test_corrupt_or_truncated_checkpoint_is_refused_for_the_previous(runs, tmp_path):
    from growclip_train.train.checkpoint import pick_tag

    ckpt = tmp_path / "ckpt"
    shutil.copytree(runs["killed"] / "step1" / "train" / "checkpoints", ckpt)
    said = []
    optim = ckpt / "global_step12" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    with open(optim, "r+b") as f:     # same size, one flipped byte
        f.seek(os.path.getsize(optim) // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert pick_tag(ckpt, log=said.append) == "global_step10"
    assert str(optim) in said[0] and "keyed hash" in said[0] and "global_step10 instead" in said[1]
    model = ckpt / "global_step10" / "zero_pp_rank_0_mp_rank_00_model_states.pt"   # ZeRO-3's name
    os.truncate(model, os.path.getsize(model) // 2)
    said.clear()
    assert pick_tag(ckpt, log=said.append) == "global_step8"
    assert any(str(model) in m and "truncated" in m for m in said)


def test_planted_renamed_or_foreign_key_checkpoints_run_nothing_and_say_what_to_do(runs, tmp_path, monkeypatch, capsys):
    """On real DeepSpeed checkpoints: a pickle dropped into the newest folder (named as DeepSpeed's files,
    which zero_to_fp32 globs) is refused before anything is unpickled; a signed folder copied to a newer
    name is refused (no silent rollback); checkpoints signed with another key are re-signed on request."""
    from growclip_train.cli import main as cli
    from growclip_train.train.checkpoint import CheckpointError, consolidated_state_dict, pick_tag, verify

    ckpt = tmp_path / "ckpt"
    shutil.copytree(runs["killed"] / "step1" / "train" / "checkpoints", ckpt, ignore=shutil.ignore_patterns("refused"))
    marker = tmp_path / "RAN"
    torch.save(PicklePayload(marker), ckpt / "global_step12" / "zz_optim_states.pt")
    why = verify(ckpt / "global_step12")
    assert "does not list (zz_optim_states.pt)" in why and "DeepSpeed would unpickle them" in why
    with pytest.raises(CheckpointError, match="refusing to load"):
        consolidated_state_dict(ckpt, "global_step12")
    said = []
    assert pick_tag(ckpt, log=said.append) == "global_step10" and not marker.exists()
    assert (ckpt / "latest").read_text() == "global_step10" and not (ckpt / "global_step12").exists()
    assert any("refused" in m for m in said)     # the planted folder is kept aside for inspection, not run
    # a signed checkpoint copied to a newer tag
    shutil.copytree(ckpt / "global_step8", ckpt / "global_step14")
    (ckpt / "latest").write_text("global_step14")
    said.clear()
    assert pick_tag(ckpt, log=said.append) == "global_step10"
    assert "was signed for 'global_step8', not 'global_step14'" in said[0]
    # another key (a lost key file, or a node with another HOME): told apart from an edit, and re-signable
    monkeypatch.setenv("GROWCLIP_KEY_FILE", str(tmp_path / "new.key"))
    assert "signed with another checkpoint key" in verify(ckpt / "global_step10")
    torch.save(PicklePayload(marker), ckpt / "global_step8" / "extra_model_states.pt")
    assert cli(["checkpoint", "resign", str(ckpt)]) == 2        # one folder is not as saved: not re-signed
    err = capsys.readouterr().err
    assert "global_step8: not as saved (1 unlisted file(s) ['extra_model_states.pt']" in err and "not re-signed" in err
    assert verify(ckpt / "global_step10") is None and "another checkpoint key" in verify(ckpt / "global_step8")
    assert not marker.exists()
    ref = load_file(runs["killed"] / "step1" / "model.safetensors")
    assert set(consolidated_state_dict(ckpt, "global_step10")) == set(ref)


@pytest.mark.launch
def test_ranks_with_different_configs_stop_naming_the_rank_and_field(tiny_data, tmp_path):
    """Rank 1 reads a stale config (another lr): the job stops before training, on every rank."""
    run = tmp_path / "stale"
    p = launch(["--step", "1", "--config", "tiny", "--set", f"data.root={tiny_data}", "--run-dir", str(run)],
               check=False, env={"GROWCLIP_FAULT": "stale@1"}, timeout=120)
    assert p.returncode != 0
    assert "ranks disagree with rank 0" in p.stderr and "rank 1: config train.lr" in p.stderr
    assert not (run / "step1" / "train" / "metrics.jsonl").exists()


def test_load_reproduces_the_runs_own_evaluation(runs, tiny_data, monkeypatch):
    """growclip_ds.load: model (no throw-away init), transform and the run's tokenizer copy give, in
    one process, the eval.json that 2 ranks wrote during the run."""
    from growclip_ds.config import replace
    from growclip_ds.eval.evaluate import EvalSets, evaluate
    from growclip_ds.model import clip
    import growclip_ds

    step = runs["zero2"] / "step1"
    run_tok = runs["zero2"] / "tokenizer" / "tokenizer.json"
    assert run_tok.read_bytes() == (tiny_data / "tokenizer" / "tokenizer.json").read_bytes()
    monkeypatch.setattr(clip, "init_tensor", lambda *a: pytest.fail("load() paid for an initialisation"))
    model, transform, tok = growclip_ds.load(step)
    assert not model.training and transform.transforms[-1].mean == [0.48145466, 0.4578275, 0.40821073]
    got = evaluate(model, EvalSets(replace(PRESETS["tiny"].data, root=str(tiny_data)), model.arch.image_size), tok)
    want = json.loads((step / "eval.json").read_text())
    for name, task in want["zero_shot"].items():
        assert got["zero_shot"][name]["top1"] == pytest.approx(task["top1"], abs=1e-6)
    for d in ("image_to_text", "text_to_image"):
        assert got["retrieval"][d] == pytest.approx(want["retrieval"][d], abs=1e-6)
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        growclip_ds.load(step, tokenizer=runs["zero2"] / "nothing")


def _rank_pid(run, rank: int) -> int:
    """The process of local rank ``rank`` training in ``run`` (its LOCAL_RANK, whichever launcher started it)."""
    import subprocess

    for pid in subprocess.run(["pgrep", "-f", f"grow.py.*{run}"], capture_output=True, text=True).stdout.split():
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"LOCAL_RANK={rank}".encode() in env and f"{run}" in Path(f"/proc/{pid}/cmdline").read_text():
            return int(pid)
    raise AssertionError(f"no rank {rank} process of {run}")


@pytest.mark.launch
def test_sigterm_and_sigusr1_to_one_rank_checkpoint_exit_3_and_resume_exactly(runs, tiny_data, tmp_path):
    """The real signals, each to one rank of a running 2-rank phase: every rank checkpoints after
    the same step and exits 3 (requeue); a rerun with another learning rate is refused; the resumed
    run's 12 losses and weights are the uninterrupted run's."""
    import signal
    import subprocess
    import time

    from growclip_train.train.preempt import PREEMPTED_EXIT

    run = tmp_path / "signalled"
    args = ["--step", "1", "--config", "tiny", "--set", f"data.root={tiny_data}", "--set", "train.epochs=3",
            "--set", "train.log_every=1", "--run-dir", str(run), "--set", "train.zero_stage=2"]
    metrics = run / "step1" / "train" / "metrics.jsonl"
    for sig, rank in ((signal.SIGTERM, 1), (signal.SIGUSR1, 0)):
        done = len(metrics.read_text().splitlines()) if metrics.exists() else 0
        # the SIGTERM run steps slower: time for a second launch (below) while it trains
        # DeepSpeed's launcher passes the ranks' exit code 3 on, and growclip_train.torchrun too
        proc = start(args, launcher="deepspeed" if sig == signal.SIGTERM else "torchrun",
                     env={"GROWCLIP_FAULT_DELAY": "2" if sig == signal.SIGTERM else "0.5"})
        deadline = time.time() + 120
        while (not metrics.exists() or len(metrics.read_text().splitlines()) < done + 2) and time.time() < deadline:
            time.sleep(0.2)
        if sig == signal.SIGTERM:   # a second launch on the running run folder (a resubmitted job): refused
            second = run_bounded([sys.executable, str(REPO / "launchers" / "grow.py"), *args],
                                 {**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
            assert second.returncode == 2 and "is in use by another launch: host" in second.stderr, second.stderr
            holder = json.loads((run / "LOCK").read_text())       # rank 0's process, named with its host
            assert f"host {holder['host']}, pid {holder['pid']}, since" in second.stderr
        os.kill(_rank_pid(run, rank), sig)
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == PREEMPTED_EXIT, (sig, out[-2000:], err[-3000:])
        assert f"got signal {sig.name}" in out + err
        assert not (run / "step1" / "model.safetensors").exists()   # a stop leaves no final model
    # the same command with another learning rate: refused before anything trains, naming the field
    logged = metrics.read_text()
    p = launch(args + ["--set", "train.lr=0.0123"], ranks=1, check=False)
    assert p.returncode == 2 and "train.lr: 0.002 -> 0.0123" in p.stderr and "--allow-config-change" in p.stderr
    assert metrics.read_text() == logged                          # nothing trained under the new value
    launch(args)
    steps, losses = _losses(run)
    ref_steps, ref = _losses(runs["zero2"])
    assert steps == ref_steps == list(range(1, 13)) and losses == pytest.approx(ref, abs=1e-6)
    assert ref[-1] < ref[0]   # it trained
    a = load_file(runs["zero2"] / "step1" / "model.safetensors")
    b = load_file(run / "step1" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
