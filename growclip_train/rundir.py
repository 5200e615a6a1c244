"""The run folder: every path in it, every finished-or-not rule, every record written there.

    <run>/method.json                    what made the run (one method per folder)
    <run>/tokenizer/                     the tokenizer fixed at step 1 (pin_tokenizer below)
    <run>/LOCK                           the launch that runs in this folder now (runlock.py)
    <run>/step<t>/config.json            the config step t ran with
    <run>/step<t>/data.json              a fingerprint of its data (provenance.py: a resume must match)
    <run>/step<t>/config_changes.jsonl   config changes allowed at a resume (--allow-config-change)
    <run>/step<t>/model.safetensors      the step's model, with arch.json (its architecture, params and
                                         how it was chosen); the model folder format is model_folder.py's
    <run>/step<t>/eval.json              its evaluation: step t is finished when this exists
    <run>/step<t>/finish.json            what writing the step's model and evaluating it took (seconds)
    <run>/step<t>/gas.jsonl              GAS scores, a line per candidate, appended as they are known
    <run>/step<t>/<phase>/done.json      a finished phase (train, supernet, sample, gas, final, patch) or
                                         growth (pim1, pim3: its model and what it kept)
    <run>/step<t>/<phase>/checkpoints/   the phase's DeepSpeed checkpoints

Nothing else in the package spells these names. Records are written by rank 0, atomically (a
reader sees the old file or the new one), and every rank waits for them.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from growclip_ds.model_folder import ARCH, MODEL, RUN_TOKENIZER, write_arch  # noqa: F401  (model_folder.py owns these names)

METHOD = "method.json"
TOKENIZER = RUN_TOKENIZER
LOCK = "LOCK"
CONFIG = "config.json"
DATA_PRINT = "data.json"
CONFIG_CHANGES = "config_changes.jsonl"
EVAL = "eval.json"
FINISH = "finish.json"
GAS_SCORES = "gas.jsonl"
DONE = "done.json"
CHECKPOINTS = "checkpoints"
PIM1, PIM3 = "pim1", "pim3"   # the growths' folders (and Table 5's names for them): PIM@1, step t-1 model ->
GROWTHS = (PIM1, PIM3)         # supernet; PIM@3, the chosen candidate inside the supernet -> the chosen net
_STEP = re.compile(r"^step(\d+)$")


def write_json(path: Path, record: dict) -> None:
    """Rank 0 writes ``record`` atomically; every rank waits until it is there."""
    from growclip_ds.distributed import barrier, rank_world
    from growclip_ds.fileio import atomic_write_text

    if rank_world()[0] == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(record, indent=1))
    barrier()


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


class PhaseDir:
    """``<run>/step<t>/<phase>``: a training phase or a growth (pim1, pim3)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.name = self.path.name
        self.done_file = self.path / DONE
        self.checkpoints = self.path / CHECKPOINTS

    @property
    def finished(self) -> bool:
        return self.done_file.exists()

    def read_done(self) -> dict:
        return read_json(self.done_file)

    def mark_done(self, record: dict) -> None:
        write_json(self.done_file, record)


