"""``promptlab-train``: Hydra composes the config; each run (or sweep member) is locked, skipped when already
completed, and handed to the run pipeline (``promptlab.run``); errors become exit codes and one-line messages.

    promptlab-train method=prompt_tuning data=rte seed=3
    promptlab-train -m method=zero_shot,few_shot data=sst2,rte seed=1,2,3
"""

from __future__ import annotations

import errno
import logging
import math
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from promptlab import resume, signals, sweep, tuning
from promptlab.config import CONFIG_MODULE, skip_completed
from promptlab.errors import ConfigError, Diverged
from promptlab.run.execute import is_primary, objective_value, run
from promptlab.run.planning import OccupiedRunDir
from promptlab.run.summary import summary_line
from promptlab.schema import FINAL
from promptlab.sweep import note
from promptlab.tracking import config_hash, read_record, run_lock

log = logging.getLogger("promptlab")


def print_config_error(err: ConfigError) -> None:
    print(f"promptlab: error: {err.problem}\n  fix: {err.fix}", file=sys.stderr, flush=True)


def previous_run(run_dir: Path, cfg: DictConfig) -> dict | None:
    """A completed (or diverged) record in ``run_dir`` that makes running here pointless (same config: skip it)
    or wrong (another config: never replace it, ConfigError); None when the directory is free to use."""
    record = read_record(run_dir)
    if not record or record.get("status") not in FINAL:
        return None
    if record.get("config_hash") != config_hash(cfg):
        raise OccupiedRunDir(
            f"another configuration completed here: {run_dir} holds a completed run with config hash "
            f"{record.get('config_hash')}, this run's is {config_hash(cfg)}; it is kept, not replaced",
            "give this sweep a new hydra.sweep.dir=..., or delete that member directory to redo it")
    return record if skip_completed(cfg) else None


@hydra.main(config_path=CONFIG_MODULE, config_name="train", version_base="1.3")
def hydra_main(cfg: DictConfig) -> float:
    """Hydra task: returns the headline metric on dev (``objective_value``) so sweepers (e.g. Optuna) can
    optimise it."""
    with signals.handling():  # also here: a launcher's worker process never ran main()
        return hydra_task(cfg)


