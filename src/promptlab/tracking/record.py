"""The run's ``result.json`` (``promptlab.schema.RunResult``), written at start, refreshed by a heartbeat and
written a last time at the end; and reading it back."""

from __future__ import annotations

import json
import logging
import os
import platform
import signal
import threading
import traceback
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from promptlab import signals
from promptlab.errors import Diverged
from promptlab.schema import (
    HEARTBEAT_SECONDS,
    MethodInfo,
    RunResult,
    check_fields,
)
from promptlab.tracking.files import write_json_atomic
from promptlab.tracking.provenance import (
    config_hash,
    git_commit,
    git_dirty,
    load_average,
    machine_info,
    versions,
)

log = logging.getLogger("promptlab")


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
