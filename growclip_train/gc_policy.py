"""Cycle collection in the processes that load torch and DeepSpeed (ranks, the CLI, the launcher).

Loading torch, DeepSpeed, torchvision (which loads torch._dynamo) and transformers makes about a million
objects that live as long as the process. Python's collector walks them all at every full collection, and
once more at interpreter exit: measured with perf on 2 CPU cores, that last collection was 1.5-2 s of every
rank's exit (a tiny step-1 rank: 2.1 s from the end of ``main`` to the process's end; 0.3 s without it).
Here they are frozen once loaded (``gc.freeze``: no collection walks them again) and the exit collection
walks nothing. Memory is unchanged: what a run makes after the freeze is collected as usual, and the OS
frees everything at exit (Python never promised ``__del__`` for objects alive at exit).
"""
from __future__ import annotations

import atexit
import contextlib
import gc


@contextlib.contextmanager
def loading_libraries():
    """Collection paused while the libraries load (imports make no garbage cycles worth the walk), and what
    they made frozen after it."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def skip_exit_collection() -> None:
    """Freeze everything at interpreter exit, before its final collection (idempotent)."""
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)
