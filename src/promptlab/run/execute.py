"""The one run pipeline, used by ``promptlab-train``, ``promptlab-eval`` and tuning trials: load the backbone,
train (or read a saved run's state), evaluate on dev and eval, and record costs, predictions and the run record."""

from __future__ import annotations

import logging
import math
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from promptlab import instruct, resume, search, signals, tuning
from promptlab.config import Settings, check_writable
from promptlab.data import PromptDataModule, eval_items
from promptlab.evaluation import readouts
from promptlab.evaluation.calibration import content_free_rows
from promptlab.evaluation.evaluate import Evaluation, all_metrics, check_finite, evaluate, gather_rows
from promptlab.evaluation.metrics import get_metric
from promptlab.methods import count_parameters
from promptlab.models import Backbone, fingerprint, load_backbone
from promptlab.module import PromptModule
from promptlab.progress import labelled, progress_callbacks
from promptlab.prompts import Encoder, template_fields
from promptlab.readout import GenerateReadout, generate_readout_of
from promptlab.run.planning import Plan, demo_draws, plan
from promptlab.schema import PROMPTS_FILE, prompt_hash
from promptlab.tasks.sampling import component_seeds
from promptlab.tracking import (
    PeakMemory,
    RunRecord,
    dir_bytes,
    effective_wandb_mode,
    finish_wandb,
    make_loggers,
    new_run_id,
    stored_parameters,
    write_jsonl_atomic,
)

if TYPE_CHECKING:
    from promptlab.eval import Saved

log = logging.getLogger("promptlab")


def quiet_third_party_noise() -> None:
    """Silence library chatter that says nothing about the run (tips, deprecations inside libraries); in a log
    (stderr not a terminal) also the libraries' progress bars (transformers' "Loading weights", Hub downloads,
    datasets' map), which a log keeps as one long line each. promptlab's own progress stays (``progress``)."""
    if not sys.stderr.isatty():
        third_party_bars_off()
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    # "Received SIGTERM": promptlab says what it did about it (recorded, exit 143)
    logging.getLogger("lightning.pytorch.trainer.connectors.signal_connector").setLevel(logging.WARNING)
    for pattern in (".*LeafSpec.*", ".*is_gradient_checkpointing.*", ".*anonymous setting.*",
                    ".*smaller than the logging interval.*", ".*does not have many workers.*",
                    ".*Position ids are not supported.*", ".*set_vital.*"):
        warnings.filterwarnings("ignore", message=pattern)


def third_party_bars_off() -> None:
    """transformers' tqdm bars (loading and writing weights) and the Hub's (downloads), and datasets' bars."""
    import transformers

    transformers.utils.logging.disable_progress_bar()  # also huggingface_hub.utils.disable_progress_bars()
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
    else:  # read when datasets is imported (only Hub data needs it: not imported for that alone)
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def build_module(p: Plan, backbone: Backbone, model: torch.nn.Module) -> tuple[PromptModule, Encoder]:
    tok = backbone.tokenizer
    # a mixture trains every task as text-to-text (its answer text's loss); each task is read its own way later
    readout = GenerateReadout(tok, 1) if p.mixture else p.method.readout(tok, p.spec, p.settings.seed)
    if gen := generate_readout_of(readout):
        gen.width = p.settings.decode_width
    demos = p.method.demos(model, tok, p.spec, p.demos, readout, p.demo_work)
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
            return execute(cfg, run_dir, record, point)
        except BaseException as err:
            record.fail(err)  # a no-op when execute recorded it; covers a signal before its own handler
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


