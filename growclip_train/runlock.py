"""One launch per run folder: ``<run>/LOCK`` names the launch that holds the folder.

Two launches on one run (a resubmitted job while the requeued one still runs) would delete each
other's checkpoint folders, share temporary names and obey one STOP file. Rank 0 of a launch takes
the lock before it writes anything and keeps it across the re-executions between phases (same pid);
a second launch refuses at once, naming the holder. A lock whose holder is gone never blocks a rerun:
on the same host a dead pid (or a pid reused by another program: the process start time differs)
frees it; on another host a heartbeat older than ``STALE_S`` does (the holder touches the file every
``BEAT_S``); a requeued SLURM job (same ``SLURM_JOB_ID``) takes over its own earlier lock.

    lock = RunLock(run_dir); lock.acquire()   # raises RunLocked naming host, pid, since
    ...; lock.release()
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

from growclip_train.rundir import LOCK

BEAT_S, STALE_S = 30.0, 300.0


class RunLocked(RuntimeError):
    """The run folder is held by another live launch."""


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def holder_record() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid()),
            "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "slurm_job": os.environ.get("SLURM_JOB_ID")}


def stale_reason(rec: dict, age_s: float, me: dict) -> str | None:
    """Why the lock ``rec`` (last touched ``age_s`` ago) no longer holds the folder; None if it does."""
    if rec.get("host") == me["host"]:
        if rec.get("pid") == me["pid"] and rec.get("start") == me["start"]:
            return "held by this process (a later phase of the same launch)"
        start = _start_time(int(rec.get("pid", -1)))
        if start is None:
            return f"its process {rec.get('pid')} is gone"
        if start != rec.get("start"):
            return f"pid {rec.get('pid')} now belongs to another process"
        return None
    if rec.get("slurm_job") and rec.get("slurm_job") == me["slurm_job"]:
        return f"an earlier run of this SLURM job {me['slurm_job']} (requeued)"
    if age_s > STALE_S:
        return f"no heartbeat for {age_s:.0f} s (over {STALE_S:.0f} s)"
    return None


class RunLock:
    def __init__(self, run_dir):
        self.path = Path(run_dir) / LOCK
        self._stop = threading.Event()
        self.held = False

    def acquire(self, log=print) -> None:
        me = holder_record()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self._take_over_if_stale(me, log)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            threading.Thread(target=self._beat, daemon=True).start()
            return
        raise RunLocked(f"{self.path}: could not take the lock (another launch is racing for it)")

    def _take_over_if_stale(self, me: dict, log) -> None:
        try:
            rec = json.loads(self.path.read_text())
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return
        except (OSError, json.JSONDecodeError):
            rec, age = {}, time.time() - self.path.stat().st_mtime
        why = stale_reason(rec, age, me)
        if why is None:
            raise RunLocked(
                f"{self.path.parent} is in use by another launch: host {rec.get('host')}, pid {rec.get('pid')}, since "
                f"{rec.get('since')}{', SLURM job ' + rec['slurm_job'] if rec.get('slurm_job') else ''} (heartbeat "
                f"{age:.0f} s ago). Wait for it to end or stop it; two launches on one run folder destroy each "
                f"other's checkpoints. If it is dead on another host, the lock frees itself {STALE_S:.0f} s after its "
                f"last heartbeat, or delete {self.path}")
        if not why.startswith("held by this process"):
            log(f"[growclip_ds] taking over {self.path}: {why}")
        aside = self.path.with_name(f"{LOCK}.stale.{os.getpid()}")
        try:   # one of two racing takers wins the rename; the other retries and finds the winner's lock
            os.replace(self.path, aside)
        except FileNotFoundError:
            return
        try:
            if json.loads(aside.read_text()) != rec:   # a racing taker's fresh lock, not the stale one: put it back
                os.link(aside, self.path)
        except (OSError, json.JSONDecodeError):
            pass
        aside.unlink()

    def _beat(self) -> None:
        while not self._stop.wait(BEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        """Remove the lock if this process holds it (a finished, failed or preempted launch)."""
        self._stop.set()
        if not self.held:
            return
        try:
            rec = json.loads(self.path.read_text())
            if rec.get("pid") == os.getpid() and rec.get("host") == socket.gethostname():
                self.path.unlink()
        except (OSError, json.JSONDecodeError):
            pass
        self.held = False
