"""What a phase does when the loss stops being a number.

Policy (``train.max_nonfinite``, default 10): a step whose loss is NaN or inf on any rank (ranks
agree with one all-reduce) is counted and nothing of it is saved; where DeepSpeed skips such an
update itself (ZeRO 1-2: a non-finite gradient norm; fp16: its loss scaler) training goes on, and
after every such step the weights are checked on every rank. The phase aborts with
``NonFiniteError`` (exit code ``NONFINITE_EXIT``) when the weights are no longer finite (ZeRO-0 and
ZeRO-3 apply a non-finite update), after ``max_nonfinite`` non-finite steps in a row, or when the
last step of the phase is non-finite. No checkpoint is saved after a non-finite step, so ``latest``
stays at the last checkpoint whose loss was finite, and a non-finite model is never consolidated.
``max_nonfinite`` = 0 aborts at the first non-finite step.
"""
from __future__ import annotations

import torch

from growclip_ds.distributed import any_ranks
from growclip_ds.model_folder import NonFiniteError, nonfinite_tensors  # noqa: F401  (the library's; part of this API)
from growclip_train import exit_codes
from growclip_train.log import log

NONFINITE_EXIT = exit_codes.DIVERGED


def local_weights_finite(module) -> bool:
    """This rank's copy of the weights (its partition under ZeRO-3) holds no NaN or inf."""
    for p in module.parameters():
        t = getattr(p, "ds_tensor", p)          # ZeRO-3: the rank's own partition
        if t.numel() and not bool(torch.isfinite(t.detach()).all()):
            return False
    return True


class Guard:
    """Counts non-finite steps of one phase and decides when to stop."""

    def __init__(self, max_in_row: int, where: str, latest=lambda: None):
        self.max_in_row, self.where, self.latest = max_in_row, where, latest
        self.in_row, self.total, self.first = 0, 0, None

    def after_step(self, step: int, nonfinite: bool, module, last_step: bool) -> None:
        """Call on every rank after each optimizer step with the agreed flag; raises to abort."""
        if not nonfinite:
            self.in_row = 0
            return
        self.in_row += 1
        self.total += 1
        self.first = step if self.in_row == 1 else self.first
        if any_ranks(not local_weights_finite(module))[0]:
            self.abort(step, "the weights are no longer finite (the update was applied)")
        if self.in_row > self.max_in_row:
            self.abort(step, f"{self.in_row} non-finite steps in a row (train.max_nonfinite={self.max_in_row})")
        if last_step:
            self.abort(step, "the last step of the phase is non-finite")
        log.warning(f"{self.where}: non-finite loss at step {step}; update skipped, "
                    f"{self.in_row} in a row")

    def abort(self, step: int, why: str) -> None:
        raise NonFiniteError(
            f"{self.where}: loss is NaN/inf from step {self.first} to {step}: {why}. Nothing after step "
            f"{self.first - 1} was saved; `latest` is {self.latest() or '(no checkpoint yet)'}, the last checkpoint "
            "whose loss was finite. Lower train.lr or train.weight_decay (or check the data), then rerun the "
            "same command: it resumes from that checkpoint")
