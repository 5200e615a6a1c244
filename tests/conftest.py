"""Shared fixtures: a tiny built-in corpus and the multi-rank runs several files read, each made once per test
run (by whichever pytest-xdist worker asks first), and helpers to launch ranks."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
# Under pytest-xdist (setup.cfg addopts: two workers on two cores) each worker's own torch work gets one thread: two
# workers with two OpenMP threads each, beside launched ranks, spin against each other (a 5 s test took 48 s)
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if XDIST_WORKER:
    os.environ["OMP_NUM_THREADS"] = "1"
# as in an activated venv: DeepSpeed's JIT ops are built by the `ninja` first on PATH, and the venv's
# ninja and the system's hash build commands differently, so mixing them rebuilds shm_comm (70-130 s)
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"

from growclip_train.local_launch import free_port, local_command, local_env  # noqa: E402,F401 (free_port: for tests)


# A test that starts a launcher, ranks, a batch script or an install, itself or through a fixture, is marked
# `launch`; the quick tier is the rest: `pytest -m "not launch"`. Tests say so with @pytest.mark.launch (or a
# module's pytestmark), fixtures with @launches; a test that starts one of those commands unmarked fails (the
# audit hook below sees every subprocess), so the quick tier cannot silently grow a launch.
LAUNCH_PROGRAMS = {"deepspeed", "torchrun", "srun", "sbatch", "pip"}
LAUNCH_MODULES = {"deepspeed.launcher.runner", "torch.distributed.run", "growclip_train.torchrun",
                  "growclip_train.launch", "pip"}
_started: list = []
sys.addaudithook(lambda event, args: _started.append(args[1]) if event == "subprocess.Popen" else None)


def launches(fixture_fn):
    """Declares that a fixture starts processes: every test that uses it is marked ``launch``."""
    fixture_fn.launches = True
    return fixture_fn


# Wall seconds of the slow files in a whole-suite run (2 cores, 2026-12-07): the order in which xdist hands out
# files, longest first (setup.cfg: --no-loadscope-reorder keeps it), so that no long file starts last. Only the
# order depends on them; a file not listed goes after these.
FILE_SECONDS = {"test_reliability.py": 155, "test_training.py": 139, "test_growth_pipeline.py": 123,
                "test_multinode.py": 66, "test_chaos.py": 53, "test_install.py": 34, "test_budget.py": 34,
                "test_lamb.py": 31, "test_gas.py": 19, "test_headroom.py": 19, "test_methods.py": 16, "test_slurm.py": 11}


def pytest_collection_modifyitems(config, items):
    """Mark ``launch`` the tests whose fixtures launch; order the files longest first (FILE_SECONDS)."""
    for item in items:
        defs = getattr(item, "_fixtureinfo", None)
        if any(getattr(d.func, "launches", False) for ds in (defs.name2fixturedefs.values() if defs else [])
               for d in ds):
            item.add_marker(pytest.mark.launch)
    items.sort(key=lambda item: -FILE_SECONDS.get(item.path.name, 0))   # stable: within a file, the written order


def _is_launch(argv) -> bool:
    """A launcher, ranks (launchers/grow.py), a batch script run (not ``bash -n``) or pip."""
    a = [str(x) for x in (argv if isinstance(argv, (list, tuple)) else [argv])]
    prog = Path(a[0]).name
    if prog.startswith("python"):
        return (a[a.index("-m") + 1] in LAUNCH_MODULES) if "-m" in a[:-1] else len(a) > 1 and a[1].endswith("grow.py")
    if prog == "bash":
        return len(a) > 1 and a[1].endswith(".sbatch")
    return prog in LAUNCH_PROGRAMS


def _unmarked_launch(item) -> str | None:
    if item.get_closest_marker("launch"):
        return None
    cmd = next((" ".join(map(str, a)) for a in _started if _is_launch(a)), None)
    return cmd and f"{item.nodeid} starts `{cmd[:200]}` but is not marked: add @pytest.mark.launch (or @launches " \
                   f"on the fixture that starts it), so that the quick tier stays launch-free"


def _refuse_unmarked_launches(item):
    _started.clear()
    outcome = yield
    if (msg := _unmarked_launch(item)) and outcome.exception is None:
        outcome.force_exception(pytest.fail.Exception(msg, pytrace=False))


pytest_runtest_setup = pytest.hookimpl(hookwrapper=True)(_refuse_unmarked_launches)   # fixtures that start
pytest_runtest_call = pytest.hookimpl(hookwrapper=True)(_refuse_unmarked_launches)    # the test itself


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    _started.clear()
    outcome = yield
    if (msg := _unmarked_launch(item)) and outcome.exception is None:
        outcome.force_exception(pytest.fail.Exception(msg, pytrace=False))


def shared(tmp_path_factory, name: str, build) -> Path:
    """The folder ``name`` of this test run, made by ``build(folder)`` once: under xdist the first worker to
    ask builds it while the others wait (a file lock), so a session run is launched once per test run."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    base = base.parent if XDIST_WORKER else base        # xdist: <run>/popen-gwN per worker; <run> is shared
    path, done = base / f"shared-{name}", base / f"shared-{name}.built"
    with FileLock(str(base / f"shared-{name}.lock")):
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)     # a half-built one (its builder failed)
            path.mkdir()
            build(path)
            done.touch()
    return path


