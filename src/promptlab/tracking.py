"""Run records and costs: the run directory, atomic ``result.json``, meters, and the wandb run."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import resource
import subprocess
import tempfile
import traceback
import uuid
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from promptlab.schema import SCHEMA_VERSION, Machine, MethodInfo

# Parts of the config that do not change what a run computes: left out of the config hash.
NON_SEMANTIC_KEYS = ("paths", "logger", "hydra", "tags", "skip_completed", "num_threads")


def _write_atomic(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never a torn one: write a temp file, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    _write_atomic(Path(path), json.dumps(obj, indent=2, default=str))


def write_jsonl_atomic(path: str | os.PathLike, rows: list[dict]) -> None:
    """JSON Lines, atomically (see ``write_json_atomic``)."""
    _write_atomic(Path(path), "".join(json.dumps(r, default=str) + "\n" for r in rows))


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


def versions() -> dict[str, str]:
    import lightning
    import peft
    import transformers

    import promptlab

    return {
        "promptlab": promptlab.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
        "peft": peft.__version__, "lightning": lightning.__version__, "python": platform.python_version(),
    }


def dir_bytes(path: str | os.PathLike) -> int:
    path = Path(path)
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


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


class RunRecord:
    """The run's ``result.json`` (``promptlab.schema.RunResult``): written at start (running), described once
    the task and method are validated, and written again at the end (completed/failed)."""

    def __init__(self, run_dir: str | os.PathLike, cfg: DictConfig, run_id: str, kind: str = "train"):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        data, method = cfg.data, cfg.method
        self.data: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "run_id": run_id,
            "status": "running",
            "kind": kind,
            "method": method.get("name"),
            "method_info": None,
            "model": cfg.model.get("name"),
            "dataset": data.get("name"),
            "output_type": data.get("output_type"),
            "primary_metric": data.get("primary_metric"),
            "higher_is_better": None,
            "chance": None,
            "seed": cfg.get("seed"),
            "k_shot": data.get("k_shot"),
            "train_size": data.get("train_size"),
            "template_id": data.get("template"),
            "num_demos": method.get("num_demos", 0),
            "eval_split": data.get("eval_split"),
            "config_hash": config_hash(cfg),
            "git_commit": git_commit(Path(__file__).parent),
            "versions": versions(),
            "machine": machine_info(),
            "started_at": datetime.now(timezone.utc).isoformat(),
            "metrics": {},
            "costs": {},
        }
        self.write()

    @property
    def path(self) -> Path:
        return self.dir / "result.json"

    def write(self) -> None:
        write_json_atomic(self.path, self.data)

    def describe(self, method_info: MethodInfo, spec, higher_is_better: bool) -> None:
        """What the validated method and task are (display name, output type, primary metric, chance)."""
        self.data.update(method_info=asdict(method_info), output_type=spec.output_type,
                         primary_metric=spec.primary_metric, higher_is_better=higher_is_better, chance=spec.chance)
        self.write()

    def _finish(self, status: str) -> None:
        self.data.update(status=status, finished_at=datetime.now(timezone.utc).isoformat())
        self.data["machine"]["load_end"] = load_average()
        self.write()

    def complete(self, metrics: dict, costs: dict, **extra: Any) -> None:
        self.data.update(metrics=metrics, costs=costs, **extra)
        self._finish("completed")

    def fail(self, err: BaseException, costs: dict | None = None) -> None:
        self.data.update(error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        if costs:
            self.data["costs"] = costs
        self._finish("failed")


def completed_record(run_dir: str | os.PathLike, cfg: DictConfig) -> dict | None:
    """The run's result.json if it completed with this exact config (same hash), else None."""
    try:
        record = json.loads((Path(run_dir) / "result.json").read_text())
    except (OSError, ValueError):
        return None
    same = record.get("status") == "completed" and record.get("config_hash") == config_hash(cfg)
    return record if same else None


def wandb_mode(requested: str) -> str:
    """``auto`` means online when credentials exist, offline otherwise: wandb never prompts or hangs."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        import netrc

        return "online" if netrc.netrc().authenticators("api.wandb.ai") else "offline"
    except (OSError, netrc.NetrcParseError):
        return "offline"


def make_loggers(cfg: DictConfig, run_dir: Path, run_id: str) -> list:
    """Lightning loggers from the ``logger/`` config: wandb, csv, both or none."""
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    loggers = []
    if cfg.logger.get("csv"):
        loggers.append(CSVLogger(save_dir=run_dir, name="csv", version=""))
    wb = cfg.logger.get("wandb")
    if wb and wandb_mode(wb.mode) != "disabled":
        os.environ.setdefault("WANDB_SILENT", "true")
        os.environ.setdefault("WANDB_CONSOLE", "off")
        loggers.append(WandbLogger(
            name=run_id, id=run_id, project=wb.project, entity=wb.get("entity"), group=wb.get("group"),
            job_type=cfg.method.name, tags=[cfg.method.name, cfg.data.name, cfg.model.name, *wb.get("tags", [])],
            save_dir=str(run_dir), mode=wandb_mode(wb.mode), config=OmegaConf.to_container(cfg, resolve=True),
            add_file_policy="immutable",
        ))
    return loggers


def finish_wandb(loggers: list, record: dict, checkpoint_dir: Path | None) -> None:
    """Summary figures, the record's description, the trained checkpoint as an artifact, then close the run."""
    from lightning.pytorch.loggers import WandbLogger

    status, costs = record["status"], record.get("costs") or {}
    for lg in loggers:
        if not isinstance(lg, WandbLogger):
            continue
        import wandb

        run = lg.experiment
        keys = ("kind", "method_info", "output_type", "primary_metric", "higher_is_better", "chance", "eval_split",
                "num_demos", "num_train_examples", "machine")
        run.config.update({"record": {k: record.get(k) for k in keys}}, allow_val_change=True)
        run.summary.update({**{f"eval/{k}": v for k, v in (record.get("metrics") or {}).items()},
                            **{f"cost/{k}": v for k, v in costs.items()}, "status": status})
        if checkpoint_dir is not None and checkpoint_dir.exists() and any(checkpoint_dir.iterdir()):
            art = wandb.Artifact(f"{run.id}-trained", type="model", metadata=costs)
            art.add_dir(str(checkpoint_dir), policy="immutable")  # immutable: no staging copy of the weights
            run.log_artifact(art)
        run.finish(exit_code=0 if status == "completed" else 1)
