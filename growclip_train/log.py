"""The application's log: one ``logging`` logger, lines ``[growclip_ds] ...``, information on stdout and
warnings and errors on stderr (so a job log reads as before and a pipe of stdout stays clean of errors).

Rank 0 logs at ``--log-level`` (or ``GROWCLIP_LOG_LEVEL``, default INFO); the other ranks only warnings and
errors, unless ``--log-ranks`` (or ``GROWCLIP_LOG_RANKS=1``) asks for every rank, each line then prefixed
with its rank. The launcher passes both settings to its ranks through the environment.

    from growclip_train.log import log
    log.info("resuming %s", tag)
"""
from __future__ import annotations

import logging
import os
import sys

NAME = "growclip_ds"
log = logging.getLogger(NAME)


class _Console(logging.Handler):
    """stdout below WARNING, stderr from it; the streams looked up per line (pytest's capture, redirections)."""

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        stream.write(self.format(record) + "\n")
        stream.flush()


def setup(level: str | None = None, ranks: bool | None = None) -> logging.Logger:
    """Configure ``log`` for this process (idempotent); arguments override the environment and are exported
    to it, so the ranks a launcher starts log the same way."""
    if level:
        os.environ["GROWCLIP_LOG_LEVEL"] = level.upper()
    if ranks:
        os.environ["GROWCLIP_LOG_RANKS"] = "1"
    level = os.environ.get("GROWCLIP_LOG_LEVEL", "INFO").upper()
    every = os.environ.get("GROWCLIP_LOG_RANKS") == "1"
    rank = int(os.environ.get("RANK", "0"))
    handler = _Console()
    handler.setFormatter(logging.Formatter(f"[{NAME} rank {rank}] %(message)s" if every else f"[{NAME}] %(message)s"))
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(level if rank == 0 or every else max(logging.WARNING, logging.getLevelName(level)))
    return log


def add_arguments(parser) -> None:
    parser.add_argument("--log-level", default=None, choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="default INFO (GROWCLIP_LOG_LEVEL)")
    parser.add_argument("--log-ranks", action="store_true",
                        help="every rank logs, each line with its rank (default: rank 0; GROWCLIP_LOG_RANKS=1)")


setup()
