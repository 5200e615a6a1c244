"""torchrun, except that a planned stop of the ranks reads as one line in the job log, not as a crash.

    python -m growclip_train.torchrun --nproc_per_node 8 --master_port 29500 launchers/grow.py --step 3 ...

Arguments are torchrun's own. When the ranks exit with a planned code (3: preempted, a checkpoint was
written; growclip_train/exit_codes.py), torchrun itself would raise ChildFailedError with a traceback and a
"Root Cause" block, and a SLURM log of a job that checkpointed and requeued would read like a crash. Here
the launcher exits with that code after one line; any other failure keeps torchrun's full report. Ranks
that torchrun itself stopped (SIGTERM, once the first rank had exited) do not count against a planned stop.
"""
from __future__ import annotations

import signal
import sys

from growclip_train import exit_codes, gc_policy

PLANNED = {exit_codes.PREEMPTED: "preempted: the ranks checkpointed and stopped; rerun the same command to resume"}


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    gc_policy.skip_exit_collection()
    try:
        run(parse_args(argv))
    except ChildFailedError as e:
        codes = {f.exitcode for f in e.failures.values()} - {-signal.SIGTERM}
        if len(codes) == 1 and (code := codes.pop()) in PLANNED:
            print(f"[growclip_ds] exit {code}, {PLANNED[code]}", file=sys.stderr, flush=True)
            return code
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
