"""Run records and costs: the run directory, atomic ``result.json``, meters, and the wandb run."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import resource
import signal
import socket
import subprocess
import tempfile
import threading
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from filelock import FileLock, Timeout
from omegaconf import DictConfig, OmegaConf

from promptlab import signals
from promptlab.errors import Diverged
from promptlab.schema import (
    HEARTBEAT_SECONDS,
    NON_SEMANTIC_KEYS,
    Machine,
    MethodInfo,
    RunResult,
    check_fields,
)

log = logging.getLogger("promptlab")



def _file_mode() -> int:
    """What ``open()`` would give a new file (0644 under the usual umask 022). mkstemp's 0600 would hide
    records from the rest of a group sharing a runs dir."""
    umask = os.umask(0o022)  # reading the umask means setting it: done once, at import, not per write
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


def _write_atomic(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never a torn one: write a temp file, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def strict(obj: Any, _open: set[int] | None = None) -> Any:
    """``obj`` with every non-finite float (NaN, ±inf) as None: what promptlab writes is strict JSON, which has
    no NaN (Python's ``json`` would write the bare ``NaN`` that other readers reject)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if not isinstance(obj, dict | list | tuple):
        return obj
    opened = set() if _open is None else _open  # the containers being copied: one seen again is a cycle
    if id(obj) in opened:
        raise ValueError("Circular reference detected")
    opened.add(id(obj))
    try:
        if isinstance(obj, dict):
            return {k: strict(v, opened) for k, v in obj.items()}
        return [strict(v, opened) for v in obj]
    finally:
        opened.discard(id(obj))


def to_json(obj: Any, **kwargs: Any) -> str:
    """Strict JSON text of ``obj`` (``strict``; other types as ``str``)."""
    return json.dumps(strict(obj), allow_nan=False, default=str, **kwargs)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    _write_atomic(Path(path), to_json(obj, indent=2))


def write_jsonl_atomic(path: str | os.PathLike, rows: list[dict]) -> None:
    """JSON Lines, atomically (see ``write_json_atomic``)."""
    _write_atomic(Path(path), "".join(to_json(r) + "\n" for r in rows))


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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _value(node: Any, key: str) -> Any:
    """``node[key]`` as a JSON scalar, or None: a record is written even for a config that does not resolve
    or holds values of the wrong type (the run then fails with a ConfigError saying which)."""
    try:
        value = node.get(key)
    except Exception:  # an interpolation that does not resolve, a node that is not a mapping
        return None
    return value if value is None or isinstance(value, str | int | float | bool) else str(value)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _config_text(cfg: DictConfig) -> tuple[str, str | None]:
    """(config.yaml text, config hash); unresolved text and no hash when the config does not resolve."""
    try:
        return OmegaConf.to_yaml(cfg, resolve=True), config_hash(cfg)
    except Exception:
        return OmegaConf.to_yaml(cfg), None


class RunRecord:
    """The run's ``result.json`` (``promptlab.schema.RunResult``): written at start (running), described once
    the task and method are validated, refreshed by a heartbeat while running, and written a last time at
    the end (completed/failed/interrupted).

    One lock orders every write, so the heartbeat thread never writes over the final record.
    """

    def __init__(self, run_dir: str | os.PathLike, cfg: DictConfig, run_id: str, kind: str = "train",
                 resumes: list[dict] | None = None, primary: bool = True):
        self.dir = Path(run_dir)
        self.primary = primary  # False: a data-parallel rank other than 0 keeps the record in memory only
        text, digest = _config_text(cfg)
        if primary:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "config.yaml").write_text(text)
        self.phase = "setup"  # what the run was doing: named in the error of an interrupted run
        self._lock = threading.RLock()
        self._done = False
        self._stop = threading.Event()
        data, method = cfg.get("data") or {}, cfg.get("method") or {}
        if cfg.get("mixture") is not None:  # instruction tuning: many tasks, each evaluated with its own template
            data = {"name": _value(cfg.mixture, "name"), "output_type": "mixture", "primary_metric": "seen_mean",
                    "eval_split": "per task"}
        self.data: dict[str, Any] = RunResult(
            run_id=run_id, status="running", kind=kind, method=_value(method, "name"), method_info=None,
            model=_value(cfg.get("model") or {}, "name"), dataset=_value(data, "name"),
            output_type=_value(data, "output_type"), primary_metric=_value(data, "primary_metric"),
            higher_is_better=None, chance=None, seed=_int_or_none(_value(cfg, "seed")),
            k_shot=_int_or_none(_value(data, "k_shot")), train_size=_int_or_none(_value(data, "train_size")),
            template_id=_int_or_none(_value(data, "template")),
            num_demos=_int_or_none(_value(method, "num_demos")) or 0, eval_split=_value(data, "eval_split"),
            config_hash=digest, git_commit=git_commit(Path(__file__).parent), versions=versions(),
            machine=machine_info(), started_at=_now(), git_dirty=git_dirty(Path(__file__).parent),
            pid=os.getpid(), host=platform.node(), heartbeat_at=_now(), resumes=resumes or [],
        ).to_dict()
        self.write()

    @property
    def path(self) -> Path:
        return self.dir / "result.json"

    def write(self) -> None:
        if not self.primary:
            return
        # deferred: a signal during the write is raised after it, so the file is never left half-updated
        with self._lock, signals.deferred():
            write_json_atomic(self.path, self.data)

    def start_heartbeat(self, every: float = HEARTBEAT_SECONDS) -> None:
        """Refresh ``heartbeat_at`` every ``every`` seconds until the run ends: a record whose heartbeat is old
        belongs to a process that died without a word (``schema.is_stale``)."""
        if not self.primary:
            return
        threading.Thread(target=self._beat, args=(every,), name="promptlab-heartbeat", daemon=True).start()

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            with self._lock:
                if self._done:
                    return
                self.data["heartbeat_at"] = _now()
                try:
                    self.write()
                except OSError as err:  # a full disk must not kill the run; the next beat tries again
                    log.warning("could not refresh the heartbeat of %s: %s", self.path, err)

    def describe(self, method_info: MethodInfo, spec, higher_is_better: bool) -> None:
        """What the validated method and task are (display name, output type, primary metric, chance)."""
        with self._lock:
            self.data.update(method_info=asdict(method_info), output_type=spec.output_type,
                             primary_metric=spec.primary_metric, higher_is_better=higher_is_better,
                             chance=spec.chance)
            self.write()

    def update(self, **fields: Any) -> None:
        """Top-level fields known before the run ends (e.g. a trial's tuning), so a failed or diverged record
        has them too."""
        check_fields(fields)
        with self._lock:
            self.data.update(fields)
            self.write()

    def provenance(self, **parts: Any) -> None:
        """What reproducing the run needs beyond its config: seeds per component, data sources, model identity."""
        with self._lock:
            self.data.setdefault("provenance", {}).update(parts)
            self.write()

    def resumed(self, step: int, point: Any) -> None:
        """This attempt continues from ``point`` (a ``resume.ResumePoint``), restored at optimiser step ``step``."""
        with self._lock:
            self.data["resumes"].append({"at": _now(), "from_step": step, "checkpoint": str(point.checkpoint),
                                         "previous_status": point.previous_status})
            self.write()

    def _finish(self, status: str, **fields: Any) -> None:
        """The last write; later calls change nothing (a signal after completion must not undo it)."""
        check_fields(fields)
        with signals.deferred(), self._lock:
            if self._done:
                return
            self._stop.set()
            now = _now()
            self.data.update(fields, status=status, finished_at=now, heartbeat_at=now)
            self.data["machine"]["load_end"] = load_average()
            self.write()
            self._done = True

    @property
    def finished(self) -> bool:
        return self._done

    def close(self) -> None:
        """Stop the heartbeat even if the last write failed: a dead run must not look alive."""
        self._stop.set()

    def complete(self, metrics: dict, costs: dict, **extra: Any) -> None:
        self._finish("completed", metrics=metrics, costs=costs, **extra)

    def fail(self, err: BaseException, costs: dict | None = None) -> None:
        """``failed`` with the error, ``interrupted`` when ``err`` means SIGINT/SIGTERM, ``diverged`` (with the
        step) when training or scoring produced non-finite numbers."""
        extra = {"costs": costs} if costs else {}
        if isinstance(err, Diverged):
            self._finish("diverged", error=f"Diverged: {err}", diverged_at_step=err.step, traceback=None, **extra)
            return
        signum = signals.signal_of(err)
        if signum is not None:
            name = signal.Signals(signum).name
            self._finish("interrupted", error=f"Interrupted: {name} during {self.phase}", traceback=None, **extra)
            return
        message = str(err).strip()
        self._finish("failed", error=f"{type(err).__name__}: {message}" if message else type(err).__name__,
                     traceback=traceback.format_exc(), **extra)