def hydra_task(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    sweep_dir = Path(os.path.abspath(hydra_cfg.sweep.dir)) if multirun else None  # as Hydra makes output_dir
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if sweep_dir and is_primary():
        log.info("%s", sweep.member_line(hydra_cfg, sweep_dir, run_dir))
    return run_locked(cfg, run_dir, sweep_dir)


def run_locked(cfg: DictConfig, run_dir: Path, sweep_dir: Path | None) -> float:
    """``run_member`` while holding the run directory's lock; a member another process holds is skipped.
    Ranks other than 0 of a data-parallel run work beside rank 0, which holds the lock."""
    if not is_primary():
        return run_member(cfg, run_dir, sweep_dir)
    with run_lock(run_dir) as mine:
        if not mine:  # another sweep (or a twin of this one) runs this member right now
            log.warning("skipped %s: another process is running it now (its result.json names the pid and host)",
                        run_dir)
            if sweep_dir:
                note(sweep_dir, run_dir, "running elsewhere", "another process was running this member")
            return math.nan
        return run_member(cfg, run_dir, sweep_dir)


def check_ranks_in_a_sweep(cfg: DictConfig) -> None:
    """Refuse a multi-process strategy whose ranks Lightning would start itself, inside a multirun: its launcher
    starts each rank by re-running this process's command line, which in a multirun is the whole sweep."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    strategy, devices = str(cfg.trainer.get("strategy", "auto")), cfg.trainer.get("devices", 1)
    relaunches = strategy.startswith(("ddp", "fsdp", "deepspeed")) and "spawn" not in strategy
    if relaunches and devices != 1 and not (SLURMEnvironment.detect() or TorchElasticEnvironment.detect()):
        raise ConfigError(
            f"trainer.strategy={strategy} with devices={devices} in a multirun: Lightning starts the other ranks "
            "by re-running the command line, which here would re-run the whole sweep",
            "run each configuration as a single run (promptlab-train without -m), or sweep with "
            "hydra/launcher=slurm and hydra.launcher.tasks_per_node=<devices> so SLURM starts the ranks")


def run_member(cfg: DictConfig, run_dir: Path, sweep_dir: Path | None) -> float:
    """Run (or skip) the job in ``run_dir`` while holding its lock; a multirun member never raises
    (except on SIGINT/SIGTERM, which stops the sweep), a single run exits 2 on a ConfigError."""
    if sweep_dir and cfg.logger.get("wandb") and not cfg.logger.wandb.get("group"):
        with open_dict(cfg):
            cfg.logger.wandb.group = sweep_dir.name  # one wandb group per sweep
    try:
        if sweep_dir:
            check_ranks_in_a_sweep(cfg)
        cfg = tuning.apply_trial(cfg)
        previous = previous_run(run_dir, cfg)
        if previous:  # re-running a sweep in the same directory finishes it instead of restarting it
            log.info("skipped %s: already %s with config hash %s (skip_completed=false redoes it)",
                     run_dir, previous["status"], previous["config_hash"])
            if sweep_dir:
                note(sweep_dir, run_dir, "skipped", f"already {previous['status']}")
            return objective_value(previous)
        result = run(cfg, run_dir)
    except tuning.OutsideSpace as err:  # an arm with fewer points than the sweep's trials: nothing to run
        log.info("skipped %s: %s", run_dir, err)
        if sweep_dir:
            note(sweep_dir, run_dir, "skipped", str(err))
        return math.nan
    except ConfigError as err:
        print_config_error(err)
        if sweep_dir is None:
            raise SystemExit(2) from None
        # the summary prefers the member's own record; this note covers errors that left none (or an old one)
        note(sweep_dir, run_dir, "refused" if isinstance(err, OccupiedRunDir) else "failed",
             f"ConfigError: {err.problem}")
        return math.nan  # the sweep goes on; the summary at its end lists this member
    except signals.Interrupted as err:
        recorded = (read_record(run_dir) or {}).get("status") == "interrupted"  # not when it came before run()
        print(f"promptlab: {run_dir}: interrupted by {err.name}" + ("; recorded in result.json" if recorded else ""),
              file=sys.stderr)
        if resume.checkpoint_path(run_dir).exists():
            again = f"hydra.sweep.dir={sweep_dir}" if sweep_dir else f"hydra.run.dir={run_dir}"
            print(f"promptlab: to continue from its checkpoint, run the same command again with {again}",
                  file=sys.stderr)
        raise
    except Diverged as err:
        print(f"promptlab: {run_dir}: {err}; recorded as diverged in result.json (not a result: lower the "
              "learning rate)", file=sys.stderr, flush=True)
        if sweep_dir is None:
            raise SystemExit(1) from None
        return math.nan  # a failed trial to a sweeper; the sweep summary lists it
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            return _member_failed(err, sweep_dir)
        # Nothing to add to a traceback but noise; the record may not say it either (it could not be written).
        print(f"promptlab: error: {err.strerror} while writing {err.filename or run_dir}\n"
              "  fix: free space on that disk, or point paths.runs_dir=... at another one", file=sys.stderr)
        if sweep_dir is None:
            raise SystemExit(1) from None
        return math.nan
    except Exception as err:
        return _member_failed(err, sweep_dir)
    if is_primary():  # the one line a person reads: the headline as the report shows it, and where the run is
        log.info("%s", summary_line(result, run_dir))
    return objective_value(result)


def _member_failed(err: Exception, sweep_dir: Path | None) -> float:
    """A single run re-raises; a sweep member's failure is logged and the sweep goes on."""
    if sweep_dir is None:
        raise err
    log.exception("run failed (recorded in result.json); the sweep continues: %s", err)
    return math.nan


def main() -> None:
    """``promptlab-train``: exit 0 when every run completed; 2 for a config error (single run); 1 when a
    sweep member failed; 130/143 when stopped by SIGINT/SIGTERM."""
    sweep.STATE = sweep.SweepState()  # fresh per call: tests call main() more than once per process
    with signals.handling():
        try:
            hydra_main()
        except signals.Interrupted as err:
            sweep.stopped(err)
            print(f"promptlab: stopped by {err.name} (exit {err.exit_code})", file=sys.stderr, flush=True)
            sys.exit(err.exit_code)
    if sweep.STATE.exit_code:
        sys.exit(sweep.STATE.exit_code)


if __name__ == "__main__":
    main()
