"""``promptlab-train``: compose a config, build task/backbone/method, fit, ``evaluate``, record.

    promptlab-train method=prompt_tuning data=rte seed=3
    promptlab-train -m method=zero_shot,few_shot data=sst2,rte seed=1,2,3
"""

from __future__ import annotations

import errno
import logging
import math
import os
import sys
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from promptlab import instruct, resume, search, signals, sweep, tuning
from promptlab.config import (
    CONFIG_DIR,
    CONFIG_MODULE,
    Settings,
    check_added_keys,
    check_writable,
    skip_completed,
)
from promptlab.data import PromptDataModule, eval_items
from promptlab.errors import ConfigError, Diverged
from promptlab.evaluation import readouts
from promptlab.evaluation.calibration import METHODS as CALIBRATIONS
from promptlab.evaluation.calibration import content_free_rows
from promptlab.evaluation.evaluate import Evaluation, all_metrics, check_finite, evaluate, gather_rows
from promptlab.evaluation.metrics import get_metric
from promptlab.methods import Method, build_method, count_parameters
from promptlab.models import Backbone, check_model, fingerprint, load_backbone
from promptlab.module import PromptModule
from promptlab.progress import progress_callbacks
from promptlab.prompts import Encoder, template_fields
from promptlab.readout import GenerateReadout
from promptlab.schema import FINAL
from promptlab.search import SearchSpec
from promptlab.sweep import note
from promptlab.tasks import Task, TaskSpec, load_task, training_subset
from promptlab.tasks.mixture import Mixture
from promptlab.tasks.sampling import component_seeds
from promptlab.tracking import (
    PeakMemory,
    RunRecord,
    config_hash,
    dir_bytes,
    effective_wandb_mode,
    finish_wandb,
    make_loggers,
    new_run_id,
    read_record,
    run_lock,
    stored_parameters,
    write_jsonl_atomic,
)

log = logging.getLogger("promptlab")
# ${uid:} in run directory names: unique even when jobs start in the same second.
DEMO_DRAW_STRIDE = 100_003  # seed offset between a search's demonstration draws (search.demo_draws)
OmegaConf.register_new_resolver("uid", lambda: uuid.uuid4().hex[:6], use_cache=True, replace=True)