def read_record(run_dir: str | os.PathLike) -> dict | None:
    """The run's result.json, or None when there is none or it cannot be read."""
    try:
        record = json.loads((Path(run_dir) / "result.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return record if isinstance(record, dict) else None


@contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[bool]:
    """Hold an exclusive lock on ``<run_dir>/.lock`` for the block; yields False when another live process
    holds it (two sweeps in one directory must not both run a member). filelock's OS lock (flock; msvcrt on
    Windows): the OS drops it when its holder dies, so a crashed run never leaves the directory locked; never
    its soft (file-exists) fallback, which a crash would leave behind. The file stays (removing it would race
    with a new holder)."""
    path = Path(run_dir) / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, mode=FILE_MODE, fallback_to_soft=False, preserve_lock_file=True)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


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


def wandb_server() -> tuple[str, int]:
    """The wandb API's host and port (``WANDB_BASE_URL`` for a self-hosted server)."""
    url = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    return url.hostname or "api.wandb.ai", url.port or (80 if url.scheme == "http" else 443)


def wandb_reachable(timeout: float = 3.0) -> bool:
    """True when the wandb API accepts a connection; fast (at most ``timeout``) when there is no network."""
    try:
        socket.create_connection(wandb_server(), timeout=timeout).close()
        return True
    except OSError:
        return False


def effective_wandb_mode(requested: str) -> str:
    """``wandb_mode``, made safe before anything loads: ``disabled`` when wandb cannot be imported, ``offline``
    when online is asked but the server cannot be reached (wandb.init would wait 90 s). One warning each."""
    mode = wandb_mode(requested)
    if mode == "disabled":
        return mode
    try:
        import wandb  # noqa: F401
    except Exception as err:  # not installed, or broken: neither is a reason to lose the run
        log.warning("wandb cannot be imported (%s): this run is not logged to wandb "
                    "(fix: pip install wandb, or logger=csv)", err)
        return "disabled"
    if mode == "online" and not wandb_reachable():
        host, port = wandb_server()
        log.warning("wandb: %s:%d cannot be reached; logging offline under the run directory "
                    "(`wandb sync` uploads it later)", host, port)
        if os.environ.get("WANDB_MODE"):  # the environment would otherwise win over the logger's mode
            os.environ["WANDB_MODE"] = "offline"
        return "offline"
    return mode


def make_loggers(cfg: DictConfig, run_dir: Path, run_id: str, mode: str | None = None) -> list:
    """Lightning loggers from the ``logger/`` config: wandb, csv, both or none. ``mode``: the wandb mode
    already resolved by ``effective_wandb_mode`` (resolved here when None)."""
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    loggers = []
    if cfg.logger.get("csv"):
        loggers.append(CSVLogger(save_dir=run_dir, name="csv", version=""))
    wb = cfg.logger.get("wandb")
    mode = (mode or effective_wandb_mode(wb.mode)) if wb else "disabled"
    if mode != "disabled":
        os.environ.setdefault("WANDB_SILENT", "true")
        os.environ.setdefault("WANDB_CONSOLE", "off")
        loggers.append(WandbLogger(
            name=run_id, id=run_id, project=wb.project, entity=wb.get("entity"), group=wb.get("group"),
            job_type=cfg.method.name, tags=[cfg.method.name, cfg.data.name, cfg.model.name, *wb.get("tags", [])],
            save_dir=str(run_dir), mode=mode, config=OmegaConf.to_container(cfg, resolve=True),
            add_file_policy="immutable",
            resume="allow",  # a resumed run (same id) continues its wandb run instead of starting another
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
