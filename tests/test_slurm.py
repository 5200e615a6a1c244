"""Nodelist expansion on real SLURM syntax, hostfiles, ports, the sbatch command and scripts."""
import subprocess

import pytest

from growclip_ds import slurm
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


def test_env_lines_from_an_allocation(tmp_path):
    environ = {"SLURM_JOB_NODELIST": "gpu[3-4]", "SLURM_JOB_ID": "123456", "SLURM_GPUS_ON_NODE": "4",
               "GROWCLIP_HOSTFILE_DIR": str(tmp_path)}
    lines = dict(x.removeprefix("export ").split("=", 1) for x in slurm.env_lines(environ).splitlines())
    assert lines["MASTER_ADDR"] == "gpu3" and lines["MASTER_PORT"] == str(20000 + 123456 % 20000)
    assert lines["GROWCLIP_NNODES"] == "2" and lines["GROWCLIP_GPUS_PER_NODE"] == "4"
    assert (tmp_path / "hostfile.123456").read_text() == "gpu3 slots=4\ngpu4 slots=4\n"


def test_cli_prints_the_sbatch_command(tmp_path, capsys):
    from growclip_ds.cli import main

    assert main(["slurm", str(tmp_path / "run"), "--step", "3", "--nodes", "4", "--config", "paper"]) == 0
    cmd = capsys.readouterr().out.split()
    assert cmd[0] == "sbatch" and "--nodes=4" in cmd and cmd[-2:] == ["--step", "3"]
    assert str(REPO / "launchers" / "slurm" / "grow_step.sbatch") in cmd
    assert main(["slurm", str(tmp_path / "run"), "--config", "nonexistent_preset"]) == 2   # before sbatch


@pytest.mark.parametrize("script", ["grow_step.sbatch", "grow_run.sbatch", "common.sh"])
def test_batch_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(REPO / "launchers" / "slurm" / script)]).returncode == 0
