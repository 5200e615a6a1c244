"""The multi-node path for real on one machine: two "nodes" (127.0.0.1 and 127.0.0.2, each with an
sshd, scripts/two_nodes.sh), reached by `deepspeed --hostfile` through pdsh, started by the SLURM
batch script itself (hostfile mode) with a SLURM-style nodelist. Step 2 (from a local run's step 1 and
supernet phases) with a rank on the second node killed during GAS, then the same command again: GAS over
both nodes finishes, and the final phase trains across them."""
import json
import os
import subprocess
import sys

from pathlib import Path

import pytest

from tests.conftest import REPO, copy_run, free_port, run_bounded


def _two_nodes(*args):
    return subprocess.run(["bash", str(REPO / "scripts" / "two_nodes.sh"), *args], check=True, capture_output=True,
                          text=True, timeout=120)


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.2", port)) == 0


@pytest.fixture(scope="module")
def two_nodes():
    """The two nodes, taken down again afterwards whatever happens (no login service left open)."""
    keys = Path.home() / ".ssh" / "authorized_keys"
    before = keys.read_text() if keys.exists() else None
    _two_nodes()
    yield before
    _two_nodes("down")


def sbatch_as_bash(tmp, args, fault=None):
    """Run launchers/slurm/grow_step.sbatch as its allocation would (no sbatch here: the script is bash)."""
    env_file = tmp / ".deepspeed_env"   # what pdsh shells get (they do not inherit our environment)
    lines = ["DS_ACCELERATOR=cpu", f"PATH={os.path.dirname(sys.executable)}:{os.environ['PATH']}",
             f"PYTHONPATH={REPO}", "OMP_NUM_THREADS=1"] + ([f"GROWCLIP_FAULT={fault}"] if fault else [])
    env_file.write_text("\n".join(lines) + "\n")
    env = {**os.environ, "SLURM_JOB_NODELIST": "127.0.0.[1-2]", "SLURM_JOB_ID": str(free_port()),
           "GROWCLIP_LAUNCH_MODE": "hostfile", "GROWCLIP_GPUS_PER_NODE": "1", "GROWCLIP_HOME": str(REPO),
           "GROWCLIP_PYTHON": sys.executable, "GROWCLIP_HOSTFILE_DIR": str(tmp), "DS_ENV_FILE": str(env_file)}
    return run_bounded(["bash", str(REPO / "launchers" / "slurm" / "grow_step.sbatch")] + args, env,
                       timeout=240, kill_pattern=str(tmp))


def test_growth_across_two_nodes_with_a_rank_killed_during_gas(two_nodes, grown_run, tiny_data, tmp_path):
    """Step 1 and step 2's supernet phases come from conftest.grown_run (2 local ranks); GAS and the
    final phase run across the two nodes."""
    run = copy_run(grown_run, tmp_path / "run", ["step1", "step2/supernet", "step2/sample"])
    common = ["--config", "tiny", "--set", f"data.root={tiny_data}", "--run-dir", str(run), "--no-progress"]
    killed = sbatch_as_bash(tmp_path, ["--step", "2"] + common, fault="gas@1:1")
    out = killed.stdout + killed.stderr
    assert killed.returncode != 0 and "fault injection: SIGKILL at gas 1 on rank 1" in out
    hostfile = next(tmp_path.glob("hostfile.*")).read_text()
    assert hostfile == "127.0.0.1 slots=1\n127.0.0.2 slots=1\n"
    assert "127.0.0.1" in out and "127.0.0.2" in out and "pdsh" in out   # DeepSpeed's multi-node runner
    gas_dir = run / "step2" / "gas"
    kept = {f.name: f.stat().st_mtime_ns for f in gas_dir.glob("*.safetensors")}
    assert kept and not (run / "step2" / "gas" / "done.json").exists()
    p2 = sbatch_as_bash(tmp_path, ["--step", "2"] + common)
    assert p2.returncode == 0, p2.stdout[-3000:] + p2.stderr[-3000:]
    # variant files finished before the kill were not redone; all 32 exist; every candidate scored
    assert all(gas_dir.joinpath(n).stat().st_mtime_ns == t for n, t in kept.items())
    assert len(list(gas_dir.glob("*.safetensors"))) == 32
    rows = [json.loads(x) for x in (run / "step2" / "gas.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in rows) == list(range(64))
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