@pytest.fixture(scope="session", autouse=True)
def _checkpoint_key(tmp_path_factory):
    """The suite's own checkpoint key (train/signing.py), inherited by every launched rank (of every worker:
    shared runs are signed with it)."""
    os.environ["GROWCLIP_KEY_FILE"] = str(shared(tmp_path_factory, "key", lambda p: None) / "checkpoint.key")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    from growclip_ds.data.builtin import make_builtin
    from growclip_train.presets import PRESETS

    cfg, d = PRESETS["tiny"], PRESETS["tiny"].data
    return shared(tmp_path_factory, "data", lambda p: make_builtin(
        p / "tiny", d.num_steps, d.samples_per_step, d.shard_size, d.eval_per_class, d.retrieval_size,
        vocab_size=cfg.arch.vocab_size, progress=False)) / "tiny"


# Multi-rank runs that several test files read, each launched once per test run (``shared``; a launch costs ~10 s
# before it trains). Tests that train further copy what they need (``copy_run``) and never change these.
STEP1 = ["--step", "1", "--config", "tiny", "--set", "train.epochs=3", "--set", "train.log_every=1",
         "--set", "train.zero_stage=2", "--set", "train.monitor=tensorboard,csv"]


@pytest.fixture(scope="session")
@launches
def step1_run(tiny_data, tmp_path_factory) -> Path:
    """Step 1 of the tiny config on 2 ranks (ZeRO-2, 3 epochs = 12 steps, every step logged, DeepSpeed's
    TensorBoard and CSV monitors): the reference run of test_training and the start of every growth test."""
    return shared(tmp_path_factory, "step1", lambda p: launch(
        STEP1 + ["--set", f"data.root={tiny_data}", "--run-dir", str(p / "run")])) / "run"


@pytest.fixture(scope="session")
@launches
def grown_run(step1_run, tiny_data, tmp_path_factory) -> Path:
    """``step1_run``'s step 1, then growth step 2 on 2 ranks under ZeRO-3 (supernet, sample, GAS, final)."""
    def build(path):
        run = copy_run(step1_run, path / "run", ["step1"])
        launch(["--step", "2", "--config", "tiny", "--set", f"data.root={tiny_data}", "--run-dir", str(run),
                "--set", "train.zero_stage=3"])

    return shared(tmp_path_factory, "grown", build) / "run"


