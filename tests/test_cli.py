"""growclip-ds's conventions: --version, every subcommand in the help, one exit-code table (the same
situation gives the same code in every command; a bug keeps its traceback), and `data make` / `data split`
on a folder that already holds data: 0 when it holds what was asked, 2 (nothing overwritten) otherwise."""
import json
import os
import subprocess
import sys

import pytest

import growclip_ds
from growclip_ds.data.manifest import Manifest
from growclip_train import cli, exit_codes
from tests.test_data import _copy_corpus


def test_version_and_help_name_every_subcommand(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"growclip-ds {growclip_ds.__version__}"
    text = cli.parser().format_help()
    for name in ("demo", "data", "eval", "plan", "report", "slurm", "checkpoint", "export"):
        assert f"    {name} " in text and f"growclip-ds {name}" in text   # listed, with an example line
    assert "Exit codes" in text


def test_user_errors_exit_2_in_one_line_and_bugs_keep_their_traceback(tmp_path, capsys, monkeypatch):
    assert cli.main(["report", str(tmp_path / "missing")]) == exit_codes.USAGE
    err = capsys.readouterr().err
    assert err.startswith("error: report:") and err.count("\n") == 1
    assert cli.main(["plan", "--config", "nonsense"]) == exit_codes.USAGE      # a config the message names
    assert "'nonsense' is neither a preset" in capsys.readouterr().err
    assert cli.main(["slurm", "--hostfile-check", "hostfile.example"]) == exit_codes.OK   # no run folder needed
    monkeypatch.setattr(cli, "_report", lambda args: [][1])                     # a bug, not a user's error
    with pytest.raises(IndexError):
        cli.main(["report", str(tmp_path)])
    bug = subprocess.run([sys.executable, "-m", "growclip_train.cli", "eval", str(tmp_path), "--split", "test",
                          "--set", "train.lr=notanumber"], capture_output=True, text=True)
    assert bug.returncode == exit_codes.USAGE and "train.lr" in bug.stderr and "Traceback" not in bug.stderr


def test_data_commands_keep_what_exists_and_say_so_the_same_way(tiny_data, tmp_path, capsys):
    root = tmp_path / "made"
    make = ["data", "make", "--config", "tiny", "--root", str(root), "--seed", "3"]
    assert cli.main(make) == exit_codes.OK
    before = (root / "manifest.parquet").read_bytes()
    assert cli.main(make) == exit_codes.OK and "nothing to do" in capsys.readouterr().out   # what was asked
    assert cli.main(make[:-1] + ["4"]) == exit_codes.USAGE                                 # another seed: kept
    assert "'seed': 3" in capsys.readouterr().err and (root / "manifest.parquet").read_bytes() == before

    folder = _copy_corpus(Manifest.load(tiny_data), tmp_path / "i2d")
    split = ["data", "split", str(folder), "--steps", "2", "--holdout", "4", "--vocab-size", "512"]
    assert cli.main(split) == exit_codes.OK
    assert json.loads((folder / "split.json").read_text())["steps"] == 2
    manifest = (folder / "manifest.parquet").read_bytes()
    assert cli.main(split) == exit_codes.OK and "nothing to do" in capsys.readouterr().out
    assert cli.main(split + ["--seed", "1"]) == exit_codes.USAGE                           # other arguments: kept
    assert "--force" in capsys.readouterr().err and (folder / "manifest.parquet").read_bytes() == manifest


def test_log_goes_to_rank_0_at_its_level_and_to_every_rank_when_asked(monkeypatch, capsys):
    """Information on stdout, warnings on stderr; ranks other than 0 only warn, unless --log-ranks, which
    prefixes each line with the rank; the settings reach launched ranks through the environment."""
    from growclip_train import log as logmod

    for k, v in (("GROWCLIP_LOG_LEVEL", "INFO"), ("GROWCLIP_LOG_RANKS", "0"), ("RANK", "1")):
        monkeypatch.setenv(k, v)          # each restored after the test (setup() below writes the first two)
    logmod.setup()
    logmod.log.info("quiet")
    logmod.log.warning("heard")
    out = capsys.readouterr()
    assert out.out == "" and out.err == "[growclip_ds] heard\n"
    logmod.setup("DEBUG", ranks=True)
    logmod.log.debug("detail")
    assert capsys.readouterr().out == "[growclip_ds rank 1] detail\n"
    assert (os.environ["GROWCLIP_LOG_LEVEL"], os.environ["GROWCLIP_LOG_RANKS"]) == ("DEBUG", "1")
    for k, v in (("RANK", "0"), ("GROWCLIP_LOG_RANKS", "0")):
        monkeypatch.setenv(k, v)
    logmod.setup("WARNING")
    logmod.log.info("hidden")
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("GROWCLIP_LOG_LEVEL", "INFO")
    logmod.setup()                        # the logger as a fresh process has it, for the tests after this one


def test_eval_and_plan_read_the_config_the_run_recorded(step1_run, tiny_data, capsys):
    """A run on its own data root (not the demo's data/builtin): ``eval`` and ``plan`` without --config read
    that root, and eval gives the eval.json 2 ranks wrote; an explicit --config is said on stderr."""
    step = step1_run / "step1"
    assert cli.main(["eval", str(step)]) == 0
    got, want = json.loads(capsys.readouterr().out), json.loads((step / "eval.json").read_text())
    assert got["zero_shot"].keys() == want["zero_shot"].keys()
    for name, task in want["zero_shot"].items():
        assert got["zero_shot"][name]["top1"] == pytest.approx(task["top1"], abs=1e-6)
    assert got["retrieval"]["image_to_text"] == pytest.approx(want["retrieval"]["image_to_text"], abs=1e-6)
    assert cli.main(["plan", str(step1_run)]) == 0
    assert f"N^2 = {Manifest.load(tiny_data).num_samples(2):,} samples" in capsys.readouterr().out
    assert cli.main(["plan", str(step1_run), "--config", "tiny", "--set", f"data.root={tiny_data}"]) == 0
    assert "--config tiny replaces the config" in capsys.readouterr().err
