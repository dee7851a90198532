"""``promptlab-train``: compose a config, build task/backbone/method, fit, ``evaluate``, record.

    promptlab-train method=prompt_tuning data=rte seed=3
    promptlab-train -m method=zero_shot,few_shot data=sst2,rte seed=1,2,3
"""

from __future__ import annotations

import logging
import math
import sys
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from promptlab.data import PromptDataModule, eval_items
from promptlab.errors import ConfigError
from promptlab.evaluation.evaluate import evaluate
from promptlab.evaluation.metrics import get_metric
from promptlab.methods import Method, build_method, count_parameters
from promptlab.models import Backbone, load_backbone
from promptlab.module import PromptModule
from promptlab.progress import progress_callbacks
from promptlab.prompts import Encoder
from promptlab.tasks import Task, TaskSpec, load_task, sample_demos, training_subset
from promptlab.tracking import (
    PeakMemory,
    RunRecord,
    completed_record,
    dir_bytes,
    finish_wandb,
    make_loggers,
    new_run_id,
    write_jsonl_atomic,
)

log = logging.getLogger("promptlab")
CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"
# ${uid:} in run directory names: unique even when jobs start in the same second.
OmegaConf.register_new_resolver("uid", lambda: uuid.uuid4().hex[:6], use_cache=True, replace=True)