class StepDir:
    """``<run>/step<t>``: the folder of growth step t, and of its model once finished."""

    def __init__(self, path: Path, t: int):
        self.path, self.t = Path(path), t
        self.config_file = self.path / CONFIG
        self.data_file = self.path / DATA_PRINT
        self.changes_file = self.path / CONFIG_CHANGES
        self.eval_file = self.path / EVAL
        self.finish_file = self.path / FINISH
        self.choice_file = self.path / ARCH     # the chosen architecture (GAS, fixed, random) and its record
        self.gas_scores = self.path / GAS_SCORES

    def phase(self, name: str) -> PhaseDir:
        return PhaseDir(self.path / name)

    @property
    def finished(self) -> bool:
        return self.eval_file.exists()

    @property
    def has_choice(self) -> bool:
        return self.choice_file.exists()

    def read_eval(self) -> dict:
        return read_json(self.eval_file)

    def write_eval(self, result: dict) -> None:
        write_json(self.eval_file, result)

    def write_finish(self, record: dict) -> None:
        write_json(self.finish_file, record)

    def read_finish(self) -> dict:
        return read_json(self.finish_file) if self.finish_file.exists() else {}

    def write_config(self, cfg) -> None:
        write_json(self.config_file, cfg.to_dict())

    def read_config(self) -> dict:
        return read_json(self.config_file)

    def read_choice(self) -> dict:
        return read_json(self.choice_file)

    def write_choice(self, arch, how: str, index: int) -> None:
        """The chosen architecture, as the step's ``arch.json`` (model_folder.write_arch: its one writer)."""
        from growclip_ds.distributed import barrier, rank_world

        if rank_world()[0] == 0:
            write_arch(self.path, arch, {"chosen_by": how, "index": index})
        barrier()

    def phase_records(self) -> list[dict]:
        """done.json of every finished phase and growth of this step, in folder-name order."""
        return [read_json(f) for f in sorted(self.path.glob(f"*/{DONE}"))]

    def growth_records(self) -> dict:
        """{"pim1": record, "pim3": record} for the growths whose keeping was measured."""
        recs = {w: self.phase(w).read_done() for w in GROWTHS if self.phase(w).finished}
        return {w: r for w, r in recs.items() if "kept" in r}


def default_run_dir(cfg, run_dir=None) -> Path:
    """``run_dir`` if given, else ``runs/<config name>``: the folder a launch, the demo and SLURM use."""
    return Path(run_dir or f"runs/{cfg.name}")


class RunDir:
    """``<run>``: a method's run over growth steps 1..T."""

    def __init__(self, path):
        self.path = Path(path)
        self.method_file = self.path / METHOD
        self.tokenizer = self.path / TOKENIZER

    def step(self, t: int) -> StepDir:
        return StepDir(self.path / f"step{t}", t)

    def steps(self) -> list[StepDir]:
        """Every step folder there, in step order."""
        found = [(int(m.group(1)), p) for p in self.path.glob("step*") if (m := _STEP.match(p.name))]
        return [StepDir(p, t) for t, p in sorted(found)]

    def finished_steps(self) -> list[StepDir]:
        return [s for s in self.steps() if s.finished]

    def next_step(self) -> int:
        """The first step not finished (1 in an empty run)."""
        t = 1
        while self.step(t).finished:
            t += 1
        return t

    def is_run(self) -> bool:
        return self.method_file.exists()

    def read_method(self) -> dict:
        return read_json(self.method_file)

    def write_method(self, record: dict) -> None:
        """method.json, by the one process that writes it (launch.check runs before any process group)."""
        from growclip_ds.fileio import atomic_write_text

        atomic_write_text(self.method_file, json.dumps(record, indent=1))

    def phase_records(self) -> list[dict]:
        return [r for s in self.steps() for r in s.phase_records()]

    def __fspath__(self) -> str:   # usable wherever a path is
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)


def pin_tokenizer(cfg, run_dir):
    """``cfg`` whose tokenizer is the run's own copy, made from the configured one on first use (every
    rank may make it at once: the first whole copy stays, the others are dropped)."""
    import shutil

    from growclip_ds.config import replace
    from growclip_ds.data.tokenizer import TextTokenizer, tokenizer_path
    from growclip_ds.fileio import atomic_path

    run = RunDir(run_dir)
    run_copy = run.tokenizer
    if not run_copy.exists() and any(s.config_file.exists() for s in run.steps()):
        raise FileNotFoundError(f"{run_copy} is missing, but {run} has trained steps with it: restore it (its hash is "
                                f"in step<t>/{run.step(1).data_file.name}); a copy of the data's current tokenizer could "
                                "give other ids")
    if not run_copy.exists():
        src = tokenizer_path(cfg.data)
        TextTokenizer(src, 3)   # fails here, with what to do, if the folder is not a tokenizer
        with atomic_path(run_copy, shared=True) as tmp:
            shutil.copytree(src, tmp)
    return replace(cfg, data=replace(cfg.data, tokenizer=str(run_copy)))
