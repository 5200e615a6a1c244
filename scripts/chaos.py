"""Seeded random fault schedules over a whole run, checked against an undisturbed one (issue 34).

    python scripts/chaos.py --config tiny --steps 2 --ranks 2 --seed 1 --faults 4 \
        --run-dir runs/chaos --data-root data/tiny

First the reference: growth steps 1..--steps, each one ``launchers/grow.py --step t`` on ``--ranks`` local
ranks, undisturbed (``<run-dir>/reference``). Then the same commands again (``<run-dir>/chaos``) while N
faults drawn from ``--seed`` strike, each at a random moment of a random step (so in any of its phases:
training, a checkpoint save, consolidation, GAS, the final evaluation): SIGKILL of one rank, of the launcher alone (its ranks must die with it) or of everything,
SIGTERM or SIGUSR1 (a preemption), SIGSTOP of one rank (a hung rank: the others must end on the
collective timeout; the stopped one is then killed, as its owner would), a byte flipped in or a file
truncated from the newest checkpoint (after killing the run), or a full disk inside a checkpoint write.
After each fault the same command is rerun, as a user or a requeue would, until the step finishes.

At the end every step's ``model.safetensors`` and ``eval.json`` are compared with the reference's, and
nothing may be left behind (no process of the run, no ``LOCK``, no new DeepSpeed /dev/shm buffer). A
resumed phase redoes the iterations since its last checkpoint; on one machine that is expected to give
the same weights, and the comparison reports bit-identity, and accepts what is not bit-identical within ``--atol`` (1e-5) on
weights and ``--acc-tol`` (0.01) on each zero-shot top-1 (round 3 measured resumed runs within 1e-6 of
the undisturbed one, tests/test_training.py). The last line: ``chaos: N faults, R reruns, K steps retrained, models identical: yes|no``; exit 0
only when identical and nothing is left behind.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from growclip_train.accelerator import SHM_PREFIX  # noqa: E402
from growclip_train.local_launch import local_command, local_env  # noqa: E402
from growclip_train.rundir import LOCK  # noqa: E402

MARKER = "chaos.json"   # the arguments of the chaos run that made a --run-dir (only such a folder is remade)
KINDS = ("kill-rank", "kill-all", "kill-launcher", "term", "usr1", "stop-rank", "flip", "truncate", "disk-full")


@dataclass
class Fault:
    kind: str
    step: int
    at: float      # seconds after the step's first attempt started (a rerun resumes: time runs on)
    rank: int
    misses: int = 0   # attempts it did not strike (the step ended first): it moves on, up to 3 times

    def __str__(self) -> str:
        who = f" rank {self.rank}" if self.kind in ("kill-rank", "usr1", "stop-rank", "disk-full") else ""
        when = "in a checkpoint write" if self.kind == "disk-full" else f"{self.at:.1f} s in"
        return f"{self.kind}{who} at step {self.step}, {when}"


def schedule(seed: int, n: int, steps: int, ranks: int, ref_wall: dict[int, float]) -> list[Fault]:
    """N faults: a random kind, step and moment (within the step's undisturbed wall time), in run order."""
    rng = random.Random(seed)
    faults = []
    for _ in range(n):
        step = rng.randint(1, steps)
        faults.append(Fault(rng.choice(KINDS), step, rng.uniform(0.05, 0.9) * ref_wall[step], rng.randrange(ranks)))
    return sorted(faults, key=lambda f: (f.step, f.kind != "disk-full", f.at))   # a full disk first: it needs a save


def step_command(args, run: Path, step: int) -> list[str]:
    grow = [str(REPO / "launchers" / "grow.py"), "--step", str(step), "--config", args.config, "--run-dir", str(run),
            "--no-progress", "--set", f"data.root={args.data_root}", "--set", f"train.collective_timeout_s={args.hang_timeout}",
            "--set", f"train.checkpoint_every={args.checkpoint_every}"]
    for s in args.set:
        grow += ["--set", s]
    return local_command(grow, args.ranks, launcher="torchrun" if args.ranks > 1 else "python")


def rank_pids(run: Path) -> dict[int, int]:
    """LOCAL_RANK -> pid of the rank processes training ``run`` (launchers/grow.py, not the launcher)."""
    out = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(c.endswith(b"grow.py") for c in cmd) and str(run).encode() in cmd and \
                not any(b"torch.distributed.run" in c or b"growclip_train.torchrun" in c for c in cmd):
            rank = next((int(e.split(b"=", 1)[1]) for e in env if e.startswith(b"LOCAL_RANK=")), 0)
            out[rank] = int(proc.name)
    return out


def newest_checkpoint(run: Path, step: int) -> Path | None:
    tags = [d for d in (run / f"step{step}").glob("*/checkpoints/global_step*") if d.is_dir() and
            not d.name.endswith("_universal")]
    return max(tags, key=lambda d: d.stat().st_mtime) if tags else None


def damage(ckpt: Path | None, how: str, rng: random.Random) -> str:
    files = sorted(f for f in ckpt.rglob("*") if f.is_file() and f.stat().st_size > 0) if ckpt else []
    if not files:
        return "no checkpoint to damage yet"
    f = rng.choice(files)
    data = bytearray(f.read_bytes())
    if how == "flip":
        i = rng.randrange(len(data))
        data[i] ^= 0xFF
        f.write_bytes(bytes(data))
        return f"flipped byte {i} of {f}"
    f.write_bytes(bytes(data[: len(data) // 2]))
    return f"truncated {f} to {len(data) // 2} bytes"


def wait(proc: subprocess.Popen, timeout: float) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


def attempt(cmd, env, log, fault: Fault | None, delay: float, run: Path, rng: random.Random, args) -> tuple[int, str]:
    """One launch of a step, with ``fault`` struck ``delay`` seconds in; (exit code, what was done)."""
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    if fault is None or fault.kind == "disk-full":
        return wait(proc, args.timeout), ""
    try:
        proc.wait(delay)
        return proc.returncode, "missed: the step finished first"
    except subprocess.TimeoutExpired:
        pass
    pids, t0 = rank_pids(run), time.monotonic()
    while not pids and proc.poll() is None and time.monotonic() - t0 < 30:   # ranks still being spawned
        time.sleep(0.2)
        pids = rank_pids(run)
    pid = pids.get(fault.rank) or next(iter(pids.values()), None)
    if pid is None and fault.kind not in ("kill-all", "kill-launcher", "flip", "truncate"):
        return wait(proc, args.timeout), "missed: no rank process at that moment"
    done = ""
    if fault.kind == "kill-rank":
        os.kill(pid, signal.SIGKILL)
    elif fault.kind == "kill-launcher":     # the ranks must die with it (launch.die_with_launcher)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        t0 = time.monotonic()
        while any(_alive(p) for p in pids.values()) and time.monotonic() - t0 < 10:
            time.sleep(0.1)
        orphans = [p for p in pids.values() if _alive(p)]
        done = f"ranks {orphans} outlived their launcher" if orphans else "every rank died with its launcher"
    elif fault.kind in ("kill-all", "flip", "truncate"):   # the launcher and every rank (a crashed node)
        for p in pids.values():
            os.kill(p, signal.SIGKILL)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if fault.kind != "kill-all":
            done = damage(newest_checkpoint(run, fault.step), fault.kind, rng)
    elif fault.kind == "term":
        for p in pids.values():
            os.kill(p, signal.SIGTERM)
    elif fault.kind == "usr1":
        os.kill(pid, signal.SIGUSR1)
    elif fault.kind == "stop-rank":
        os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        others = [p for p in pids.values() if p != pid]
        while any(_alive(p) for p in others) and time.monotonic() - t0 < args.hang_timeout + 60:
            time.sleep(0.5)
        done = f"the other ranks ended {time.monotonic() - t0:.0f} s after the stop" if not any(
            _alive(p) for p in others) else "the other ranks were still waiting"
        os.kill(pid, signal.SIGKILL)    # its owner notices and kills it
    rc = wait(proc, args.timeout)
    return rc, done


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def run_step(args, run: Path, step: int, pending: list[Fault], rng, log) -> tuple[int, int, float]:
    """Step ``step`` to its end, its faults (``pending``, taken from the front) each struck on its own attempt;
    faults left when the step finishes stay in ``pending``; (reruns, injected, wall s)."""
    reruns, injected, t0, fails = 0, 0, time.monotonic(), []
    while True:
        fault = pending.pop(0) if pending else None
        env = local_env(DS_ACCELERATOR="cpu", OMP_NUM_THREADS=str(args.threads))
        if fault and fault.kind == "disk-full":   # no signal: ENOSPC inside the checkpoint write of an iteration
            env["GROWCLIP_FAULT"] = f"nospace@{fault.rank}:{args.checkpoint_every * rng.randint(1, 2)}"
        delay = max(1.0, fault.at - (time.monotonic() - t0)) if fault else 0.0
        rc, done = attempt(step_command(args, run, step), env, log, fault, delay, run, rng, args)
        finished = (run / f"step{step}" / "eval.json").exists()
        if fault:
            hit = not done.startswith("missed") and not (fault.kind == "disk-full" and rc == 0)
            done = done or ("missed: no checkpoint write at that iteration" if not hit else "")
            injected += hit
            print(f"[chaos] fault {fault}: {'exit ' + str(rc) if hit else 'not struck'}"
                  f"{'; ' + done if done else ''}", flush=True)
            fault.misses += not hit
            if not hit and fault.misses < 3:
                pending.insert(0, fault)   # strikes in the next attempt, or early in the next step
        if finished and rc == 0:
            return reruns, injected, time.monotonic() - t0
        reruns += 1
        fails.append(rc)
        if len(fails) >= 4 and len(set(fails[-4:])) == 1 and rc != 0 and not pending:
            raise SystemExit(f"[chaos] step {step}: stuck, the last 4 reruns failed alike (exit {rc}): a failure the "
                             f"run cannot recover from; see {log.name}")
        if reruns > args.max_reruns:
            raise SystemExit(f"[chaos] step {step}: still not finished after {reruns} reruns (last exit {rc}); "
                             f"see {log.name}")


def retrained(run: Path) -> int:
    """Optimizer steps logged more than once (a rerun redoing the steps after its last checkpoint)."""
    n = 0
    for f in run.glob("step*/*/metrics.jsonl"):
        steps = [json.loads(line)["step"] for line in f.read_text().splitlines() if line.strip()]
        n += len(steps) - len(set(steps))
    return n


def compare(ref: Path, got: Path, steps: int, atol: float, acc_tol: float) -> tuple[bool, list[str]]:
    from safetensors.torch import load_file

    ok, notes = True, []
    for t in range(1, steps + 1):
        a, b = ref / f"step{t}", got / f"step{t}"
        same_bits = (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
        wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
        diff = max((wa[k] - wb[k]).abs().max().item() for k in wa) if wa.keys() == wb.keys() else float("inf")
        ea, eb = json.loads((a / "eval.json").read_text()), json.loads((b / "eval.json").read_text())
        acc = max((abs(ea["zero_shot"][k]["top1"] - eb["zero_shot"][k]["top1"]) for k in ea["zero_shot"]), default=0.0)
        step_ok = same_bits or (diff <= atol and acc <= acc_tol)
        ok &= step_ok
        notes.append(f"step {t}: model {'bit-identical' if same_bits else f'max |dw| {diff:.2e}'}, eval "
                     f"{'identical' if ea['zero_shot'] == eb['zero_shot'] else 'differs'}: {'ok' if step_ok else 'DIFFERS'}")
    return ok, notes


def leftovers(run: Path, shm_before: set) -> list[str]:
    out = [f"process {pid} (rank {r})" for r, pid in rank_pids(run).items()]
    out += [f"{run / LOCK} still held"] if (run / LOCK).exists() else []
    out += [f"/dev/shm/{p.name}" for p in set(Path("/dev/shm").glob(f"{SHM_PREFIX}_{os.getuid()}_*")) - shm_before]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--steps", type=int, default=2, help="growth steps (from 1)")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="draws the faults")
    ap.add_argument("--faults", type=int, default=4)
    ap.add_argument("--run-dir", default="runs/chaos", help="holds reference/, chaos/ and logs/ (made anew)")
    ap.add_argument("--data-root", default="data/tiny", help="built-in data (made here with `data make` if missing)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    ap.add_argument("--hang-timeout", type=int, default=20, help="train.collective_timeout_s of both runs")
    ap.add_argument("--checkpoint-every", type=int, default=2, help="train.checkpoint_every of both runs")
    ap.add_argument("--timeout", type=int, default=900, help="seconds one attempt may take")
    ap.add_argument("--max-reruns", type=int, default=8)
    ap.add_argument("--atol", type=float, default=1e-5, help="weights: max abs difference where not bit-identical")
    ap.add_argument("--acc-tol", type=float, default=0.01, help="zero-shot top-1: max difference where not identical")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    root = Path(args.run_dir)
    if not (Path(args.data_root) / "manifest.parquet").exists():
        from growclip_train import cli
        cli.main(["data", "make", "--config", args.config, "--root", args.data_root])
    if root.exists() and any(root.iterdir()) and not (root / MARKER).exists():
        raise SystemExit(f"[chaos] {root} exists and was not made by scripts/chaos.py: give a new --run-dir")
    shutil.rmtree(root, ignore_errors=True)   # an earlier chaos run's folders only (it holds MARKER)
    (root / "logs").mkdir(parents=True)
    (root / MARKER).write_text(json.dumps(vars(args)))
    shm_before = set(Path("/dev/shm").glob(f"{SHM_PREFIX}_{os.getuid()}_*"))
    rng = random.Random(args.seed + 1)
    ref, got, ref_wall = root / "reference", root / "chaos", {}
    for t in range(1, args.steps + 1):
        with open(root / "logs" / f"reference_step{t}.log", "w") as log:
            _, _, ref_wall[t] = run_step(args, ref, t, [], rng, log)
        print(f"[chaos] reference step {t}: {ref_wall[t]:.0f} s", flush=True)
    faults = schedule(args.seed, args.faults, args.steps, args.ranks, ref_wall)
    print("[chaos] schedule: " + "; ".join(map(str, faults)), flush=True)
    reruns = injected = 0
    carried: list[Fault] = []
    for t in range(1, args.steps + 1):
        pending = carried + [f for f in faults if f.step == t]
        for f in carried:   # a fault its step finished before: it strikes early in this one instead
            f.step, f.at = t, 0.0
        with open(root / "logs" / f"chaos_step{t}.log", "w") as log:
            r, n, wall = run_step(args, got, t, pending, rng, log)
        reruns, injected, carried = reruns + r, injected + n, pending
        print(f"[chaos] step {t} finished after {r} rerun(s), {wall:.0f} s"
              + (f"; {len(pending)} fault(s) move to step {t + 1}" if pending and t < args.steps else ""), flush=True)
    for f in carried:
        print(f"[chaos] not struck: {f} (the run finished first)", flush=True)
    same, notes = compare(ref, got, args.steps, args.atol, args.acc_tol)
    for n in notes:
        print(f"[chaos] {n}", flush=True)
    left = leftovers(got, shm_before)
    for x in left:
        print(f"[chaos] left behind: {x}", flush=True)
    print(f"chaos: {injected} faults, {reruns} reruns, {retrained(got)} steps retrained, "
          f"models identical: {'yes' if same else 'no'}", flush=True)
    return 0 if same and not left else 1


if __name__ == "__main__":
    sys.exit(main())
