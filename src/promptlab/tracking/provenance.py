"""Where a run came from: the config hash, the git commit, package versions, the machine and its load."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import uuid
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from promptlab.schema import (
    NON_SEMANTIC_KEYS,
    Machine,
)


def config_hash(cfg: DictConfig) -> str:
    """sha256 of the resolved config minus paths/logging: equal hashes mean the same experiment."""
    data = OmegaConf.to_container(cfg, resolve=True)
    for key in NON_SEMANTIC_KEYS:
        data.pop(key, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def git_dirty(cwd: str | os.PathLike | None = None) -> bool | None:
    """Whether the source tree has uncommitted changes (then the commit alone does not reproduce the run)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True,
                             text=True, timeout=5)
        return bool(out.stdout.strip()) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    import lightning
    import peft
    import transformers

    import promptlab

    return {
        "promptlab": promptlab.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
        "peft": peft.__version__, "lightning": lightning.__version__, "python": platform.python_version(),
    }


def new_run_id(method: str, dataset: str, seed: int) -> str:
    """Unique even for jobs started in the same second: a timestamp plus random hex."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{method}-{dataset}-s{seed}-{uuid.uuid4().hex[:6]}"


def machine_info() -> dict[str, Any]:
    """The CPU (model, cores), torch threads, GPU and load average: printed beside every timing."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return asdict(Machine(platform.node(), cpu, os.cpu_count() or 0, torch.get_num_threads(), gpu, load_average()))


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []
