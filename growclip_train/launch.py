"""Distributed entry point: train one growth step of a run. By path from a checkout, or as a module
from any folder once installed (``deepspeed --module growclip_train.launch ...``, ``torchrun -m``):

    deepspeed --num_accelerators 2 launchers/grow.py --step 1 --config demo --run-dir runs/demo
    torchrun --nproc_per_node 2 launchers/grow.py --step 1 --config demo --run-dir runs/demo
    deepspeed --hostfile hostfile --master_addr HOST launchers/grow.py --step 1 --config demo ...
    deepspeed --num_accelerators 2 launchers/grow.py --method cumulative-exp --step 2 --run-dir runs/cexp
    deepspeed --num_accelerators 2 --module growclip_train.launch --step 1 --config demo

The config is parsed and validated before any process group starts. Each step writes its model and
evaluation into ``<run-dir>/step<t>`` (growclip_train/rundir.py); a re-run resumes where it stopped.
One launch per run folder (``<run-dir>/LOCK``, growclip_train/runlock.py); a resume must run with the
config and data the step started with (growclip_train/provenance.py). Exit codes: 0 done, 2 bad config,
input or a run folder in use, 3 preempted (checkpointed; rerun to resume), 4 diverged
(NaN/inf loss; ``latest`` is the last finite checkpoint), 5 undecodable data.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
from dataclasses import dataclass
from datetime import timedelta

from growclip_train import exit_codes, gc_policy
from growclip_train.log import add_arguments as add_log_arguments, log, setup as setup_log


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--step", type=int, required=True, help="growth step t (1 = train the step-1 arch from scratch)")
    p.add_argument("--config", default="demo", help="preset name (tiny, demo, paper, vit-b-16) or JSON file")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a config field, e.g. --set train.lr=0.001 (repeatable)")
    p.add_argument("--run-dir", default=None, help="run folder (default runs/<config name>)")
    p.add_argument("--phase", default=None,
                   help="run only this phase (train | supernet, sample, gas, final); default: every pending phase")
    p.add_argument("--method", default="growclip",
                   help="growclip (default), a baseline (tfs, twp, sap, nas) or a TiC-CLIP method (oracle, "
                        "cumulative-all, cumulative-exp, cumulative-equal, sequential, restart, lwf, patching); "
                        "growclip_train/methods.py says what each does. One method per run folder")
    p.add_argument("--candidate", type=int, default=None, metavar="INDEX",
                   help="growclip: grow into this candidate (0-63, bit k = factor k) instead of running GAS")
    p.add_argument("--ablate", default="", metavar="LIST",
                   help="comma list of components to turn off (PIM@1, supernet training, GAS, PIM@3: their names are "
                        "growclip_train.step_phases.ABLATIONS), as the paper's Table 5")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    p.add_argument("--stop-after-iterations", "--stop-after-steps", dest="stop_after_iterations", type=int,
                   default=None, metavar="N",
                   help="checkpoint and exit after N iterations (optimizer steps) of the current phase (a planned "
                        "stop; re-run without it to resume). --stop-after-steps: its name before 2026-12-07")
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume a step under a config that differs from the one it started with (refused by "
                        "default, naming the fields; the change is recorded in step<t>/config_changes.jsonl)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)
    add_log_arguments(p)
    return p.parse_args(argv)


DATA_EXIT = exit_codes.DATA   # a rank's data stream yields nothing decodable (DataStall)
EXEC_GEN = "GROWCLIP_EXEC_GEN"  # how many phases this rank process has already run (re-executions)


def init_distributed(timeout_s: float = 1800.0) -> None:
    """Start the process group: gloo on CPU, nccl on GPU; a plain ``python`` run is a world of 1. A
    collective that waits ``timeout_s`` for a peer (``train.collective_timeout_s``) raises on the waiting ranks.

    After a re-execution (next phase) the rendezvous store may be the launcher's (torchrun keeps
    one store for the whole job), so its keys are namespaced by the generation: stale keys of the
    previous phase's group would otherwise be taken for this one's and the rendezvous would hang."""
    import torch.distributed as dist

    from growclip_train.accelerator import accelerator_env, backend

    accelerator_env(os.environ)
    pg_backend = backend()
    for k, v in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"),
                 ("MASTER_PORT", "29533")):
        os.environ.setdefault(k, v)
    gen = int(os.environ.get(EXEC_GEN, "0"))
    if gen > 0:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        store, _, _ = next(dist.rendezvous("env://", rank=rank, world_size=world))
        dist.init_process_group(pg_backend, store=dist.PrefixStore(f"/growclip/gen{gen}", store), rank=rank,
                                world_size=world, timeout=timedelta(seconds=timeout_s))
    import deepspeed

    deepspeed.init_distributed(dist_backend=pg_backend, timeout=timedelta(seconds=timeout_s))


@dataclass(frozen=True)
class LaunchPlan:
    """What a launch will do, every input checked: ``check``'s answer."""
    cfg: object            # RunConfig, with the run's own tokenizer
    run: object            # RunDir
    ablate: set
    todo: list             # the phases of the growth step still to run, in order
    data: dict             # the data fingerprint the ranks compare
    key_id: str            # the checkpoint key's id
    candidate: int | None = None   # --candidate, or growth.plan's for this step (None: GAS chooses)