def quiet_third_party_noise() -> None:
    """Silence library chatter that says nothing about the run (tips, deprecations inside libraries)."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    # "Received SIGTERM": promptlab says what it did about it (recorded, exit 143)
    logging.getLogger("lightning.pytorch.trainer.connectors.signal_connector").setLevel(logging.WARNING)
    for pattern in (".*LeafSpec.*", ".*is_gradient_checkpointing.*", ".*anonymous setting.*",
                    ".*smaller than the logging interval.*", ".*does not have many workers.*",
                    ".*Position ids are not supported.*", ".*set_vital.*"):
        warnings.filterwarnings("ignore", message=pattern)


@dataclass
class Plan:
    """Everything a run decides before the model loads (so every config error comes first)."""

    settings: Settings
    spec: TaskSpec
    method: Method
    task: Task
    train_rows: list[dict]
    demos: list[dict]
    search: SearchSpec | None = None
    pool: list[dict] = field(default_factory=list)  # the training sample (few-shot demos, meta-prompting)
    cache_dir: str | None = None  # where models are cached (a proposer model of its own)
    mixture: Mixture | None = None  # instruction tuning: the tasks trained on and evaluated (promptlab.instruct)
    budgets: dict[str, list[dict]] = field(default_factory=dict)  # a mixture's training rows per seen task
    dev_every: int | None = None  # a trained run's dev checks during training (tuning.BestOnDev)
    tuning: dict | None = None  # the trial's point of its method's space, and the dev evaluations it makes


class OccupiedRunDir(ConfigError):
    """The run directory holds a completed run of another configuration: it is never replaced."""


def plan(cfg: DictConfig) -> Plan:
    """Check the settings, model, task and method; load the data, draw the budget and the demonstrations."""
    if HydraConfig.initialized():  # a +key the command line added that nothing reads
        check_added_keys(HydraConfig.get().overrides.task, CONFIG_DIR)
    settings = Settings.from_config(cfg)  # first: typed values, before anything reads them
    check_model(cfg.model)
    if cfg.get("mixture") is not None:
        return plan_mixture(cfg, settings)
    spec = TaskSpec.from_config(cfg.data)
    method = build_method(cfg.method)
    method.validate(spec)
    method.check_model(cfg.model.get("kind", "lm"), spec)
    if spec.image_column and (cfg.get("search") is not None or "contextual" in settings.calibration):
        raise ConfigError(f"{spec.name} shows images: prompt search and contextual calibration (a content-free "
                          "input in place of the image) are not supported for image tasks yet",
                          "drop search=... and use calibration=[] or [batch]")
    if spec.readout in CALIBRATIONS and spec.readout not in settings.calibration:
        raise ConfigError(f"data.readout={spec.readout} is a calibration this run does not compute "
                          f"(calibration={list(settings.calibration)})",
                          f"add it: calibration=[{spec.readout}], or use data.readout=raw")
    if settings.calibration and (spec.output_type != "choice" or spec.choice_columns):
        raise ConfigError(f"calibration={list(settings.calibration)} needs a choice task with one answer set; "
                          f"{spec.name} is {'per-example answers' if spec.choice_columns else spec.output_type}",
                          "use calibration=[] for this task")
    search_cfg = cfg.get("search")
    if search_cfg is not None:
        check_search(search_cfg, method, spec)
    task = load_task(spec, cfg.paths.data_root, settings.seed)
    proposes = search_cfg is not None and bool(search_cfg.get("propose"))
    # the budget: every method that reads training examples gets the same rows with this seed
    pool = training_subset(task, settings.seed) if method.trains or method.num_demos > 0 or proposes else []
    search = SearchSpec.from_config(search_cfg, spec, len(pool), draws_demos=method.draws_demos)
    if search and search.proposer:
        check_model(OmegaConf.create(search.proposer))
    demos = method.draw_demos(pool, task, settings.seed)
    dev_every = tuning.check_dev_every(cfg.method, method.trains)
    count = tuning.dev_evaluations(cfg, method.trains, search.num_candidates if search else 1)
    tuning.check_budget(cfg, count)
    info = {**(tuning.tuning_info(cfg, hydra_job()) or {}), "dev_evaluations": count, "budget": cfg.get("budget")}
    return Plan(settings, spec, method, task, pool if method.trains else [], demos, search, pool, cfg.paths.cache_dir,
                dev_every=dev_every, tuning=info)


def hydra_job() -> int | None:
    """This run's job number in a Hydra multirun (a sweeper's trial), else None."""
    return HydraConfig.get().job.get("num") if HydraConfig.initialized() else None


def plan_mixture(cfg: DictConfig, settings: Settings) -> Plan:
    """A run on an instruction-tuning mixture: every task checked and loaded, each seen task's budget drawn."""
    mixture = Mixture.from_config(cfg.mixture)
    method = build_method(cfg.method)
    if cfg.method.get("dev_every_n_steps") is not None:
        raise ConfigError(f"method.dev_every_n_steps with mixture={mixture.name}: dev checks during training are "
                          "for single tasks for now", "use method.dev_every_n_steps=null")
    if method.num_demos or cfg.get("search") is not None or settings.calibration:
        raise ConfigError(f"mixture={mixture.name} evaluates every task zero-shot, uncalibrated, with its default "
                          "template", "use a zero-shot or trained method without search=... and calibration=[]")
    method.num_tasks = len(mixture.train_tasks)  # multitask prompt tuning: one task id per seen task
    for spec in mixture.specs.values():
        method.validate(spec)
        method.check_model(cfg.model.get("kind", "lm"), spec)
        if spec.image_column:
            raise ConfigError(f"mixture={mixture.name} holds the image task {spec.name}: mixtures are text-only for now",
                              "train on image tasks one at a time")
    mixture.load(cfg.paths.data_root, settings.seed)
    budgets = mixture.budgets(settings.seed) if method.trains else {}
    first = mixture.tasks[mixture.train_tasks[0]]  # a soft prompt's init text: the first seen task's
    rows = [r for b in budgets.values() for r in b]
    return Plan(settings, first.spec, method, first, rows, [], cache_dir=cfg.paths.cache_dir, mixture=mixture,
                budgets=budgets)


