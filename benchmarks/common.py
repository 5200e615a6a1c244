"""What every benchmark shares: the device name, dense peak FLOP/s tables, a measured matmul peak,
and writing a record as JSON plus a Markdown table under docs/benchmarks/<name>_<device>_<date>."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "docs" / "benchmarks"

# Dense (no sparsity) peak FLOP/s per device: the package's table (growclip_train/plan_cluster.py), by lower-case name.
from growclip_train.plan_cluster import GPUS  # noqa: E402

PEAK_FLOPS = {kind.lower(): peaks for kind, (peaks, _) in GPUS.items()}


def device_name() -> str:
    """'h100', 'a100', ... for a known GPU, the raw CUDA name otherwise, 'cpu' without a GPU."""
    import torch

    from growclip_train.accelerator import on_cpu

    if on_cpu():
        return "cpu"
    name = torch.cuda.get_device_name().lower()
    return next((k for k in PEAK_FLOPS if k in name), name.replace(" ", "_"))


def table_peak(device: str, precision: str) -> float | None:
    return PEAK_FLOPS.get(device, {}).get(precision)


def machine() -> str:
    return f"{platform.machine()} {os.cpu_count()} cores"


def measure_matmul_peak(dtype, device, n: int = 1024, seconds: float = 1.0) -> float:
    """FLOP/s of an n x n matmul, repeated for about ``seconds``, in this process (run it on every
    rank at once to get what the ranks together can do)."""
    import torch

    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if a.is_cuda else (lambda: None)
    a @ b
    sync()
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    sync()
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def write_record(name: str, record: dict, table: list[str], device: str = "cpu") -> Path:
    """Write ``record`` (plus machine and date) as JSON and ``table`` as Markdown; returns the JSON path."""
    record = {**record, "machine": machine(), "device": device, "date": time.strftime("%Y-%m-%d")}
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    stem = f"{name}_{device}_{record['date']}".replace("/", "-")   # a tag may hold dots ("1.7M"): no with_suffix
    (OUT_DIR / f"{stem}.json").write_text(json.dumps(record, indent=1))
    (OUT_DIR / f"{stem}.md").write_text("\n".join(table) + "\n")
    return OUT_DIR / f"{stem}.json"


def new_plot(size=(7, 4.5)):
    """A matplotlib figure and axes on the file backend (no display on these machines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size)


def save_plot(fig, ax, path, xlabel: str, ylabel: str, title: str) -> None:
    """Labels, grid and legend, then the PNG at ``path``."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