def lost_peer(e: BaseException) -> bool:
    """Whether ``e`` is a collective that lost its peer: timed out waiting (a hung rank, a stuck filesystem)
    or found the connection closed (a killed rank, a lost node)."""
    text = str(e).lower()
    return type(e).__name__.startswith("Dist") or any(w in text for w in (
        "timed out", "timeout", "connection closed", "connection reset", "broken pipe"))


def check(args, lock) -> LaunchPlan:
    """Every input checked before any process group starts, the run folder locked (rank 0, ``lock``) before
    anything is written there; raises ConfigError / InputError / FileNotFoundError naming what to fix."""
    from growclip_ds.config import ConfigError
    from growclip_ds.data.manifest import Manifest
    from growclip_ds.eval.sets import list_sets
    from growclip_ds.growth.space import NUM_CANDIDATES
    from growclip_train.presets import load_config
    from growclip_train import methods, provenance
    from growclip_train.phases import pending_phases, phases_for
    from growclip_train.step_phases import ABLATIONS
    from growclip_train.rundir import RunDir, default_run_dir, pin_tokenizer

    cfg = load_config(args.config, args.set)
    cfg.train.grad_accum(int(os.environ.get("WORLD_SIZE", "1")))  # batch sizes must fit the world size
    num_steps = Manifest.load(cfg.data.root).num_steps
    list_sets(cfg.data.root, cfg.data.eval)   # evaluation sets findable now, not after training
    if args.stop_after_iterations is not None and args.stop_after_iterations < 0:
        raise ConfigError(f"--stop-after-iterations: must be >= 0 (got {args.stop_after_iterations})")
    if args.step < 1 or args.step > num_steps:
        raise ConfigError(f"--step: must be in 1..{num_steps}, the steps of {cfg.data.root}/manifest.parquet "
                          f"(got {args.step})")
    ablate = {a for a in args.ablate.split(",") if a}
    if ablate - set(ABLATIONS):
        raise ConfigError(f"--ablate: unknown {sorted(ablate - set(ABLATIONS))}; choose from {', '.join(ABLATIONS)}")
    if (ablate or args.candidate is not None) and methods.get(args.method).init != methods.Init.GROW:
        raise ConfigError(f"--ablate/--candidate: only for --method growclip (got {args.method})")
    if args.candidate is not None and not 0 <= args.candidate < NUM_CANDIDATES:
        raise ConfigError(f"--candidate: must be in 0..{NUM_CANDIDATES - 1} (got {args.candidate})")
    candidate = args.candidate
    if candidate is None and methods.get(args.method).init == methods.Init.GROW and args.step > 1:
        candidate = cfg.growth.planned(args.step)   # growth.plan: this step grows into a fixed net, no search
    grow_ablate = ablate | ({"st"} if candidate is not None and args.candidate is None else set())
    phases = phases_for(args.step, grow_ablate, args.method, candidate)
    if args.phase and args.phase not in phases:
        raise ConfigError(f"--phase: step {args.step} has phases {phases} (got {args.phase!r})")
    run = RunDir(default_run_dir(cfg, args.run_dir))
    writer = os.environ.get("RANK", "0") == "0"
    if writer:
        lock.acquire(run.path)
    kid = check_key(run, args.step)
    methods.record(run, args.method, ablate, args.candidate, writer=writer)
    if args.step > 1 and not run.step(args.step - 1).finished:
        raise ConfigError(f"--step {args.step}: step {args.step - 1} of {run} is not finished "
                          f"({run.step(args.step - 1).eval_file} missing); run it first")
    cfg = pin_tokenizer(cfg, run)   # the run's own tokenizer copy: one vocabulary from step 1 on
    todo = pending_phases(run, args.step, grow_ablate, args.method, candidate)
    if args.phase and args.phase not in todo:
        raise ConfigError(f"--phase {args.phase}: step {args.step}'s {args.phase} phase is finished "
                          f"({run.step(args.step).phase(args.phase).done_file}); running it again would overwrite "
                          f"its results. To redo it, move {run.step(args.step).phase(args.phase).path} aside first")
    todo = [args.phase] if args.phase else todo
    data = provenance.check_resume(cfg, run.step(args.step), args.step, args.allow_config_change, writer) if todo else {}
    return LaunchPlan(cfg, run, grow_ablate, todo, data, kid, candidate)


