"""Run every method and the paper's ablations side by side on the built-in growing data, then write
the comparison report (Tables 3, 4, 5, 9, 1 and TiC-CLIP's transfer summary, with PNG plots).

    python benchmarks/reproduce.py                       # demo model and data, --budget 3: ~25 min on 2 cores
    python benchmarks/reproduce.py --budget 6 --jobs 1   # twice the training per step, one job at a time
    python benchmarks/reproduce.py --config tiny --budget 4 --out runs/repro-tiny   # a smoke run, ~5 min

``--match flops`` compares at equal compute instead (docs/results/growth_pays_cpu2_2026-11-30): every
method spends F_t = E x N^t x the step-1 architecture's training FLOPs per sample at step t; a bigger
model sees fewer samples; ``tfs-chosen`` (a --methods entry) trains GrowCLIP's last choice from scratch.

``--budget E`` is the passes over D^t that every growth step may spend (the paper's 30): step 1 and
TFS/TWP/SAP train E epochs, GrowCLIP and NAS split them 2:2:26 over supernet fine-tuning, supernet
sampling and the chosen net (the paper's split), and TiC-CLIP's C is E x N^1. Every run is a run folder
under ``--out`` made by ``launchers/grow.py --method ...``, one process per step (world 1, or
``--ranks N`` through the DeepSpeed launcher), ``--jobs`` of them at once with the cores split
between them, each rank without gradient accumulation (``train.micro_batch`` = global batch / ranks, so
that the contrastive loss sees every sample of the batch as a negative, as on the preset's own world
size; ``--set train.micro_batch=...`` overrides). Step 1 is trained once and copied into every method's folder; the ablation and
single-dimension runs at step 2 copy the finished phases they share with the GrowCLIP run (same
config and seeds, so the same weights) instead of recomputing them. Re-running resumes: finished
steps are skipped. Logs: ``<out>/logs/``. The report: ``growclip-ds report <out>``.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, machine  # noqa: E402
from growclip_ds.eval.sets import list_sets  # noqa: E402
from growclip_ds.growth.space import FACTORS  # noqa: E402
from growclip_train.presets import load_config  # noqa: E402
from growclip_train.compare import TABLE5  # noqa: E402
from growclip_train.local_launch import local_command, local_env  # noqa: E402
from growclip_train.methods import RECIPES  # noqa: E402
from growclip_train.rundir import PIM3, RunDir  # noqa: E402
from growclip_train.step_phases import ABLATIONS, phases_before, split_epochs  # noqa: E402

SKIP_ON_COPY = ("checkpoints", "tb", "csv")   # a finished phase's DeepSpeed checkpoints are not needed downstream


@dataclass(frozen=True)
class Run:
    name: str                      # its folder under --out
    method: str = "growclip"
    steps: tuple = ()
    args: tuple = ()               # extra launchers/grow.py arguments (--ablate, --candidate)
    sets: tuple = ()               # extra config overrides (Table 1's half-size model)
    step1_from: str = "_step1"     # the run whose step 1 this one starts from ("" = its own)
    share: tuple = ()              # finished phases of ``share_from``'s step 2 copied in
    share_from: str = "growclip"
    arch_from: str = ""            # train the last architecture this run chose (the paper's TFS row of GrowCLIP)


def half_size(arch) -> list[str]:
    """Table 1's smaller model: depth and width both halved (blocks, heads, conv layers, stem, embedding)."""
    half = lambda f: f"arch.{f}={max(1, getattr(arch, f) // 2)}"  # noqa: E731
    return [half(f) for f in ("img_blocks", "img_heads", "txt_blocks", "txt_heads", "img_conv_layers",
                              "embed_dim", "stem_channels")]


def growclip_name(mode: str, modes: list[str]) -> str:
    return "growclip" if len(modes) == 1 else f"growclip-{mode}"


