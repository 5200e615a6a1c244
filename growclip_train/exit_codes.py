"""Exit codes, the same meaning for every command (``growclip-ds ...`` and ``launchers/grow.py``):

| code | meaning | what to do |
|---|---|---|
| 0 | done (also: nothing left to do, e.g. a finished step or an existing built-in corpus) | |
| 1 | an unexpected error: a bug, reported with its traceback | report it |
| 2 | a usage or input error: a bad flag, config field, file or data, or a refusal to overwrite what a user made; one line names it and what to do | fix what it names |
| 3 | preempted (SIGTERM / SIGUSR1 / a STOP file): a checkpoint was written | rerun the same command to resume (SLURM requeues) |
| 4 | the loss diverged (NaN/inf) too often; ``latest`` is the last finite checkpoint | lower the lr or change the data |
| 5 | a rank's data yields nothing decodable; the message names the shard | fix or drop the shard |
| 6 | a peer rank is gone or hung: a collective failed or waited ``train.collective_timeout_s`` | rerun (after replacing a lost node); it resumes from the last checkpoint |
"""
OK = 0
UNEXPECTED = 1
USAGE = 2
PREEMPTED = 3
DIVERGED = 4
DATA = 5
LOST_PEER = 6
