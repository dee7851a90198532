"""Sweeps (``promptlab-train -m``): what becomes of each member, said at the end, and the exit code.

A Hydra callback (``conf/train.yaml``: ``hydra.callbacks``) runs in the launching process, also when a
launcher runs the members elsewhere (joblib workers, SLURM jobs). It checks the output directory can be
written before anything starts, and at the end reads what this sweep left in its directory: each
member's ``result.json`` (failed, interrupted, ...) and, for members that ended without a record of
their own (skipped, refused, running elsewhere), a note under ``<sweep dir>/.promptlab/``. One line per
member that did not complete, and exit 1 if any failed, so scripts and CI notice. Each member says, when it
starts, which one of how many it is (``member_line``).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from promptlab.config import check_writable
from promptlab.errors import ConfigError
from promptlab.signals import Interrupted
from promptlab.tracking import read_record, write_json_atomic

NOTES_DIR = ".promptlab"
BAD = ("failed", "interrupted", "refused")  # outcomes that make the sweep exit 1


@dataclass
class SweepState:
    """The sweep this process launched (set by the callback; read by ``promptlab.train.main``)."""

    dir: Path | None = None
    started: datetime | None = None
    planned: int | None = None  # number of members, when the sweeper's plan can be counted up front
    swept: tuple[str, ...] = ()  # the keys the sweep varies (seed, data, method.lr, ...)
    exit_code: int = 0


STATE = SweepState()


@dataclass
class Outcome:
    dir: str
    status: str
    error: str = ""


class SweepCallback(Callback):
    """Checks the output directory first; ends every multirun with a summary and an exit code."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_output(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        STATE.dir = _check_output(config, "hydra.sweep.dir")
        STATE.started, STATE.planned, STATE.exit_code = datetime.now(timezone.utc), planned_members(config), 0
        STATE.swept = swept_keys(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        STATE.exit_code = report(STATE)


def _check_output(config: DictConfig, key: str) -> Path | None:
    """The output directory, proven writable; exit 2 with a cause and a fix when it is not."""
    try:  # absolute and normalised as Hydra makes a job's output_dir, so paths compare equal
        path = Path(os.path.abspath(str(OmegaConf.select(config, key))))
    except Exception:  # a directory that does not resolve is Hydra's to report
        return None
    try:
        return check_writable(path, "the output directory")
    except ConfigError as err:
        print(f"promptlab: error: {err.problem}\n  fix: {err.fix}", file=sys.stderr)
        raise SystemExit(2) from None


def _sweep_overrides(config: DictConfig) -> list:
    """The sweep's overrides, parsed: the sweeper's params (an experiment's) and the command line's."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{k}={v}" for k, v in (OmegaConf.select(config, "hydra.sweeper.params") or {}).items()]
    return OverridesParser.create().parse_overrides([*params, *config.hydra.overrides.task])


def planned_members(config: DictConfig) -> int | None:
    """How many members the basic sweeper will launch (other sweepers decide as they go: None)."""
    if not str(OmegaConf.select(config, "hydra.sweeper._target_")).endswith("BasicSweeper"):
        return None
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

        return len(BasicSweeper.split_arguments(_sweep_overrides(config), None)[0])
    except Exception:  # counting is a courtesy; the sweep itself reports bad overrides
        return None


def swept_keys(config: DictConfig) -> tuple[str, ...]:
    """The keys the sweep varies (``seed``, ``data``, ``method.lr``), in the order they were given."""
    try:
        return tuple(dict.fromkeys(o.get_key_element() for o in _sweep_overrides(config) if o.is_sweep_override()))
    except Exception:
        return ()


def member_line(hydra_cfg: DictConfig, sweep_dir: Path, run_dir: Path) -> str:
    """What a member says when it starts: "sweep member 2 of 6: data=rte seed=1 · run dir <dir>". Hydra's job
    number says which; the count is this process's sweep's (the basic launcher runs members here) or, in a
    launcher's worker, counted again from the multirun.yaml Hydra wrote in the sweep directory (Optuna: its
    n_trials)."""
    total, swept = (STATE.planned, STATE.swept) if STATE.dir == sweep_dir else (None, ())
    if not total or not swept:
        try:
            sweep_cfg = OmegaConf.load(sweep_dir / "multirun.yaml")
            total, swept = total or planned_members(sweep_cfg), swept or swept_keys(sweep_cfg)
        except Exception:  # a launcher without the file: say less
            pass
    total = total or OmegaConf.select(hydra_cfg, "sweeper.n_trials")
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        own = OverridesParser.create().parse_overrides(list(hydra_cfg.overrides.task))
        values = [o.input_line for o in own if o.get_key_element() in swept]
    except Exception:
        values = []
    from promptlab.run.summary import shown_path  # as the member's last line shows it

    which = f"sweep member {int(hydra_cfg.job.num) + 1}" + (f" of {total}" if total else "")
    return " · ".join([f"{which}: {' '.join(values)}" if values else which, f"run dir {shown_path(run_dir)}"])


def note(sweep_dir: Path, run_dir: Path, status: str, message: str = "") -> None:
    """Leave word of what became of a member, for members that may have no record of their own from this
    sweep (skipped, refused, running elsewhere, a config error); ``outcomes`` prefers the record if any.
    The member's directory is not touched."""
    name = str(run_dir.relative_to(sweep_dir) if run_dir.is_relative_to(sweep_dir) else run_dir.name)
    write_json_atomic(sweep_dir / NOTES_DIR / f"{name.replace(os.sep, '__')}.json",
                      {"dir": str(run_dir), "status": status, "error": message,
                       "at": datetime.now(timezone.utc).isoformat()})


