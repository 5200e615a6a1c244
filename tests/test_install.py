"""The package stands alone: a wheel installed into a fresh environment runs ``growclip-ds demo``
from an empty folder (its ZeRO configs and its launcher come from the installed package, not from
this checkout), and the result is a finished run with an evaluation."""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from growclip_train.rundir import RunDir
from tests.conftest import REPO, free_port, run_bounded


@pytest.mark.launch
def test_wheel_runs_the_demo_from_an_empty_folder(tmp_path):
    wheels, venv, work, src = tmp_path / "wheels", tmp_path / "venv", tmp_path / "empty", tmp_path / "src"
    # built from a copy: setuptools builds in the source tree, and a stale build/ there could ship deleted files
    top = {".venv", "runs", "data", "build", ".git", "docs", "growclip_ds.egg-info"}   # top-level names only

    def skip(folder, names):
        return [n for n in names if n == "__pycache__" or (folder == str(REPO) and n in top)]

    shutil.copytree(REPO, src, ignore=skip)
    (src / "docs").mkdir()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(src)], check=True, capture_output=True)
    wheel = next(wheels.glob("growclip_ds-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"growclip_train/ds_configs/zero{k}.json" for k in range(4)} | {"growclip_train/launch.py"} <= names
    assert {"growclip_ds/data/manifest.py", "growclip_train/train/trainer.py", "growclip_train/growth_step.py"} <= names
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], check=True,
                          capture_output=True, text=True).stdout.strip()
    # the dependencies are the test environment's (a .pth line adds its site-packages, whose own .pth
    # files, the checkout's editable install among them, are not processed); growclip_ds is the wheel
    with open(os.path.join(site, "deps.pth"), "w") as f:
        f.write(sysconfig.get_path("purelib") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True)
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}:{env['PATH']}", OMP_NUM_THREADS="1",
               TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch_extensions")))
    where = subprocess.run([py, "-c", "import growclip_ds, growclip_train; print(growclip_ds.__file__, growclip_train.__file__)"],
                           cwd=work, env=env, check=True, capture_output=True, text=True).stdout.split()
    assert all(w.startswith(site) for w in where), where     # the installed library and application, not this checkout

    p = run_bounded([str(venv / "bin" / "growclip-ds"), "demo", "--config", "tiny", "--steps", "1",
                     "--port", str(free_port())], env, timeout=600, cwd=work)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    run = RunDir(work / "runs" / "tiny")
    step = run.step(1)
    assert step.finished and run.next_step() == 2
    ev = step.read_eval()
    assert ev["zero_shot"] and all(0 <= v["top1"] <= 1 for v in ev["zero_shot"].values())
    ds_cfg = json.loads((step.phase("train").path / "ds_config.json").read_text())
    assert ds_cfg["zero_optimization"]["stage"] == 2 and ds_cfg["train_batch_size"] == 32   # the package's zero2
    assert (run.path / "report.md").exists() and "step" in (run.path / "report.md").read_text()