def execute(cfg: DictConfig, run_dir: Path, record: RunRecord, point: resume.ResumePoint | None,
            saved: Saved | None = None, p: Plan | None = None) -> dict:
    """The one run pipeline: plan, load, train (unless ``saved``: promptlab-eval reads a completed run's state
    instead), evaluate, record. ``p``: the plan when the caller made it already."""
    quiet_third_party_noise()
    memory = PeakMemory()
    memory.reset()
    loggers, costs, saver, module = [], {}, None, None
    try:
        record.phase = "loading data"  # and checking the config, which takes no time
        p = p or plan(cfg)  # all checks run before the (slow) model load
        describe(record, p)
        trains = p.method.trains and saved is None
        wandb = effective_wandb_mode(p.settings.wandb_mode) if p.settings.wandb_mode and not saved else "disabled"
        L.seed_everything(p.settings.seed, workers=True, verbose=False)
        if p.settings.num_threads:
            torch.set_num_threads(p.settings.num_threads)

        record.phase = "loading the model"
        backbone = load_backbone(cfg.model, cfg.paths.cache_dir)
        model_id = fingerprint(cfg.model, backbone)
        if saved:
            saved.check_model(model_id)
            record.update(allow_other_model=saved.allow_other_model)
        record.provenance(model=model_id, precision=p.settings.precision)
        if saved and p.method.trains:
            model = p.method.load(backbone, saved.checkpoint)
        else:
            model = p.method.prepare(backbone, p.spec)
        if trains:
            p.method.checkpoint_activations(model)
        module, encoder = build_module(p, backbone, model)
        loggers = make_loggers(cfg, run_dir, record.data["run_id"], mode=wandb) if record.primary and not saved else []
        if not saved:  # an evaluation of a saved run has nothing to resume (nor its record the resume costs)
            saver = resume.ResumeCheckpoint(resume.checkpoint_path(run_dir), p.settings.checkpoint_every_n_steps,
                                            p.settings.checkpoint_every_minutes,
                                            on_start=(lambda step: record.resumed(step, point)) if point else None)
        best = dev_checker(p, module, encoder) if p.dev_every and trains else None
        callbacks = [saver, *([best] if best else [])] if trains else []
        trainer = make_trainer(cfg, p.settings, run_dir, loggers, trains, callbacks, p.dev_every if trains else None)
        trainable, total = count_parameters(model)
        if trains:
            log.info("%s trains %s of %s parameters (%.4f%%)", p.method.cfg.name, f"{trainable:,}", f"{total:,}",
                     100 * trainable / total)
        costs = {"trainable_params": trainable, "total_params": total, "trainable_fraction": trainable / total,
                 "model_load_seconds": round(backbone.load_seconds, 3)}

        record.phase = "training"
        train_seconds, checkpoint = fit(p, module, encoder, trainer, run_dir, point) if trains else (0.0, None)
        if best:
            p.tuning["dev_checks"] = {**best.summary(), "every_n_steps": p.dev_every}
        record.phase = "evaluation"
        module.model.eval()
        ev = evaluate_plan(p, module, encoder, trainer)
        record.phase = "writing the results"
        if record.primary:
            write_predictions(run_dir, ev, encoder.tokenizer)
        costs.update(run_costs(p, module, encoder, trainer, ev, memory, train_seconds, checkpoint),
                     **(saver.costs() if saver else {}))
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
        if module is not None and trains:  # a diverged trial's training still counts as tuning cost
            costs.setdefault("train_seconds", round(module.elapsed_train_seconds(), 3))
        if saver:
            costs.update(saver.costs())  # what an unfinished run leaves to resume from
        record.fail(err, costs)  # interrupted when err is a signal; a completed record stays completed
        finish_wandb(loggers, record.data, None)
        raise


def describe(record: RunRecord, p: Plan) -> None:
    """What the record says once the plan is checked: the method and task (or mixture), seeds, data sources."""
    if p.mixture:
        record.describe(p.method.info(), p.mixture, True)
        record.provenance(seeds=component_seeds(p.settings.seed), data=instruct.sources(p.mixture))
    else:
        record.describe(p.method.info(), p.spec, get_metric(p.spec.primary_metric).higher_is_better)
        record.provenance(seeds=component_seeds(p.settings.seed), data=p.task.sources)
        record.update(tuning=p.tuning)


def evaluate_plan(p: Plan, module: PromptModule, encoder: Encoder, trainer: L.Trainer) -> Evaluation:
    """``evaluate`` on the plan's dev rows, then its eval rows, with the calibrations its settings ask for
    (contextual: the content-free inputs put through the same prompt); with a prompt search, the prompt is
    chosen on dev first."""
    if p.search:
        return run_search(p, module, trainer, encoder)
    if p.mixture:
        return instruct.evaluate_mixture(p.mixture, p.method, module, encoder.tokenizer, trainer,
                                         p.settings.eval_batch_size)
    with labelled("dev"):
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
    factory = search.encoder_factory(p.spec, p.method, module, tokenizer, p.demo_work, costs, made)
    s = search.Search(p.spec, p.task, p.search, p.settings.calibration, p.settings.seed, p.settings.eval_batch_size,
                      p.pool, demo_draws(p), factory, costs)
    ev = search.run_search(s, module, trainer, proposer)
    encoder.truncated += sum(e.truncated for e in made)
    ev.extra_costs.update(p.demo_work.costs())  # demonstrations written and chosen: the run's and every candidate's
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