def check_key(run, step: int) -> str:
    """The checkpoint key (signing.check_key) against the key ids of the step's checkpoints."""
    from growclip_train.train import checkpoint, signing

    ids = {checkpoint.manifest_key_id(m.parent) for m in run.step(step).path.glob(f"*/checkpoints/*/{checkpoint.MANIFEST}")}
    return signing.check_key(ids - {None})


def leave_group() -> None:
    """Every rank leaves the process group together (a rank exiting while gloo peers still talk to it
    can abort them at teardown), its shared-memory buffer gone before any rank re-creates it."""
    import torch.distributed as dist

    from growclip_train.accelerator import release_shm_buffer

    dist.barrier()
    release_shm_buffer()
    dist.barrier()
    dist.destroy_process_group()


def next_phase() -> None:
    """Re-execute for the next phase (same pid, same rank environment, the same command line: a script
    path or ``-m growclip_train.launch``): a new engine never shares a process with an old one."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.environ[EXEC_GEN] = str(int(os.environ.get(EXEC_GEN, "0")) + 1)
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


class _Lock:
    """Rank 0's hold on the run folder (runlock.RunLock), taken inside ``check``."""

    def __init__(self):
        self.held = None

    def acquire(self, run_dir) -> None:
        from growclip_train.runlock import RunLock

        self.held = RunLock(run_dir)
        self.held.acquire()

    def release(self) -> None:
        if self.held:
            self.held.release()


def die_with_launcher() -> None:
    """A rank started by a launcher (torchrun, DeepSpeed's) dies with it: the kernel sends SIGKILL when the
    parent exits (Linux PR_SET_PDEATHSIG, kept across the re-execution between phases). torchrun starts each
    rank in its own session, so without this a SIGKILLed launcher left its ranks training on, holding the
    run's LOCK until their rendezvous store timed out (found by scripts/chaos.py). A rank run by hand
    (``python launchers/grow.py``) is left alone: closing its shell must not kill it."""
    if "TORCHELASTIC_RUN_ID" not in os.environ and "LOCAL_RANK" not in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))   # PR_SET_PDEATHSIG
    if os.getppid() == 1:   # the launcher died before the call
        os._exit(exit_codes.LOST_PEER)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_log(args.log_level, args.log_ranks)
    from growclip_train.train import preempt

    die_with_launcher()
    gc_policy.skip_exit_collection()
    preempt.mark_launch()   # a STOP file older than this is a killed job's, not a request to this launch
    lock = _Lock()
    try:
        return _main(args, lock)   # returns only when the launch ends (next_phase re-executes, keeping the lock)
    finally:
        lock.release()