@pytest.fixture(scope="session")
@launches
def rank_checks(tmp_path_factory) -> dict:
    """tests/rank_worker.py's jobs, one torchrun launch per world size: LAMB under ZeRO (test_lamb) and the
    loss on 2 ranks (test_loss). Returns {job: its output file}."""
    jobs = {2: [("lamb", 1, 2, "exact"), ("lamb", 3, 2, "exact"), ("lamb", 2, 2, "naive"), ("loss",)],
            3: [("lamb", 2, 3, "exact")]}

    def build(tmp):
        for world, todo in jobs.items():
            args = [f"lamb:{j[1]}:{j[3]}:{tmp / _name(j)}" if j[0] == "lamb" else f"loss:{tmp / _name(j)}" for j in todo]
            p = run_bounded(local_command([str(REPO / "tests" / "rank_worker.py"), *args], world,
                                          launcher="torchrun"),
                            local_env(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1"), timeout=300)
            assert p.returncode == 0, p.stderr[-4000:]

    tmp = shared(tmp_path_factory, "ranks", build)
    return {job: tmp / _name(job) for todo in jobs.values() for job in todo}


def _name(job: tuple) -> str:
    return "_".join(map(str, job)) + ".pt"


def copy_run(src: Path, dst: Path, parts: list[str]) -> Path:
    """A new run folder holding ``parts`` of ``src`` (e.g. "step1", "step2/supernet") and its tokenizer,
    without DeepSpeed checkpoints: what a later step or phase starts from."""
    for part in parts + ["tokenizer"]:
        shutil.copytree(src / part, dst / part, ignore=shutil.ignore_patterns("checkpoints", "LOCK"))
    return dst


def _shm_buffers() -> set[Path]:
    from growclip_train.accelerator import SHM_PREFIX

    return set(Path("/dev/shm").glob(f"{SHM_PREFIX}_{os.getuid()}_*"))


_SHM_BEFORE = pytest.StashKey[set]()


def pytest_sessionstart(session):
    if not XDIST_WORKER:
        session.config.stash[_SHM_BEFORE] = _shm_buffers()


def pytest_sessionfinish(session):
    """Ranks that tests kill on purpose cannot unlink DeepSpeed's /dev/shm buffers (see
    growclip_train.accelerator.release_shm_buffer); remove what this test run's ranks left. Done by the main
    process after every xdist worker has finished (a worker's ranks may still use theirs until then)."""
    if not XDIST_WORKER:
        for f in _shm_buffers() - session.config.stash.get(_SHM_BEFORE, set()):
            f.unlink(missing_ok=True)


class PicklePayload:
    """A pickle that leaves a marker file if anything unpickles it (what a planted checkpoint file does)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _launch_cmd(args: list[str], ranks: int, launcher: str | None, env: dict | None) -> tuple[list[str], dict]:
    """The command and environment of a local launch. Without a named launcher: torchrun for several ranks,
    plain python for one (DeepSpeed's own launcher costs ~6 s more per start; tests that are about it, or
    about the exit code it passes on, name it)."""
    launcher = launcher or ("torchrun" if ranks > 1 else "python")
    extra = {"MASTER_PORT": str(free_port())} if launcher == "python" else {}
    env = local_env(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", **extra, **(env or {}))
    return local_command([str(REPO / "launchers" / "grow.py"), *args, "--no-progress"], ranks, launcher=launcher), env


def start(args: list[str], ranks: int = 2, env: dict | None = None, launcher: str | None = None) -> subprocess.Popen:
    """launchers/grow.py on local ranks, in the background (for signals mid-run)."""
    cmd, env = _launch_cmd(args, ranks, launcher, env)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def launch(args: list[str], ranks: int = 2, launcher: str | None = None, timeout: int = 300,
           check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run launchers/grow.py on ``ranks`` local ranks through a real launcher (see _launch_cmd)."""
    cmd, env = _launch_cmd(args, ranks, launcher, env)
    p = run_bounded(cmd, env, timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"launch failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
    return p


def run_bounded(cmd: list[str], env: dict, timeout: int, kill_pattern: str | None = None,
                cwd=None) -> subprocess.CompletedProcess:
    """subprocess.run in its own process group: on timeout the whole group is killed (plain
    ``subprocess.run`` kills only the child, then waits forever on pipes its grandchildren hold), and
    processes matching ``kill_pattern`` (ranks started over ssh, outside the group) with it."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=cwd)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        if kill_pattern:
            subprocess.run(["pkill", "-9", "-f", kill_pattern], check=False)
        out, err = proc.communicate()
        raise AssertionError(f"timed out after {timeout} s: {' '.join(cmd)}\n{out[-3000:]}\n{err[-6000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