def demo_draws(p: Plan) -> list[list[dict]]:
    """The demonstration sets a search tries: the run's own draw, then ``search.demo_draws - 1`` more, each from
    a seed of its own (``DEMO_DRAW_STRIDE`` apart, so no two runs' seeds share a draw)."""
    return [p.demos] + [p.method.draw_demos(p.pool, p.task, p.settings.seed + DEMO_DRAW_STRIDE * d)
                        for d in range(1, p.search.demo_draws)]


def check_search(search_cfg: DictConfig, method: Method, spec: TaskSpec) -> None:
    """A prompt search chooses what a frozen model reads, on dev, and reports it on another split."""
    if method.trains:
        raise ConfigError(f"search={search_cfg.get('name')} chooses the prompt of a prompting method, and "
                          f"{method.cfg.name} trains", "drop search=... for this run, or use a prompting method")


def build_module(p: Plan, backbone: Backbone, model: torch.nn.Module) -> tuple[PromptModule, Encoder]:
    tok = backbone.tokenizer
    # a mixture trains every task as text-to-text (its answer text's loss); each task is read its own way later
    readout = GenerateReadout(tok, 1) if p.mixture else p.method.readout(tok, p.spec, p.settings.seed)
    demos = p.method.demos(model, tok, p.spec, p.demos, readout)
    return PromptModule(model, readout, p.method.optim()), p.method.encoder(backbone, p.spec, demos)


def make_trainer(cfg: DictConfig, settings: Settings, run_dir: Path, loggers: list, trains: bool,
                 callbacks: list[L.Callback] = (), dev_every: int | None = None) -> L.Trainer:
    """The configured Lightning Trainer, with ``trainer.precision`` resolved for this machine; ``dev_every``: its
    validation loop scores dev every that many training steps (``tuning.BestOnDev``)."""
    progress, bar = progress_callbacks()
    if loggers and trains:
        progress.append(L.pytorch.callbacks.LearningRateMonitor("step"))
    checks = {"limit_val_batches": 1.0, "val_check_interval": dev_every, "check_val_every_n_epoch": None,
              "num_sanity_val_steps": 0} if dev_every else {}
    return hydra.utils.instantiate(cfg.trainer, logger=loggers or False, callbacks=[*progress, *callbacks],
                                   enable_progress_bar=bar, default_root_dir=str(run_dir),
                                   precision=settings.precision, **checks)


def run(cfg: DictConfig, run_dir: str | Path) -> dict:
    """One promptlab run in ``run_dir``; returns the run record (also written to result.json).

    SIGINT/SIGTERM at any point end it as ``interrupted`` (``signals.Interrupted`` is re-raised).
    """
    run_dir = check_writable(run_dir)  # nowhere to record a failure if this fails: a ConfigError, nothing else
    cfg = tuning.apply_trial(cfg)  # first: config.yaml and the config hash hold the values the run trains with
    with signals.handling():
        point, primary = resume.find_resume_point(run_dir, cfg), is_primary()
        if point:  # same run id: the record and the wandb run go on
            run_id, resumes = point.run_id, point.resumes
            log.info("resuming %s from %s (it was %s)", run_dir, point.checkpoint, point.previous_status)
        else:
            if primary:
                resume.discard(run_dir)  # an unfinished run's checkpoint of another config (or resume=false)
            task = _group_name(cfg, "mixture" if cfg.get("mixture") is not None else "data")
            run_id, resumes = new_run_id(_group_name(cfg, "method"), task, cfg.get("seed")), []
        record = RunRecord(run_dir, cfg, run_id, resumes=resumes, primary=primary)
        try:
            record.start_heartbeat()
            return _run(cfg, run_dir, record, point)
        except BaseException as err:
            record.fail(err)  # a no-op when _run recorded it; covers a signal before _run's own handler
            raise
        finally:
            record.close()