def _since(stamp: Any, start: datetime) -> bool:
    try:
        return datetime.fromisoformat(stamp) >= start
    except (TypeError, ValueError):
        return False


RUNNING = Outcome("", "running")


def outcomes(state: SweepState) -> list[Outcome]:
    """What this sweep did: records started since it began (re-runs of other sweeps' members excluded),
    then notes, one per member directory."""
    if state.dir is None or state.started is None:
        return []
    found: dict[str, Outcome] = {}
    for path in sorted(state.dir.rglob("result.json")):
        rec = read_record(path.parent)
        if rec and rec.get("kind", "train") == "train" and _since(rec.get("started_at"), state.started):
            error = (str(rec.get("error") or "").strip().splitlines() or [""])[0]
            found[str(path.parent)] = Outcome(str(path.parent), str(rec.get("status")), error)
    for path in sorted((state.dir / NOTES_DIR).glob("*.json")):
        rec = _read_note(path)
        if rec and _since(rec.get("at"), state.started) and found.get(rec["dir"], RUNNING).status == "running":
            # no record of this sweep's own, or another process's that is still running
            found[rec["dir"]] = Outcome(rec["dir"], str(rec.get("status")), str(rec.get("error", "")))
    return list(found.values())


def _read_note(path: Path) -> dict | None:
    try:
        rec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("dir"), str) else None


def report(state: SweepState, stopped_by: Interrupted | None = None) -> int:
    """Print the summary (stderr); 1 when a member failed, was interrupted or refused, else 0."""
    if state.dir is None:
        return 0
    done = outcomes(state)
    counts = Counter(o.status for o in done)
    tally = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no member ran"
    lines = [f"promptlab: sweep {state.dir}: {tally}"]
    lines += [f"  {o.status}: {o.dir}: {o.error}" for o in done
              if o.status in (*BAD, "running elsewhere", "diverged")]
    if stopped_by is not None:
        left = f"{state.planned - len(done)} of {state.planned}" if state.planned else "the remaining"
        lines.append(f"  stopped by {stopped_by.name}: {left} members were not run; run the same command again "
                     "to finish the sweep (completed members are skipped)")
    print("\n".join(lines), file=sys.stderr, flush=True)
    return 1 if any(o.status in BAD for o in done) or stopped_by is not None else 0


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` (on this host) still runs; a zombie does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def close_orphans(state: SweepState, err: Interrupted, wait: float = 2.0) -> None:
    """Members killed with the sweep (a launcher's worker processes are SIGKILLed when it stops) cannot
    record themselves: mark their ``running`` records ``interrupted`` once their process is gone."""
    if state.dir is None or state.started is None:
        return
    deadline = time.monotonic() + wait
    for path in state.dir.rglob("result.json"):
        rec = read_record(path.parent)
        if not rec or rec.get("status") != "running" or not _since(rec.get("started_at"), state.started):
            continue
        pid = rec.get("pid")
        if rec.get("host") != platform.node() or not isinstance(pid, int) or pid == os.getpid():
            continue
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not pid_alive(pid):
            now = datetime.now(timezone.utc).isoformat()
            rec.update(status="interrupted", finished_at=now, error=f"Interrupted: {err.name}; the sweep stopped "
                       "and this member's process ended with it")
            write_json_atomic(path, rec)


def stopped(err: Interrupted) -> None:
    """The launching process was interrupted: close what the sweep leaves behind and say what did not run."""
    if STATE.dir is not None:
        close_orphans(STATE, err)
        report(STATE, stopped_by=err)
