"""Training metrics: a tqdm bar on rank 0, ``metrics.jsonl`` in the phase folder, and DeepSpeed's
monitors (``train.monitor``: TensorBoard, CSV, Weights & Biases) through the engine's ``monitor``.

Logged every ``log_every`` steps: loss (mean over ranks), lr, samples/s, the share of step time
spent waiting for data, and the count of skipped bad samples/shards; in the monitors as
``growclip/<name>`` beside DeepSpeed's own ``Train/Samples/*`` events.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm


class MetricsLogger:
    def __init__(self, out_dir: Path, rank: int, total: int, start: int, desc: str, enabled: bool = True,
                 log_every: int = 10, monitor=None):
        self.rank, self.log_every, self.monitor = rank, log_every, monitor
        self.acc = {"loss": 0.0, "step_time": 0.0, "wait_time": 0.0, "samples": 0, "n": 0}
        self.bar = self.jsonl = None
        if rank == 0:
            out_dir.mkdir(parents=True, exist_ok=True)
            self.jsonl = open(out_dir / "metrics.jsonl", "a")
            self.bar = tqdm(total=total, initial=start, desc=desc, unit="step", disable=not enabled,
                            dynamic_ncols=True)

    def step(self, step: int, loss: float, lr: float, step_time: float, wait_time: float, samples: int,
             **extra) -> None:
        a = self.acc
        a["loss"] += loss
        a["step_time"] += step_time
        a["wait_time"] += wait_time
        a["samples"] += samples
        a["n"] += 1
        if self.bar is not None:
            self.bar.update(1)
        if step % self.log_every:
            return
        mean_loss = torch.tensor(a["loss"] / a["n"])
        if dist.is_initialized():  # every rank calls step(), so this collective is matched
            dist.all_reduce(mean_loss)
            mean_loss /= dist.get_world_size()
        rec = {"step": step, "loss": mean_loss.item(), "lr": lr,
               "samples_per_s": a["samples"] / max(a["step_time"], 1e-9),
               "data_wait_share": a["wait_time"] / max(a["step_time"], 1e-9), **extra}
        self.acc = {k: 0 for k in a}
        if self.rank != 0:
            return
        self.jsonl.write(json.dumps(rec) + "\n")
        self.jsonl.flush()
        self.bar.set_postfix(loss=f"{rec['loss']:.3f}", sps=f"{rec['samples_per_s']:.0f}",
                             wait=f"{rec['data_wait_share']:.0%}")
        if self.monitor is not None and self.monitor.enabled:
            self.monitor.write_events([(f"growclip/{k}", v, step) for k, v in rec.items()
                                       if k != "step" and isinstance(v, (int, float))])

    def close(self) -> None:
        if self.rank == 0:
            self.bar.close()
            self.jsonl.close()