def is_primary() -> bool:
    """False in a data-parallel rank other than 0, known from the start: Lightning's DDP launcher re-runs the
    command with LOCAL_RANK set, and SLURM or torchrun start every rank with its rank in the environment.
    Such a rank runs the same steps (the collective calls need it) and writes nothing: one record, one wandb
    run, one checkpoint, all from rank 0."""
    from lightning.pytorch.utilities import rank_zero_only

    return rank_zero_only.rank == 0


def _group_name(cfg: DictConfig, group: str) -> str:
    """A group's name for the run id, whatever the config holds."""
    try:
        return str(cfg[group].name)
    except Exception:
        return group


def _run(cfg: DictConfig, run_dir: Path, record: RunRecord, point: resume.ResumePoint | None) -> dict:
    quiet_third_party_noise()
    memory = PeakMemory()
    memory.reset()
    loggers, costs, saver, module = [], {}, None, None
    try:
        record.phase = "loading data"  # and checking the config, which takes no time
        p = plan(cfg)  # all checks run before the (slow) model load
        if p.mixture:
            record.describe(p.method.info(), p.mixture, True)
            record.provenance(seeds=component_seeds(p.settings.seed), data=instruct.sources(p.mixture))
        else:
            record.describe(p.method.info(), p.spec, get_metric(p.spec.primary_metric).higher_is_better)
            record.provenance(seeds=component_seeds(p.settings.seed), data=p.task.sources)
            record.update(tuning=p.tuning)
        wandb = effective_wandb_mode(p.settings.wandb_mode) if p.settings.wandb_mode else "disabled"
        L.seed_everything(p.settings.seed, workers=True, verbose=False)
        if p.settings.num_threads:
            torch.set_num_threads(p.settings.num_threads)

        record.phase = "loading the model"
        backbone = load_backbone(cfg.model, cfg.paths.cache_dir)
        record.provenance(model=fingerprint(cfg.model, backbone), precision=p.settings.precision)
        model = p.method.prepare(backbone, p.spec)
        if p.method.trains:
            p.method.checkpoint_activations(model)
        module, encoder = build_module(p, backbone, model)
        loggers = make_loggers(cfg, run_dir, record.data["run_id"], mode=wandb) if record.primary else []
        saver = resume.ResumeCheckpoint(resume.checkpoint_path(run_dir), p.settings.checkpoint_every_n_steps,
                                        p.settings.checkpoint_every_minutes,
                                        on_start=(lambda step: record.resumed(step, point)) if point else None)
        best = dev_checker(p, module, encoder) if p.dev_every else None
        callbacks = [saver, *([best] if best else [])] if p.method.trains else []
        trainer = make_trainer(cfg, p.settings, run_dir, loggers, p.method.trains, callbacks, p.dev_every)
        trainable, total = count_parameters(model)
        if p.method.trains:
            log.info("%s trains %s of %s parameters (%.4f%%)", p.method.cfg.name, f"{trainable:,}", f"{total:,}",
                     100 * trainable / total)
        costs = {"trainable_params": trainable, "total_params": total, "trainable_fraction": trainable / total,
                 "model_load_seconds": round(backbone.load_seconds, 3)}

        record.phase = "training"
        train_seconds, checkpoint = fit(p, module, encoder, trainer, run_dir, point)
        if best:
            p.tuning["dev_checks"] = {**best.summary(), "every_n_steps": p.dev_every}
        record.phase = "evaluation"
        module.model.eval()
        ev = evaluate_plan(p, module, encoder, trainer)
        record.phase = "writing the results"
        if record.primary:
            write_predictions(run_dir, ev)
        costs.update(run_costs(p, module, encoder, trainer, ev, memory, train_seconds, checkpoint), **saver.costs())
        for lg in loggers:
            lg.log_metrics({f"eval/{k}": v for k, v in ev.metrics.items()}, step=trainer.global_step)
            lg.save()  # the CSV logger only writes on save()
        record.complete(ev.metrics, costs, num_train_examples=len(p.train_rows), num_demos=p.method.num_demos,
                        checkpoint="checkpoint" if checkpoint else None, **result_fields(p, ev))
        if record.primary:
            resume.discard(run_dir)  # the trained weights are in checkpoint/; a completed run is not resumed
        finish_wandb(loggers, record.data, checkpoint)
        return record.data
    except BaseException as err:
        costs.setdefault("peak_rss_mb", round(memory.peak_rss_mb(), 1))
        if module is not None and p.method.trains:  # a diverged trial's training still counts as tuning cost
            costs.setdefault("train_seconds", round(module.elapsed_train_seconds(), 3))
        if saver:
            costs.update(saver.costs())  # what an unfinished run leaves to resume from
        record.fail(err, costs)  # interrupted when err is a signal; a completed record stays completed
        finish_wandb(loggers, record.data, None)
        raise