def plan(cfg, methods: list[str], last: int, tables: set, modes: list[str]) -> list[Run]:
    """The run folders of the comparison, longest chains first (they start first). GrowCLIP runs once
    per inheritance mode (``growth.inherit``), each with its own Table 5 rows; Table 9 uses the first."""
    grow = tuple(range(2, last + 1))
    runs = [Run("_step1", steps=(1,), step1_from="")]
    for m in methods:
        if m == CHOSEN:
            runs.append(Run(CHOSEN, "tfs", tuple(range(1, last + 1)), step1_from="",
                            arch_from=growclip_name(modes[0], modes)))
        elif m == "growclip":
            runs += [Run(growclip_name(mode, modes), m, grow, sets=(f"growth.inherit={mode}",)) for mode in modes]
        else:
            runs.append(Run(m, m, grow))
    if "1" in tables:
        runs.append(Run("tfs-half", "tfs", tuple(range(1, last + 1)), sets=tuple(half_size(cfg.arch)), step1_from=""))
    if "growclip" not in methods:
        return runs
    for mode in (modes if "5" in tables else ()):
        src, suffix = growclip_name(mode, modes), "" if len(modes) == 1 else f"-{mode}"
        for ablate in TABLE5[1:]:
            # with inherit=preserve, PIM@3 is exact slicing, so switching it off changes nothing, and with
            # PIM@1 off as well both modes are the same plain inheritance: those runs exist once
            if mode == "preserve" and (ablate == (PIM3,) or (ablate == TABLE5[-1] and "pim" in modes)):
                continue
            off = ",".join(c for c in ABLATIONS if c in ablate)
            runs.append(Run("ablate-" + off.replace(",", "-") + suffix, steps=(2,), args=("--ablate", off),
                            sets=(f"growth.inherit={mode}",), share=phases_before(ablate), share_from=src))
    first = growclip_name(modes[0], modes)
    for k, (field, _) in enumerate([("none", None)] + list(FACTORS) if "9" in tables else []):
        index = 0 if k == 0 else 2 ** (k - 1)
        runs.append(Run(f"grow-{field}", steps=(2,), args=("--candidate", str(index)),
                        sets=(f"growth.inherit={modes[0]}",), share=phases_before({"gas"}), share_from=first))
    return runs


CHOSEN = "tfs-chosen"   # TFS of the architecture GrowCLIP chose at the last step, from scratch at every step


def chosen_arch_sets(run: Path, last: int, cfg) -> list[str]:
    """Overrides that make the configured architecture the one ``run`` chose at step ``last``, with the
    FLOP budget still counted in the configured architecture's FLOPs."""
    from growclip_ds.model.flops import train_flops

    arch = RunDir(run).step(last).read_choice()
    return [f"arch.{f}={arch[f]}" for f, _ in FACTORS] + [f"train.flops_per_sample={train_flops(cfg.arch)}"]


def copy_phase(src: Path, dst: Path, phase: str) -> None:
    """A finished phase of step 2 (its model and records; GAS also its scores and choice)."""
    s, d = RunDir(src).step(2), RunDir(dst).step(2)
    shutil.copytree(s.phase(phase).path, d.phase(phase).path, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(*SKIP_ON_COPY))
    if phase == "gas":
        shutil.copy2(s.gas_scores, d.gas_scores)
        shutil.copy2(s.choice_file, d.choice_file)


