"""Nodelist expansion on real SLURM syntax, hostfiles, ports, the sbatch command and scripts."""
import subprocess

import pytest

from growclip_train import slurm
from tests.conftest import REPO


@pytest.mark.parametrize("nodelist,hosts", [
    ("node001", ["node001"]),
    ("node[001-003]", ["node001", "node002", "node003"]),
    ("gpu[8-11],login", ["gpu8", "gpu9", "gpu10", "gpu11", "login"]),
    ("a[01-02,07],b-3", ["a01", "a02", "a07", "b-3"]),
    ("rack[1-2]-n[09-10]", ["rack1-n09", "rack1-n10", "rack2-n09", "rack2-n10"]),
    ("127.0.0.[1-2]", ["127.0.0.1", "127.0.0.2"]),
    ("dgx-h100-[0098-0100]", ["dgx-h100-0098", "dgx-h100-0099", "dgx-h100-0100"]),
])
def test_expand_nodelist(nodelist, hosts):
    assert slurm.expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("bad", ["node[1-2", "node1-2]", "node[3-1]", "node[a-b]"])
def test_bad_nodelist_is_an_error_naming_it(bad):
    with pytest.raises(ValueError, match="nodelist"):
        slurm.expand_nodelist(bad)


def test_hostfile_round_trip_and_errors_name_the_line():
    text = slurm.hostfile_text(["n1", "n2"], 8)
    assert text == "n1 slots=8\nn2 slots=8\n"
    assert slurm.parse_hostfile(text + "# comment\n") == {"n1": 8, "n2": 8}
    with pytest.raises(ValueError, match=r"hosts:2: expected"):
        slurm.parse_hostfile("n1 slots=8\nn2 slot=8\n", "hosts")
    with pytest.raises(ValueError, match=r"hosts:2: host 'n1' listed twice"):
        slurm.parse_hostfile("n1 slots=8\nn1 slots=8\n", "hosts")


def test_env_file_from_an_allocation_quotes_every_value(tmp_path):
    hostdir = tmp_path / "hosts $(touch PWNED) `touch PWNED2`"
    hostdir.mkdir()
    environ = {"SLURM_JOB_NODELIST": "gpu[3-4]", "SLURM_JOB_ID": "123456", "SLURM_GPUS_ON_NODE": "4",
               "GROWCLIP_HOSTFILE_DIR": str(hostdir)}
    env = slurm.allocation_env(environ)
    assert env["MASTER_ADDR"] == "gpu3" and env["MASTER_PORT"] == str(20000 + 123456 % 20000)
    assert env["GROWCLIP_NNODES"] == "2" and env["GROWCLIP_GPUS_PER_NODE"] == "4"
    assert (hostdir / "hostfile.123456").read_text() == "gpu3 slots=4\ngpu4 slots=4\n"
    slurm.write_env_file(tmp_path / "env", env)
    out = subprocess.run(["bash", "-c", 'source ./env && printf %s "$GROWCLIP_HOSTFILE"'], cwd=tmp_path,
                         capture_output=True, text=True, check=True).stdout
    assert out == str(hostdir / "hostfile.123456")
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "PWNED2").exists()


def test_run_folder_comes_from_the_launchers_own_parser(tiny_data):
    base = ["--config", "tiny", "--set", f"data.root={tiny_data}"]
    assert slurm.run_env(base + ["--run-dir=runs/eq"])["GROWCLIP_RUN_DIR"] == "runs/eq"
    assert slurm.run_env(base + ["--run-dir", "runs/sp", "--step", "2"])["GROWCLIP_RUN_DIR"] == "runs/sp"
    env = slurm.run_env(base)
    assert env == {"GROWCLIP_RUN_DIR": "runs/tiny", "GROWCLIP_NUM_STEPS": "4"}


