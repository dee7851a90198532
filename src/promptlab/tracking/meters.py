"""Measured costs: bytes and parameters stored, peak memory (RSS high-water mark, CUDA peak)."""

from __future__ import annotations

import math
import os
import resource
from pathlib import Path

import torch


def dir_bytes(path: str | os.PathLike) -> int:
    path = Path(path)
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def stored_parameters(path: str | os.PathLike) -> int:
    """Parameters a checkpoint directory stores (every safetensors file's tensors, read from the headers): what
    a task costs to keep, which for P-tuning or prefix projection is far less than what trained."""
    from safetensors import safe_open

    total = 0
    for file in sorted(Path(path).rglob("*.safetensors")):
        with safe_open(file, "pt") as f:
            total += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118 (no __iter__)
    return total


def proc_status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (e.g. VmRSS, VmHWM) in MB; None where there is no /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak resident memory of this process since ``reset()`` (Linux: VmHWM, reset via clear_refs).

    Where the peak cannot be reset (non-Linux), this reports the process-lifetime peak (ru_maxrss), and
    ``reset_ok`` says so; in a multirun that runs jobs in one process that figure is an upper bound.
    """

    def __init__(self) -> None:
        self.reset_ok = False

    def reset(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.reset_ok = True
        except OSError:
            self.reset_ok = False
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    @staticmethod
    def peak_rss_mb() -> float:
        peak = proc_status_mb("VmHWM")
        return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    @staticmethod
    def peak_gpu_mb() -> float | None:
        return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
