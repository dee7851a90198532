"""``promptlab-train``: compose a config, build task/backbone/method, fit, evaluate, record.

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
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from promptlab.data import PromptDataModule, load_task, sample_demos, training_subset
from promptlab.errors import ConfigError
from promptlab.methods import count_parameters, get_method
from promptlab.metrics import classification_metrics
from promptlab.models import load_backbone
from promptlab.module import PromptClassifier
from promptlab.prompts import encode_verbalizer
from promptlab.scoring import LabelScorer
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
                    ".*smaller than the logging interval.*", ".*does not have many workers.*"):
        warnings.filterwarnings("ignore", message=pattern)


def run(cfg: DictConfig, run_dir: str | Path) -> dict:
    """One promptlab run in ``run_dir``; returns the run record (also written to result.json)."""
    run_dir = Path(run_dir)
    run_id = new_run_id(cfg.method.name, cfg.data.name, cfg.seed)
    record = RunRecord(run_dir, cfg, run_id)
    quiet_third_party_noise()
    memory = PeakMemory()
    memory.reset()
    loggers, costs = [], {}
    try:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        if cfg.get("num_threads"):
            torch.set_num_threads(cfg.num_threads)
        method = get_method(cfg.method.name)
        method.validate(cfg.method)
        # All data checks run before the (slow) model load.
        task = load_task(cfg.data, cfg.paths.data_root)
        needs_train = cfg.method.trains or cfg.method.num_demos > 0
        train_rows = training_subset(task, cfg.data, cfg.seed) if needs_train else []
        demos = sample_demos(train_rows, task, cfg.method.num_demos, cfg.seed)

        backbone = load_backbone(cfg.model, cfg.paths.cache_dir)
        model = method.prepare(backbone, cfg.method, task)
        tok = backbone.tokenizer
        scorer = LabelScorer(encode_verbalizer(tok, task.verbalizer), tok.pad_token_id)
        trained_rows = train_rows if cfg.method.trains else []
        datamodule = PromptDataModule(task, tok, trained_rows, demos, cfg.method.get("batch_size", 8),
                                      cfg.eval_batch_size, cfg.seed, cfg.data.max_prompt_tokens)
        max_steps = int(cfg.method.get("max_steps", 0))
        module = PromptClassifier(model, scorer, cfg.method.get("lr", 0.0), cfg.method.get("weight_decay", 0.0),
                                  cfg.method.get("warmup_ratio", 0.0), max_steps)
        loggers = make_loggers(cfg, run_dir, run_id)
        callbacks = [L.pytorch.callbacks.LearningRateMonitor("step")] if loggers and cfg.method.trains else []
        trainer = hydra.utils.instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks,
                                          default_root_dir=str(run_dir))
        trainable, total = count_parameters(model)
        costs = {"trainable_params": trainable, "total_params": total, "trainable_fraction": trainable / total,
                 "model_load_seconds": round(backbone.load_seconds, 3)}

        train_seconds, checkpoint = 0.0, None
        if cfg.method.trains:
            start = time.perf_counter()
            trainer.fit(module, datamodule=datamodule)
            train_seconds = time.perf_counter() - start
            checkpoint = run_dir / "checkpoint"
            method.save(model, checkpoint)
        else:
            datamodule.setup("predict")

        start = time.perf_counter()
        batches = trainer.predict(module, datamodule=datamodule)
        eval_seconds = time.perf_counter() - start
        scores = torch.cat([b["scores"] for b in batches])
        labels = torch.cat([b["labels"] for b in batches])
        idx = torch.cat([b["idx"] for b in batches])
        preds = scores.argmax(-1)
        metrics = classification_metrics(preds, labels, task.num_classes)
        _write_predictions(run_dir / "predictions.jsonl", idx, labels, preds, scores, task.label_names)

        costs.update({
            "train_seconds": round(train_seconds, 3),
            "train_steps": trainer.global_step if cfg.method.trains else 0,
            "train_examples_seen": module.examples_seen,
            "train_tokens_seen": module.tokens_seen,
            "train_examples_per_second": module.examples_seen / train_seconds if train_seconds else None,
            "eval_seconds": round(eval_seconds, 3),
            "eval_examples": len(labels),
            "eval_examples_per_second": len(labels) / eval_seconds,
            "peak_rss_mb": round(memory.peak_rss_mb(), 1),
            "peak_rss_reset_per_run": memory.reset_ok,
            "peak_gpu_mb": memory.peak_gpu_mb(),
            "checkpoint_bytes": dir_bytes(checkpoint) if checkpoint else 0,
            "truncated_prompts": datamodule.truncated,
        })
        for lg in loggers:
            lg.log_metrics({f"eval/{k}": v for k, v in metrics.items()}, step=trainer.global_step)
            lg.save()  # the CSV logger only writes on save()
        record.complete(metrics, costs, num_train_examples=len(trained_rows), num_demos=len(demos),
                        eval_split=cfg.data.eval_split, checkpoint="checkpoint" if checkpoint else None)
        finish_wandb(loggers, metrics, costs, checkpoint, "completed")
        return record.data
    except BaseException as err:
        costs.setdefault("peak_rss_mb", round(memory.peak_rss_mb(), 1))
        record.fail(err, costs)
        finish_wandb(loggers, {}, costs, None, "failed")
        raise


def _write_predictions(path: Path, idx, labels, preds, scores, label_names) -> None:
    rows = [
        {"idx": int(i), "label": int(y), "pred": int(p), "pred_name": label_names[int(p)],
         "log_probs": [round(float(s), 5) for s in row]}
        for i, y, p, row in zip(idx, labels, preds, scores, strict=True)
    ]
    write_jsonl_atomic(path, sorted(rows, key=lambda r: r["idx"]))


@hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
def hydra_main(cfg: DictConfig) -> float:
    """Hydra task: returns the accuracy so sweepers (e.g. Optuna) can optimise it."""
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    run_dir = Path(hydra_cfg.runtime.output_dir)
    previous = completed_record(run_dir, cfg) if cfg.skip_completed else None
    if previous:  # re-running a sweep in the same directory finishes it instead of restarting it
        log.info("skipped %s: already completed with config hash %s (skip_completed=false redoes it)",
                 run_dir, previous["config_hash"])
        return previous["metrics"]["accuracy"]
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
    m = result["metrics"]
    log.info("%s on %s: accuracy %.4f, macro-F1 %.4f", cfg.method.name, cfg.data.name, m["accuracy"], m["macro_f1"])
    return m["accuracy"]


def main() -> None:
    hydra_main()


if __name__ == "__main__":
    main()