def _main(args, lock) -> int:
    from growclip_ds.config import ConfigError
    from growclip_ds.errors import USER_ERRORS
    from growclip_train.runlock import RunLocked
    from growclip_train.train.signing import CheckpointKeyError

    try:
        with gc_policy.loading_libraries():
            plan = check(args, lock)
            from growclip_train.phases import run_phase_of_step   # the trainer, torchvision
            import deepspeed  # noqa: F401
    except ConfigError as e:
        log.error(f"config error: {e}")
        return exit_codes.USAGE
    except (*USER_ERRORS, RunLocked, CheckpointKeyError) as e:   # a bug's ValueError keeps its traceback
        log.error(f"error: {e}")
        return exit_codes.USAGE
    from growclip_ds.data.loader import DataStall
    from growclip_train import provenance
    from growclip_train.train import preempt
    from growclip_train.train.checkpoint import CheckpointError
    from growclip_train.train.nonfinite import NONFINITE_EXIT, NonFiniteError

    if not plan.todo:
        log.info(f"{plan.run.step(args.step).path} is complete; nothing to do")
        return exit_codes.OK
    stale = preempt.stale_stop(plan.run.path)
    if stale and os.environ.get("RANK", "0") == "0":
        log.warning(f"ignoring {stale}: it is older than this launch (left by a stopped job); "
                    "remove it")
    preempt.install()  # SIGTERM / SIGUSR1: checkpoint after the current step, exit PREEMPTED_EXIT
    try:
        init_distributed(plan.cfg.train.collective_timeout_s)   # a peer missing from the rendezvous: lost_peer too
        provenance.check_ranks_agree(provenance.agreement(plan.cfg, plan.data, plan.key_id))   # after init: faults see the rank
        res = run_phase_of_step(plan.cfg, args.step, plan.run.path, plan.todo[0], plan.ablate, progress=not args.no_progress,
                                stop_after=args.stop_after_iterations, method=args.method, candidate=plan.candidate)
    except ConfigError as e:      # raised on every rank (the ranks compared their views)
        log.error(f"config error: {e}")
        leave_group()
        return exit_codes.USAGE
    except CheckpointError as e:  # raised on every rank (the ranks agreed: a refused resume, a failed save)
        log.error(f"rank {os.environ.get('RANK', '0')}: error: {e}")
        leave_group()
        return exit_codes.USAGE
    except NonFiniteError as e:   # raised on every rank at the same step (the ranks agreed)
        if os.environ.get("RANK", "0") == "0":
            log.error(f"diverged: {e}")
        return NONFINITE_EXIT
    except DataStall as e:        # this rank's data: the launcher stops the other ranks
        log.error(f"rank {os.environ.get('RANK', '0')}: no usable data: {e}")
        lock.release()
        os._exit(DATA_EXIT)
    except RuntimeError as e:     # a peer died or hung mid-collective (gloo/NCCL): collectives cannot end cleanly
        if not lost_peer(e):
            raise
        log.error(f"rank {os.environ.get('RANK', '0')} of {os.environ.get('WORLD_SIZE', '1')} "
                  f"(host {socket.gethostname()}): a peer rank is gone or hung ({str(e).splitlines()[0][:200]}); "
                  f"stopping (exit {exit_codes.LOST_PEER}). Rerun the same command when every host is back: it resumes "
                  "from the last checkpoint")
        lock.release()
        os._exit(exit_codes.LOST_PEER)
    leave_group()
    if res.preempted:
        log.info(f"preempted: checkpointed {res.ckpt_dir}; rerun the same command to resume")
        return preempt.PREEMPTED_EXIT
    if args.phase or res.stopped or len(plan.todo) == 1:
        return exit_codes.OK
    next_phase()


if __name__ == "__main__":
    sys.exit(main())