def write_predictions(run_dir: Path, ev: Evaluation, tokenizer) -> None:
    """``predictions.jsonl`` (eval) and ``dev_predictions.jsonl`` (dev: what every choice was made on), each row
    naming the prompt the model read by its ``prompt_hash``; first ``prompts.jsonl``, every distinct prompt of
    both once (``schema.PROMPTS_FILE``), so a reader finds each row's prompt there."""
    prompts = PromptLog(tokenizer)
    rows, dev_rows = prompts.named(ev.rows), prompts.named(ev.dev_rows)
    write_jsonl_atomic(run_dir / PROMPTS_FILE, list(prompts.records.values()))
    write_jsonl_atomic(run_dir / "predictions.jsonl", rows)
    if dev_rows:
        write_jsonl_atomic(run_dir / "dev_predictions.jsonl", dev_rows)


class PromptLog:
    """The distinct prompts prediction rows were read through: each row's ``prompt_ids`` (from
    ``evaluation.evaluate.predict_rows``; a list of them for a prompt ensemble) become ``prompt_hash`` (and
    ``prompt_hashes``), and ``records`` holds each prompt's text once by its hash."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.records: dict[str, dict] = {}
        self._hashes: dict[tuple[int, ...], str] = {}

    def hash_of(self, ids: list[int]) -> str:
        key = tuple(ids)
        if key not in self._hashes:
            text = self.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)
            h = prompt_hash(text)
            self.records.setdefault(h, {"prompt_hash": h, "text": text, "tokens": len(ids)})
            self._hashes[key] = h
        return self._hashes[key]

    def named(self, rows: list[dict]) -> list[dict]:
        """The rows as written: ``prompt_ids`` replaced by the prompt's hash."""
        out = []
        for r in rows:
            ids = r.get("prompt_ids")
            r = {k: v for k, v in r.items() if k != "prompt_ids"}
            if ids and isinstance(ids[0], list | tuple):  # an ensemble: every member's prompt, the first heads
                r["prompt_hashes"] = [self.hash_of(i) for i in ids]
                r["prompt_hash"] = r["prompt_hashes"][0]
            elif ids is not None:
                r["prompt_hash"] = self.hash_of(ids)
            out.append(r)
        return out


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


def query_costs(p: Plan, ev: Evaluation) -> dict:
    """What one query costs the row as it heads the report (``report.verdict``): its eval seconds and prompt tokens
    per example. A prompt search scored each readout's chosen prompt(s) in a pass of its own: the headline
    readout's passes count, not the others' (scored for the readout table only)."""
    n = len(ev.rows)
    if not n:
        return {"query_seconds": None, "query_prompt_tokens": None}
    seconds, tokens = ev.seconds, ev.prompt_tokens
    passes, chosen = (ev.selection or {}).get("eval_cost"), (ev.selection or {}).get("chosen") or {}
    ids = chosen.get(headline(p, ev)["readout"]) if passes else None
    if ids and all(i in passes for i in ids):
        seconds = sum(passes[i]["seconds"] for i in ids)
        tokens = sum(passes[i]["prompt_tokens"] for i in ids)
    return {"query_seconds": seconds / n, "query_prompt_tokens": None if tokens is None else tokens / n}


def run_costs(p: Plan, module: PromptModule, encoder: Encoder, trainer: L.Trainer, ev, memory: PeakMemory,
              train_seconds: float, checkpoint: Path | None) -> dict:
    return {
        "train_seconds": round(train_seconds, 3),
        "train_steps": trainer.global_step if p.method.trains else 0,
        "train_examples_seen": module.examples_seen,
        "train_tokens_seen": module.tokens_seen,
        "train_examples_per_second": module.examples_seen / train_seconds if train_seconds else None,
        **p.demo_work.costs(),
        **dict.fromkeys(search.COST_KEYS, 0), "dev_eval_seconds": 0.0,
        "dev_check_seconds": ((p.tuning or {}).get("dev_checks") or {}).get("seconds", 0.0),
        **ev.costs(),  # after: a prompt search's costs include every candidate's demonstrations
        **query_costs(p, ev),
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