def evaluate_plan(p: Plan, module: PromptModule, encoder: Encoder, trainer: L.Trainer) -> Evaluation:
    """``evaluate`` on the plan's dev rows, then its eval rows, with the calibrations its settings ask for
    (contextual: the content-free inputs put through the same prompt); with a prompt search, the prompt is
    chosen on dev first."""
    if p.search:
        return run_search(p, module, trainer, encoder)
    if p.mixture:
        return instruct.evaluate_mixture(p.mixture, p.method, module, encoder.tokenizer, trainer,
                                         p.settings.eval_batch_size)
    dev = evaluate_rows(p, module, encoder, trainer, p.task.dev)
    ev = evaluate_rows(p, module, encoder, trainer, p.task.eval)
    ev.dev_metrics, ev.dev_rows = dev.metrics, dev.rows
    ev.extra_costs["dev_eval_seconds"] = round(dev.seconds, 3)
    return ev


def evaluate_rows(p: Plan, module: PromptModule, encoder: Encoder, trainer: L.Trainer, rows: list[dict]) -> Evaluation:
    return evaluate(module, p.spec, eval_items(encoder, rows), trainer, p.settings.eval_batch_size,
                    p.settings.calibration, eval_items(encoder, content_free(p, rows)))


def content_free(p: Plan, rows: list[dict]) -> list[dict]:
    """Contextual calibration's content-free inputs (negative idx), when the run asks for it; else none."""
    if "contextual" not in p.settings.calibration:
        return []
    return content_free_rows(rows[0], template_fields(p.spec.prompt_template))


def dev_checker(p: Plan, module: PromptModule, encoder: Encoder) -> tuning.BestOnDev:
    """The callback that keeps the trainable weights of the dev check best on dev: each check's rows (the
    validation loop over dev and the content-free inputs) are scored under every readout like any evaluation,
    and the check's score is what would head the row (``headline``) on dev."""
    metric = p.spec.primary_metric
    higher = get_metric(metric).higher_is_better
    names: list[tuple[str, ...]] = [()]

    def score(metrics: dict[str, float]) -> float:
        chosen = (readouts.choose(metrics, metric, names[0], p.spec.readout, higher)
                  if p.settings.select_readout and names[0] else p.spec.readout if names[0] else readouts.RAW)
        return metrics.get(readouts.metric_key(metric, chosen), math.nan)

    best = tuning.BestOnDev(score, higher)

    def on_dev_rows(rows: list[dict]) -> None:
        trainer = module.trainer
        rows = sorted(gather_rows(rows, trainer), key=lambda r: r["idx"])
        check_finite(rows, trainer.global_step)
        free, rows = [r for r in rows if r["idx"] < 0], [r for r in rows if r["idx"] >= 0]
        for r in rows:
            r.pop("generated_tokens", None)
        metrics, names[0] = all_metrics(p.spec, rows, p.settings.calibration, free)
        best.record(trainer, module, metrics)

    module.on_dev_rows = on_dev_rows
    return best


