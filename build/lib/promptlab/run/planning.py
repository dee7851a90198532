"""Planning a run: every check and every choice made before the (slow) model load — settings, model, task and
method checked together, the data loaded, the training budget and the demonstrations drawn (``Plan``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from promptlab import tuning
from promptlab.config import CONFIG_DIR, Settings, check_added_keys
from promptlab.errors import ConfigError
from promptlab.evaluation.calibration import METHODS as CALIBRATIONS
from promptlab.methods import DemoWork, Method, build_method
from promptlab.models import check_model
from promptlab.search import SearchSpec
from promptlab.tasks import Task, TaskSpec, load_task, training_subset
from promptlab.tasks.mixture import Mixture

DEMO_DRAW_STRIDE = 100_003  # seed offset between a search's demonstration draws (search.demo_draws)


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
    demo_work: DemoWork = field(default_factory=DemoWork)  # what the demonstrations cost once the model writes them


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
    method = build_method(cfg.method, num_tasks=len(mixture.train_tasks))  # multitask prompt tuning: a task id each
    if cfg.method.get("dev_every_n_steps") is not None:
        raise ConfigError(f"method.dev_every_n_steps with mixture={mixture.name}: dev checks during training are "
                          "for single tasks for now", "use method.dev_every_n_steps=null")
    if method.num_demos or cfg.get("search") is not None or settings.calibration:
        raise ConfigError(f"mixture={mixture.name} evaluates every task zero-shot, uncalibrated, with its default "
                          "template", "use a zero-shot or trained method without search=... and calibration=[]")
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