class Runner:
    """Runs (run, step) jobs as subprocesses, ``jobs`` at a time, each when what it needs is finished."""

    def __init__(self, args, out: Path, runs: list[Run], base_sets: list[str], cfg):
        self.args, self.out, self.base_sets, self.cfg = args, out, base_sets, cfg
        self.runs = {r.name: r for r in runs}
        self.todo = [(r.name, t) for r in runs for t in r.steps if not self.finished(r.name, t)]
        self.total = len(self.todo)
        self.failed: list[str] = []
        self.succeeded = 0
        (out / "logs").mkdir(parents=True, exist_ok=True)

    def finished(self, name: str, step: int) -> bool:
        return RunDir(self.out / name).step(step).finished

    def needs(self, name: str, step: int) -> list[tuple[str, int]]:
        r = self.runs[name]
        if step > r.steps[0]:
            return [(name, step - 1)]
        need = [(r.step1_from, 1)] if r.step1_from else []
        need += [(r.arch_from, max(self.runs[r.arch_from].steps))] if r.arch_from else []
        return need + ([(r.share_from, 2)] if r.share else [])

    def ready(self, job) -> bool:
        return all(self.finished(*n) for n in self.needs(*job))

    def blocked(self, job) -> bool:
        return any(f"{n}/step{s}" in self.failed or (n, s) in self.todo and self.blocked((n, s))
                   for n, s in self.needs(*job))

    def prepare(self, name: str, step: int) -> None:
        r, d = self.runs[name], self.out / name
        if step == r.steps[0] and r.step1_from:
            src = RunDir(self.out / r.step1_from)
            shutil.copytree(src.step(1).path, RunDir(d).step(1).path, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns(*SKIP_ON_COPY))
            shutil.copytree(src.tokenizer, RunDir(d).tokenizer, dirs_exist_ok=True)   # the vocabulary step 1 used
        for phase in r.share if step == 2 else ():
            if not RunDir(d).step(2).phase(phase).finished:
                copy_phase(self.out / r.share_from, d, phase)

    def command(self, name: str, step: int, slot: int) -> list[str]:
        r, a = self.runs[name], self.args
        sets = self.base_sets + list(r.sets)
        if r.arch_from:
            sets += chosen_arch_sets(self.out / r.arch_from, max(self.runs[r.arch_from].steps), self.cfg)
        grow = [str(REPO / "launchers" / "grow.py"), "--step", str(step), "--method", r.method, "--config", a.config,
                "--run-dir", str(self.out / name), "--no-progress", *r.args] + sum((["--set", s] for s in sets), [])
        if a.ranks == 1:
            return [sys.executable] + grow
        return local_command(grow, a.ranks, a.port + 10 * slot)

    def start(self, name: str, step: int, slot: int) -> subprocess.Popen:
        self.prepare(name, step)
        env = local_env()
        env.update(MASTER_PORT=str(self.args.port + 10 * slot), OMP_NUM_THREADS=str(self.threads))
        cmd = self.command(name, step, slot)
        with open(self.out / "logs" / f"{name}_step{step}.log", "w") as log:
            log.write("$ " + shlex.join(cmd) + "\n")
            log.flush()
            return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def run(self) -> bool:
        self.threads = self.args.threads or max(1, (os.cpu_count() or 1) // (self.args.jobs * self.args.ranks))
        running: dict[int, tuple] = {}
        try:
            return self._loop(running)
        except KeyboardInterrupt:   # the runs live in their own sessions: stop them with us
            for _, p, _ in running.values():
                os.killpg(p.pid, signal.SIGTERM)
            raise

    def _loop(self, running: dict) -> bool:
        t0, done = time.time(), 0
        while self.todo or running:
            for slot, (job, p, started) in list(running.items()):
                if p.poll() is None:
                    continue
                del running[slot]
                done += 1
                ok = p.returncode == 0 and self.finished(*job)
                self.succeeded += ok
                if not ok:
                    self.failed.append(f"{job[0]}/step{job[1]}")
                log = self.out / "logs" / f"{job[0]}_step{job[1]}.log"
                print(f"[reproduce] {done}/{self.total} {'done' if ok else 'FAILED'} {job[0]} step {job[1]} "
                      f"({time.time() - started:.0f} s; elapsed {(time.time() - t0) / 60:.1f} min)"
                      + ("" if ok else f": rc {p.returncode}, see {log}"), flush=True)
            self.todo = [j for j in self.todo if not self.blocked(j)]
            for slot in range(self.args.jobs):
                if slot in running:
                    continue
                job = next((j for j in self.todo if self.ready(j)), None)
                if job is None:
                    break
                self.todo.remove(job)
                running[slot] = (job, self.start(*job, slot), time.time())
            if self.todo and not running:
                raise SystemExit(f"[reproduce] nothing can start: {self.todo[0]} waits on {self.needs(*self.todo[0])}")
            time.sleep(0.5)
        return not self.failed


def protocol_sets(budget: float, match: str, micro_batch: int) -> list[str]:
    """The overrides every run of a comparison trains with: ``budget`` passes split over the phases, checkpoints
    only at the end of these short phases, FLOP matching, the preset's warm-up (a forced 10 steps hid most of corpus
    v2's headroom and growth's gain: docs/results/growth_v2_cpu2_2026-12-07 section 8) and no gradient accumulation
    (each rank's contrastive loss sees the whole batch as negatives, as on the preset's own world size)."""
    return [*split_epochs(budget), "train.checkpoint_every=1000", *(["train.match=flops"] if match == "flops" else []),
            f"train.micro_batch={micro_batch}"]


def merged_record(before: dict, now: dict) -> dict:
    """A resumed comparison's record: on the same settings the work of every invocation adds up, and a command
    other than the first (e.g. another --methods list) is kept in ``later_commands``; on other settings ``now``,
    with the records before it kept in ``earlier`` (their runs are still in the folder)."""
    if before.get("overrides") != now["overrides"]:
        return {**now, "earlier": before.get("earlier", []) + [{k: v for k, v in before.items() if k != "earlier"}]}
    known = before.get("later_commands", [])
    later = known + ([now["command"]] if now["command"] not in [before["command"], *known] else [])
    return {**now, "steps_run": before["steps_run"] + now["steps_run"], "invocations": before.get("invocations", 1) + 1,
            "wall_min": round(before["wall_min"] + now["wall_min"], 1), "command": before["command"],
            **({"later_commands": later} if later else {})}


def record_commands(record: dict) -> list[str]:
    """Every command a comparison folder's reproduce.json records, first to last."""
    return [c for r in [*record.get("earlier", []), record] for c in [r["command"], *r.get("later_commands", [])]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="demo")
    ap.add_argument("--budget", type=float, default=3.0, metavar="EPOCHS",
                    help="passes over D^t per growth step, for every method (default 3; the paper's 30)")
    ap.add_argument("--set", action="append", default=[], help="more config overrides, section.field=value")
    ap.add_argument("--out", default="runs/repro")
    ap.add_argument("--methods", default=",".join(RECIPES))
    ap.add_argument("--steps", type=int, default=0, help="last growth step (default: every step of the data)")
    ap.add_argument("--no-tables", action="store_true", help="methods only: no Table 1, 5 and 9 runs")
    ap.add_argument("--tables", default="1,5,9", help="which of the Table 1, 5, 9 runs to add (default all)")
    ap.add_argument("--inherit", default="pim,preserve",
                    help="GrowCLIP's inheritance modes to run, each a run folder growclip-<mode> with its own "
                         "Table 5 rows (default: both; one mode: a folder named growclip)")
    ap.add_argument("--match", choices=("epochs", "flops"), default="epochs",
                    help="epochs: every method trains --budget passes over D^t (the paper's tables); flops: every "
                         "method spends the same training FLOPs at each step, F_t = --budget x N^t x the step-1 "
                         "architecture's FLOPs per sample (train.match=flops)")
    ap.add_argument("--jobs", type=int, default=2, help="runs at once (default 2: one per core)")
    ap.add_argument("--ranks", type=int, default=1, help="ranks per run (default 1)")
    ap.add_argument("--threads", type=int, default=0,
                    help="OMP threads per rank (default: cores / (jobs x ranks)); 1 when comparisons run side by side")
    ap.add_argument("--port", type=int, default=29600,
                    help="rendezvous port of job slot 0 (slot k: +10k); give two comparisons at once distinct ports")
    ap.add_argument("--publish", default="", metavar="DIR",
                    help="also copy comparison.md, reproduce.json and the PNGs into DIR (e.g. under docs/results/)")
    args = ap.parse_args()
    sets = protocol_sets(args.budget, args.match, load_config(args.config, args.set).train.global_batch // args.ranks)
    sets += args.set
    cfg = load_config(args.config, sets)
    out = Path(args.out)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in RECIPES and m != CHOSEN]
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; choose from {', '.join(RECIPES)}, {CHOSEN}")
    if CHOSEN in methods and "growclip" not in methods:
        raise SystemExit(f"--methods: {CHOSEN} trains the architecture GrowCLIP chose: add growclip")
    last = args.steps or cfg.data.num_steps
    if not (Path(cfg.data.root) / "manifest.parquet").exists():
        subprocess.run([sys.executable, "-m", "growclip_train.cli", "data", "make", "--config", args.config]
                       + sum((["--set", s] for s in sets), []), check=True, env=local_env())
    if "patching" in methods and not any(s.kind == "retrieval" for s in list_sets(cfg.data.root, cfg.data.eval,
                                                                                "selection")):
        raise SystemExit(f"no selection retrieval set in {cfg.data.root}/eval/sets.json or data.eval, which "
                         "patching chooses its alpha on: remake the data (`growclip-ds data make --config "
                         f"{args.config} --force`) or split it again (`growclip-ds data split`)")
    modes = [m for m in args.inherit.split(",") if m]
    tables = set() if args.no_tables else {t.strip() for t in args.tables.split(",") if t.strip()}
    runs = plan(cfg, methods, last, tables, modes)
    runner = Runner(args, out, runs, sets, cfg)
    print(f"[reproduce] {runner.total} steps to run in {len(runs)} run folders under {out}, "
          f"{args.jobs} at a time", flush=True)
    t0 = time.time()
    ok = runner.run()
    record = {"command": shlex.join(["python", "benchmarks/reproduce.py", *sys.argv[1:]]), "config": args.config,
              "overrides": sets, "jobs": args.jobs, "ranks": args.ranks, "machine": machine(),
              "finished": time.strftime("%Y-%m-%d %H:%M %Z"), "steps_run": runner.succeeded,
              "wall_min": round((time.time() - t0) / 60, 1), "invocations": 1}
    path = out / "reproduce.json"
    if path.exists() and runner.total:
        record = merged_record(json.loads(path.read_text()), record)
    if runner.total or not path.exists():   # nothing run: keep the record of the runs that did the work
        path.write_text(json.dumps(record, indent=1))
    from growclip_train.compare import write_comparison

    path = write_comparison(out)
    print(f"[reproduce] report: {path}")
    if args.publish:
        Path(args.publish).mkdir(parents=True, exist_ok=True)
        for f in [path, out / "reproduce.json", *out.glob("comparison_*.png")]:
            shutil.copy2(f, Path(args.publish) / f.name)
        print(f"[reproduce] copied to {args.publish}")
    if not ok:
        print(f"[reproduce] failed: {', '.join(runner.failed)} (and what depends on them); re-run to resume")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