def headline(p: Plan, ev: Evaluation) -> dict:
    """Which metric heads the run's row: the primary metric under the readout chosen on dev (``select_readout``)
    or under the task's default (``data.readout``); generation tasks and mixtures have one readout."""
    metric = p.mixture.primary_metric if p.mixture else p.spec.primary_metric
    if not ev.readouts:
        return {"metric": metric, "readout": readouts.RAW, "chosen_on": None}
    higher = get_metric(metric).higher_is_better
    chosen = (readouts.choose(ev.dev_metrics, metric, ev.readouts, p.spec.readout, higher)
              if p.settings.select_readout else p.spec.readout)
    return {"metric": readouts.metric_key(metric, chosen), "readout": chosen, "default": p.spec.readout,
            "chosen_on": "dev" if p.settings.select_readout else "task default", "readouts": list(ev.readouts)}


def run_search(p: Plan, module: PromptModule, trainer: L.Trainer, encoder: Encoder) -> Evaluation:
    """``search.run_search`` with the plan's pieces; the proposer is the backbone unless search.proposer names
    another model (its load time is part of the search cost). ``encoder`` counts every candidate's truncated
    prompts."""
    tokenizer = encoder.tokenizer
    proposer, load_seconds = (module.model, tokenizer), 0.0
    if p.search.propose and p.search.proposer:
        other = load_backbone(OmegaConf.create(p.search.proposer), p.cache_dir)
        proposer, load_seconds = (other.model.eval(), other.tokenizer), other.load_seconds
    costs: dict[str, float] = {}
    made: list[Encoder] = []
    factory = search.encoder_factory(p.spec, p.method, module, tokenizer, costs, made)
    s = search.Search(p.spec, p.task, p.search, p.settings.calibration, p.settings.seed, p.settings.eval_batch_size,
                      p.pool, demo_draws(p), factory, costs)
    ev = search.run_search(s, module, trainer, proposer)
    encoder.truncated += sum(e.truncated for e in made)
    ev.extra_costs.update({k: round(v, 3) for k, v in costs.items()})  # demonstrations written, all candidates
    if load_seconds:
        ev.extra_costs["search_proposer_load_seconds"] = round(load_seconds, 3)
        ev.extra_costs["search_seconds"] = round(ev.extra_costs["search_seconds"] + load_seconds, 3)
    return ev


def fit(p: Plan, module: PromptModule, encoder: Encoder, trainer: L.Trainer, run_dir: Path,
        point: resume.ResumePoint | None) -> tuple[float, Path | None]:
    """Train a trained method (from ``point`` when resuming) and save its state; (seconds over every attempt,
    checkpoint dir) — (0, None) for the others."""
    if not p.method.trains:
        return 0.0, None
    items = (instruct.train_items(p.mixture, p.budgets, p.method, encoder.tokenizer, p.settings.seed)
             if p.mixture else None)
    dev = [*p.task.dev, *content_free(p, p.task.dev)] if p.dev_every else []  # dev checks: dev's rows
    datamodule = PromptDataModule(encoder, p.train_rows, dev, p.method.cfg.batch_size, p.settings.eval_batch_size,
                                  p.settings.seed, train_items=items, bucket=p.settings.bucket_by_length)
    # SIGINT/SIGTERM end the run at the end of a step (resume.ResumeCheckpoint)
    with signals.deferred(), module.fitting(trainer):
        trainer.fit(module, datamodule=datamodule, ckpt_path=point.checkpoint if point else None)
    checkpoint = run_dir / "checkpoint"
    if trainer.is_global_zero:
        p.method.save(module.model, checkpoint)
    return module.elapsed_train_seconds(), checkpoint


def write_predictions(run_dir: Path, ev: Evaluation) -> None:
    """``predictions.jsonl`` (eval) and ``dev_predictions.jsonl`` (dev: what every choice was made on)."""
    write_jsonl_atomic(run_dir / "predictions.jsonl", ev.rows)
    if ev.dev_rows:
        write_jsonl_atomic(run_dir / "dev_predictions.jsonl", ev.dev_rows)