def quiet_third_party_noise() -> None:
    """Silence library chatter that says nothing about the run (tips, deprecations inside libraries)."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    for pattern in (".*LeafSpec.*", ".*is_gradient_checkpointing.*", ".*anonymous setting.*",
                    ".*smaller than the logging interval.*", ".*does not have many workers.*",
                    ".*Position ids are not supported.*"):
        warnings.filterwarnings("ignore", message=pattern)


@dataclass
class Plan:
    """Everything a run decides before the model loads (so every config error comes first)."""

    spec: TaskSpec
    method: Method
    task: Task
    train_rows: list[dict]
    demos: list[dict]


def plan(cfg: DictConfig) -> Plan:
    """Validate the task and method, load the data, draw the budget and the demonstrations."""
    spec = TaskSpec.from_config(cfg.data)
    method = build_method(cfg.method)
    method.validate(spec)
    task = load_task(spec, cfg.paths.data_root)
    needs_train = method.trains or method.num_demos > 0
    train_rows = training_subset(task, cfg.seed) if needs_train else []
    demos = sample_demos(train_rows, task, method.num_demos, cfg.seed)
    return Plan(spec, method, task, train_rows if method.trains else [], demos)


def build_module(p: Plan, backbone: Backbone, model: torch.nn.Module) -> tuple[PromptModule, Encoder]:
    tok = backbone.tokenizer
    readout = p.method.readout(tok, p.spec)
    demos = p.method.demos(model, tok, p.spec, p.demos, readout)
    return PromptModule(model, readout, p.method.optim()), Encoder(tok, p.spec, demos, p.method.assistant_prefix)


def make_trainer(cfg: DictConfig, run_dir: Path, loggers: list, trains: bool) -> L.Trainer:
    callbacks, bar = progress_callbacks()
    if loggers and trains:
        callbacks.append(L.pytorch.callbacks.LearningRateMonitor("step"))
    return hydra.utils.instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks,
                                   enable_progress_bar=bar, default_root_dir=str(run_dir))


def run(cfg: DictConfig, run_dir: str | Path) -> dict:
    """One promptlab run in ``run_dir``; returns the run record (also written to result.json)."""
    run_dir = Path(run_dir)
    record = RunRecord(run_dir, cfg, new_run_id(cfg.method.name, cfg.data.name, cfg.seed))
    quiet_third_party_noise()
    memory = PeakMemory()
    memory.reset()
    loggers, costs = [], {}
    try:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        if cfg.get("num_threads"):
            torch.set_num_threads(cfg.num_threads)
        p = plan(cfg)  # all checks run before the (slow) model load
        record.describe(p.method.info(), p.spec, get_metric(p.spec.primary_metric).higher_is_better)

        backbone = load_backbone(cfg.model, cfg.paths.cache_dir)
        model = p.method.prepare(backbone, p.spec)
        module, encoder = build_module(p, backbone, model)
        loggers = make_loggers(cfg, run_dir, record.data["run_id"])
        trainer = make_trainer(cfg, run_dir, loggers, p.method.trains)
        trainable, total = count_parameters(model)
        costs = {"trainable_params": trainable, "total_params": total, "trainable_fraction": trainable / total,
                 "model_load_seconds": round(backbone.load_seconds, 3)}

        train_seconds, checkpoint = 0.0, None
        if p.method.trains:
            datamodule = PromptDataModule(encoder, p.train_rows, [], cfg.method.batch_size, cfg.eval_batch_size,
                                          cfg.seed)
            start = time.perf_counter()
            trainer.fit(module, datamodule=datamodule)
            train_seconds = time.perf_counter() - start
            checkpoint = run_dir / "checkpoint"
            p.method.save(model, checkpoint)
        module.model.eval()
        ev = evaluate(module, p.spec, eval_items(encoder, p.task.eval), trainer, cfg.eval_batch_size)
        write_jsonl_atomic(run_dir / "predictions.jsonl", ev.rows)

        costs.update({
            "train_seconds": round(train_seconds, 3),
            "train_steps": trainer.global_step if p.method.trains else 0,
            "train_examples_seen": module.examples_seen,
            "train_tokens_seen": module.tokens_seen,
            "train_examples_per_second": module.examples_seen / train_seconds if train_seconds else None,
            **ev.costs(),
            **p.method.demo_costs,
            "peak_rss_mb": round(memory.peak_rss_mb(), 1),
            "peak_rss_reset_per_run": memory.reset_ok,
            "peak_gpu_mb": memory.peak_gpu_mb(),
            "checkpoint_bytes": dir_bytes(checkpoint) if checkpoint else 0,
            "truncated_prompts": encoder.truncated,
        })
        for lg in loggers:
            lg.log_metrics({f"eval/{k}": v for k, v in ev.metrics.items()}, step=trainer.global_step)
            lg.save()  # the CSV logger only writes on save()
        record.complete(ev.metrics, costs, num_train_examples=len(p.train_rows), num_demos=len(p.demos),
                        checkpoint="checkpoint" if checkpoint else None)
        finish_wandb(loggers, record.data, checkpoint)
        return record.data
    except BaseException as err:
        costs.setdefault("peak_rss_mb", round(memory.peak_rss_mb(), 1))
        record.fail(err, costs)
        finish_wandb(loggers, record.data, None)
        raise


def primary_value(record: dict) -> float:
    """What a sweeper (e.g. Optuna) optimises: the primary metric, sign-flipped where lower is better."""
    value = record["metrics"][record["primary_metric"]]
    return value if record.get("higher_is_better", True) else -value


@hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
def hydra_main(cfg: DictConfig) -> float:
    """Hydra task: returns the primary metric so sweepers (e.g. Optuna) can optimise it."""
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    run_dir = Path(hydra_cfg.runtime.output_dir)
    previous = completed_record(run_dir, cfg) if cfg.skip_completed else None
    if previous:  # re-running a sweep in the same directory finishes it instead of restarting it
        log.info("skipped %s: already completed with config hash %s (skip_completed=false redoes it)",
                 run_dir, previous["config_hash"])
        return primary_value(previous)
    if multirun and cfg.logger.get("wandb") and not cfg.logger.wandb.get("group"):
        with open_dict(cfg):
            cfg.logger.wandb.group = Path(hydra_cfg.sweep.dir).name  # one wandb group per sweep
    try:
        result = run(cfg, run_dir)
    except ConfigError as err:
        print(f"promptlab: error: {err.problem}\n  fix: {err.fix}", file=sys.stderr)
        if multirun:  # the run is recorded as failed; the rest of the sweep goes on
            return math.nan
        raise SystemExit(2) from None
    except Exception as err:
        if not multirun:
            raise
        log.exception("run failed (recorded in result.json); the sweep continues: %s", err)
        return math.nan
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items())
    log.info("%s on %s: %s", cfg.method.name, cfg.data.name, metrics)
    return primary_value(result)


def main() -> None:
    hydra_main()


if __name__ == "__main__":
    main()
