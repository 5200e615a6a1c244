"""The multi-node path for real on one machine: two "nodes" (127.0.0.1 and 127.0.0.2, each with an
sshd, scripts/two_nodes.sh), reached by `deepspeed --hostfile` through pdsh, started by the SLURM
batch script itself (hostfile mode) with a SLURM-style nodelist. Step 2 (from a local run's step 1 and
supernet phases): GAS over both nodes, then the second node lost while the final phase trains across them,
then the same command again resumes and finishes."""
import json
import os
import re
import signal
import subprocess
import sys
import time

from pathlib import Path

import pytest

from tests.conftest import REPO, copy_run, free_port, launches, run_bounded


def _two_nodes(*args):
    return subprocess.run(["bash", str(REPO / "scripts" / "two_nodes.sh"), *args], check=True, capture_output=True,
                          text=True, timeout=120)


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.2", port)) == 0


@pytest.fixture(scope="module")
@launches
def two_nodes():
    """The two nodes, taken down again afterwards whatever happens (no login service left open)."""
    keys = Path.home() / ".ssh" / "authorized_keys"
    before = keys.read_text() if keys.exists() else None
    _two_nodes()
    yield before
    _two_nodes("down")


def sbatch_as_bash(tmp, args, fault=None, background=False):
    """Run launchers/slurm/grow_step.sbatch as its allocation would (no sbatch here: the script is bash);
    ``background``: return the running process (its own process group)."""
    env_file = tmp / ".deepspeed_env"   # what pdsh shells get (they do not inherit our environment)
    lines = ["DS_ACCELERATOR=cpu", f"PATH={os.path.dirname(sys.executable)}:{os.environ['PATH']}",
             f"PYTHONPATH={REPO}", "OMP_NUM_THREADS=1"] + ([fault] if fault else [])
    env_file.write_text("\n".join(lines) + "\n")
    env = {**os.environ, "SLURM_JOB_NODELIST": "127.0.0.[1-2]", "SLURM_JOB_ID": str(free_port()),
           "GROWCLIP_LAUNCH_MODE": "hostfile", "GROWCLIP_GPUS_PER_NODE": "1", "GROWCLIP_HOME": str(REPO),
           "GROWCLIP_PYTHON": sys.executable, "GROWCLIP_HOSTFILE_DIR": str(tmp), "DS_ENV_FILE": str(env_file)}
    cmd = ["bash", str(REPO / "launchers" / "slurm" / "grow_step.sbatch")] + args
    if background:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    return run_bounded(cmd, env, timeout=240, kill_pattern=str(tmp))


def _second_node(run: Path) -> list[int]:
    """Every process "node" 127.0.0.2 runs for ``run``: DeepSpeed's per-node launcher with --node_rank=1
    (started there over ssh by pdsh) and everything below it (its rank)."""
    procs = {}
    for d in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int(d.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1])
            procs[int(d.name)] = (ppid, d.joinpath("cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except (OSError, ValueError):
            continue
    node = {pid for pid, (_, cmd) in procs.items() if "deepspeed.launcher.launch" in cmd and "--node_rank=1" in cmd
            and str(run) in cmd}
    grew = True
    while grew:
        below = {pid for pid, (ppid, _) in procs.items() if ppid in node} - node
        node |= below
        grew = bool(below)
    return sorted(node)


def test_growth_across_two_nodes_survives_losing_a_node(two_nodes, grown_run, tiny_data, tmp_path):
    """Step 1 and step 2's supernet phases come from conftest.grown_run (2 local ranks); GAS and the final
    phase run across the two nodes. During the final phase every process of the second node is killed:
    the first node's rank ends on its own within a bound (it finds its peer gone, or waits at most
    train.collective_timeout_s) with a message naming itself and exit code 6; the same command then
    resumes from the final phase's last checkpoint and finishes on both nodes."""
    run = copy_run(grown_run, tmp_path / "run", ["step1", "step2/supernet", "step2/sample"])
    timeout_s = 20
    common = ["--config", "tiny", "--set", f"data.root={tiny_data}", "--run-dir", str(run), "--no-progress",
              "--set", f"train.collective_timeout_s={timeout_s}", "--set", "train.checkpoint_every=2"]
    job = sbatch_as_bash(tmp_path, ["--step", "2"] + common, fault="GROWCLIP_FAULT_DELAY=0.3", background=True)
    metrics = run / "step2" / "final" / "metrics.jsonl"
    try:
        deadline = time.monotonic() + 180
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):   # past its first checkpoint
            assert time.monotonic() < deadline and job.poll() is None, "the final phase never started training"
            time.sleep(0.2)
        node = _second_node(run)
        assert node, "no process of the second node found"
        lost = time.monotonic()
        for pid in node:
            os.kill(pid, signal.SIGKILL)
        out, _ = job.communicate(timeout=timeout_s + 90)
        ended = time.monotonic() - lost
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            subprocess.run(["pkill", "-9", "-f", str(tmp_path)], check=False)
    assert job.returncode != 0 and ended <= timeout_s + 60, (ended, out[-3000:])
    assert re.search(r"rank 0 of 2 \(host [^)]+\): a peer rank is gone or hung .*exit 6", out), out[-3000:]
    assert "127.0.0.1" in out and "127.0.0.2" in out and "pdsh" in out   # DeepSpeed's multi-node runner
    hostfile = next(tmp_path.glob("hostfile.*")).read_text()
    assert hostfile == "127.0.0.1 slots=1\n127.0.0.2 slots=1\n"
    rows = [json.loads(x) for x in (run / "step2" / "gas.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in rows) == list(range(64))      # GAS over both nodes, before the loss
    p2 = sbatch_as_bash(tmp_path, ["--step", "2"] + common)
    out2 = p2.stdout + p2.stderr
    assert p2.returncode == 0, out2[-3000:]
    assert re.search(r"resuming from \S+/step2/final/checkpoints/global_step\d+", out2), out2[-3000:]
    ev = json.loads((run / "step2" / "eval.json").read_text())
    assert set(ev["zero_shot"]) == {"colour", "shape", "position", "binding", "relation"}   # corpus v2's tasks
    from growclip_train.train.checkpoint import latest_tag, read_meta

    ckpt = run / "step2" / "final" / "checkpoints"
    assert read_meta(ckpt / latest_tag(ckpt))["world_size"] == 2    # one rank per node, two nodes


def test_two_nodes_down_closes_the_login_service_and_removes_its_key(two_nodes):
    """What the fixture's teardown does, checked: sshd gone, authorized_keys as before, no ssh config block
    (then up again for any later test of this module; the fixture takes it down at the end)."""
    assert _listening(2222)
    _two_nodes("down")
    keys, config = Path.home() / ".ssh" / "authorized_keys", Path.home() / ".ssh" / "config"
    assert not _listening(2222)
    assert (keys.read_text() if keys.exists() else None) in (two_nodes, "")
    assert "growclip_ds" not in (keys.read_text() if keys.exists() else "")
    assert "growclip_ds two nodes" not in (config.read_text() if config.exists() else "")