def result_fields(p: Plan, ev: Evaluation) -> dict:
    """What a record holds once the run is evaluated (``promptlab-train`` and ``promptlab-eval`` alike): the dev
    metrics, the headline, the objective, the sample, a search's selection, a mixture's tasks."""
    return {"dev_metrics": ev.dev_metrics, "headline": headline(p, ev), "objective": p.settings.objective,
            "tuning": p.tuning,
            **sample_fields(p), **({"selection": ev.selection, "template_id": None} if ev.selection else {}),
            **(mixture_fields(p, ev) if p.mixture else {})}


def sample_fields(p: Plan) -> dict:
    """The splits the run used and the indices (``idx``) of its training sample: the same for every method run
    with this seed that reads training examples; empty for one that reads none (a mixture: per seen task)."""
    if p.mixture:
        return {"train_idx": {t: [r["idx"] for r in rows] for t, rows in p.budgets.items()},
                "splits": {t: task.splits for t, task in p.mixture.tasks.items()}}
    return {"train_idx": [r["idx"] for r in p.pool], "splits": p.task.splits}


def mixture_fields(p: Plan, ev: Evaluation) -> dict:
    """What a mixture run's record adds: its seen and held-out tasks and those it could not evaluate."""
    m = p.mixture
    return {"template_id": None, "mixture": {
        "name": m.name, "seen": m.train_tasks, "held_out": m.heldout_tasks, "weights": m.weights,
        "examples_per_task": m.examples_per_task, "templates": m.templates,
        "primary_metrics": {t: s.primary_metric for t, s in m.specs.items()},
        "not_evaluated": instruct.not_evaluated(m, ev.metrics)}}


def run_costs(p: Plan, module: PromptModule, encoder: Encoder, trainer: L.Trainer, ev, memory: PeakMemory,
              train_seconds: float, checkpoint: Path | None) -> dict:
    return {
        "train_seconds": round(train_seconds, 3),
        "train_steps": trainer.global_step if p.method.trains else 0,
        "train_examples_seen": module.examples_seen,
        "train_tokens_seen": module.tokens_seen,
        "train_examples_per_second": module.examples_seen / train_seconds if train_seconds else None,
        **p.method.demo_costs,
        **dict.fromkeys(search.COST_KEYS, 0), "dev_eval_seconds": 0.0,
        "dev_check_seconds": ((p.tuning or {}).get("dev_checks") or {}).get("seconds", 0.0),
        **ev.costs(),  # after: a prompt search's costs include every candidate's demonstrations
        "peak_rss_mb": round(memory.peak_rss_mb(), 1),
        "peak_rss_reset_per_run": memory.reset_ok,
        "peak_gpu_mb": memory.peak_gpu_mb(),
        "checkpoint_bytes": dir_bytes(checkpoint) if checkpoint else 0,
        "stored_params": stored_parameters(checkpoint) if checkpoint else 0,  # per task; prompting stores none
        "optimizer_state_bytes": module.optimizer_state_bytes,
        "truncated_prompts": encoder.truncated,
    }


def objective_value(record: dict) -> float:
    """What a sweeper (e.g. Optuna) optimises: the run's headline metric on dev (or on eval, where the run was
    allowed ``objective=eval``), sign-flipped where lower is better; NaN (a failed trial) unless it completed."""
    if record.get("status") != "completed":
        return math.nan
    key = (record.get("headline") or {}).get("metric") or record["primary_metric"]
    split = record.get("dev_metrics") if record.get("objective", "dev") == "dev" else record.get("metrics")
    value = (split or {}).get(key)
    if value is None:
        return math.nan
    return value if record.get("higher_is_better", True) else -value


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
    return run_locked(cfg, Path(hydra_cfg.runtime.output_dir), sweep_dir)


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
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items())
    log.info("%s on %s: %s", cfg.method.name, result["dataset"], metrics)
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