@pytest.mark.launch
def test_batch_script_preemption_reaches_the_ranks_and_requeues(tmp_path, tiny_data):
    """grow_step.sbatch under fake srun/scontrol on PATH: SLURM's USR1 to the batch shell writes STOP
    into the run folder given as --run-dir=X (the fake job step waits for it there, as the ranks do,
    and exits 3), then the script requeues the job; an injected $(...) in a path never runs."""
    import os
    import signal
    import sys
    import time

    fake = tmp_path / "bin"
    fake.mkdir()
    log = tmp_path / "log"
    log.mkdir()
    run = tmp_path / "run"
    (fake / "srun").write_text('#!/bin/bash\necho "$*" > "$FAKE_LOG/srun"\n'
                               'for i in $(seq 1 600); do [ -e "$EXPECT_STOP" ] && exit 3; sleep 0.1; done\nexit 9\n')
    (fake / "scontrol").write_text('#!/bin/bash\necho "$*" >> "$FAKE_LOG/scontrol"\n')
    for f in fake.iterdir():
        f.chmod(0o755)
    hostdir = tmp_path / "h$(touch PWNED)"
    hostdir.mkdir()
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "localhost",
           "SLURM_JOB_ID": "4242", "GROWCLIP_HOME": str(REPO), "GROWCLIP_PYTHON": sys.executable,
           "GROWCLIP_HOSTFILE_DIR": str(hostdir), "FAKE_LOG": str(log), "EXPECT_STOP": str(run / "STOP")}
    p = subprocess.Popen(["bash", str(REPO / "launchers" / "slurm" / "grow_step.sbatch"), "--step", "1",
                          "--config", "tiny", "--set", f"data.root={tiny_data}", f"--run-dir={run}"],
                         env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (log / "srun").exists() and time.time() < deadline:
        time.sleep(0.1)
    assert (log / "srun").exists(), p.communicate(timeout=5)
    p.send_signal(signal.SIGUSR1)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, out + err
    assert "preemption notice" in out and "requeueing job 4242" in out
    assert (log / "scontrol").read_text().split() == ["requeue", "4242"]
    assert f"--run-dir={run}" in (log / "srun").read_text() and not (run / "STOP").exists()
    assert not (tmp_path / "PWNED").exists()


def test_cli_prints_the_sbatch_command(tmp_path, capsys):
    from growclip_train.cli import main

    assert main(["slurm", str(tmp_path / "run"), "--step", "3", "--nodes", "4", "--config", "paper"]) == 0
    cmd = capsys.readouterr().out.split()
    assert cmd[0] == "sbatch" and "--nodes=4" in cmd and cmd[-2:] == ["--step", "3"]
    assert str(REPO / "launchers" / "slurm" / "grow_step.sbatch") in cmd
    assert main(["slurm", str(tmp_path / "run"), "--config", "nonexistent_preset"]) == 2   # before sbatch


@pytest.mark.parametrize("script", ["grow_step.sbatch", "grow_run.sbatch", "common.sh"])
def test_batch_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(REPO / "launchers" / "slurm" / script)]).returncode == 0


@pytest.mark.launch
def test_torchrun_reports_a_planned_stop_in_one_line_and_a_crash_in_full(tmp_path):
    """growclip_train.torchrun (the SLURM scripts' and local launches' torchrun): ranks that exit 3
    (preempted, checkpointed) give exit code 3 and one line, no traceback; any other exit code keeps
    torchrun's ChildFailedError report and exit code 1. Rank 1 exits later, so torchrun stops it."""
    import sys

    from growclip_train.local_launch import local_command, local_env

    worker = tmp_path / "w.py"
    worker.write_text("import os, sys, time\ntime.sleep(0.5 * int(os.environ['RANK']))\nsys.exit(int(sys.argv[1]))\n")
    for code, rc in ((3, 3), (7, 1)):
        p = subprocess.run(local_command([str(worker), str(code)], ranks=2, launcher="torchrun"), env=local_env(),
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == rc, p.stderr[-2000:]
        if code == 3:
            assert "Traceback" not in p.stderr and "[growclip_ds] exit 3, preempted" in p.stderr, p.stderr[-2000:]
        else:
            assert "ChildFailedError" in p.stderr and "exitcode  : 7" in p.stderr, p.stderr[-2000:]
