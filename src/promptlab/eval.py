"""``promptlab-eval``: evaluate a completed run's saved state (soft prompt, fine-tuned weights, or the
prompt of a prompting run) on any task and split, without retraining.

    promptlab-eval run=runs/demo/4_prompt_tuning_sst2_s0_t0                       # re-score it as trained
    promptlab-eval run=runs/demo/0_zero_shot_sst2_s0_t0 data=rte data.eval_limit=100

The run's resolved ``config.yaml`` is the starting point; ``data=<task>`` swaps the task (``logger=``,
``trainer=`` likewise), ``key=value`` overrides one of its values; what the run is (``method=``, ``model=``,
``search=``) cannot change, and an unknown key is refused. A backbone whose weights differ from the run's
(another revision, ``model.init_seed`` of a tiny model) is refused unless ``allow_other_model=true``
(recorded). The result goes to ``<run>/evals/<time>_<task>_<split>/`` (result.json with ``kind: eval``,
predictions.jsonl), next to the training record, never over it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from promptlab.config import config_keys, has_key, nearest_key
from promptlab.errors import ConfigError
from promptlab.tracking import RunRecord, new_run_id

USAGE = "promptlab-eval run=<run directory> [data=<task>] [key=value ...]"


def source_config(run_dir: Path) -> tuple[DictConfig, dict]:
    """The training run's config and record; ConfigError unless it completed."""
    try:
        record = json.loads((run_dir / "result.json").read_text())
        cfg = OmegaConf.load(run_dir / "config.yaml")
    except (OSError, ValueError) as err:
        raise ConfigError(f"{run_dir} holds no readable run (result.json + config.yaml): {err}",
                          "pass run=<a directory written by promptlab-train>") from None
    if record.get("status") != "completed":
        raise ConfigError(f"{run_dir} did not complete (status {record.get('status')!r})",
                          "evaluate a completed run, or re-run the training first")
    return cfg, record


SWAPPABLE = ("data", "logger", "trainer")  # groups an evaluation may change: the task, where results go, the device
FIXED = {  # groups that are what the saved run is: changing them would evaluate something else
    "method": "the method is what the run trained; train the other method with promptlab-train method=...",
    "model": "the run's weights belong to its backbone; train on the other model with promptlab-train model=...",
    "search": "the run's prompt was chosen on dev when it trained; search again with promptlab-train search=...",
    "mixture": "evaluate one task at a time with data=<task>",
}


def group_config(group: str, name: str) -> DictConfig:
    """The config group ``group``'s option ``name`` (``conf/<group>/<name>.yaml``), composed by Hydra."""
    from hydra import compose, initialize_config_dir

    from promptlab.config import CONFIG_DIR, group_options

    options = group_options(group)
    if name not in options:
        raise ConfigError(f"{group}={name} is not one of conf/{group}/", f"use one of {', '.join(options)}")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=[f"{group}={name}"])[group]


def apply_overrides(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """``data=<task>`` swaps in that task's YAML (a mixture-trained run is then evaluated on that task alone),
    ``logger=`` / ``trainer=`` theirs; ``a.b=c`` sets one value of the run's config (``+a.b=c`` adds one). Any other
    group, or a key the config does not have, is refused with a message."""
    values = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"cannot read the argument {item!r}", f"usage: {USAGE}")
        if key in FIXED:
            raise ConfigError(f"promptlab-eval cannot change {key}= of a saved run", FIXED[key])
        if key in SWAPPABLE:
            with open_dict(cfg):
                cfg[key] = group_config(key, value)
                if key == "data":
                    cfg.mixture = None
            continue
        if not key.startswith("+") and not has_key(cfg, key):
            near = nearest_key(key, config_keys(OmegaConf.to_container(cfg)))
            raise ConfigError(f"{key} is not a key of the run's config",
                              f"did you mean {near}=...?" if near else "use a key of the run's config.yaml")
        values.append(f"{key.lstrip('+')}={value}")
    with open_dict(cfg):
        return OmegaConf.merge(cfg, OmegaConf.from_dotlist(values))


ALLOW_OTHER_MODEL = "allow_other_model=true"
IDENTITY = ("source", "init_seed", "commit", "revision", "weights_sha256")  # what tells two backbones' weights apart


@dataclass
class Saved:
    """A completed training run whose saved state a new run evaluates (``run.execute(saved=...)``)."""

    source: Path
    record: dict
    allow_other_model: bool = False

    @property
    def checkpoint(self) -> Path:
        return self.source / (self.record.get("checkpoint") or "checkpoint")

    def check_model(self, model_id: dict) -> None:
        """A ConfigError when the backbone loaded is not the one the run trained on (its soft prompt or adapter
        would be read by other weights), unless ``allow_other_model=true`` (recorded)."""
        trained = (self.record.get("provenance") or {}).get("model") or {}
        differ = [k for k in IDENTITY if (k in trained or k in model_id) and trained.get(k) != model_id.get(k)]
        if differ and not self.allow_other_model:
            shown = "; ".join(f"{k}: {trained.get(k)!r} then, {model_id.get(k)!r} now" for k in differ)
            raise ConfigError(f"the backbone loaded is not the one the run trained on ({shown})",
                              f"evaluate with the run's own model config, or add {ALLOW_OTHER_MODEL} to evaluate it "
                              "on this one anyway (the record says so)")


def allow_other_model(overrides: list[str]) -> bool:
    """The ``allow_other_model=true|false`` flag among the overrides (the last one counts)."""
    flags = [o.partition("=")[2] for o in overrides if o.partition("=")[0] == "allow_other_model"]
    bad = [v for v in flags if v not in ("true", "false")]
    if bad:
        raise ConfigError(f"allow_other_model={bad[0]} is not true or false", f"write {ALLOW_OTHER_MODEL}")
    return bool(flags) and flags[-1] == "true"


def run_eval(source: Path, overrides: list[str]) -> tuple[dict, Path]:
    """Evaluate the saved run ``source`` under ``overrides`` through the run pipeline (``run.execute``, which
    loads its state instead of training); returns the new record and its directory."""
    from promptlab.run.execute import execute
    from promptlab.run.planning import plan

    cfg, src_record = source_config(source)
    saved = Saved(source, src_record, allow_other_model(overrides))
    cfg = apply_overrides(cfg, [o for o in overrides if o.partition("=")[0] != "allow_other_model"])
    p = plan(cfg)  # every check before the model loads; demos are redrawn exactly as in training
    if p.method.trains and not saved.checkpoint.is_dir():
        raise ConfigError(f"{source} has no checkpoint/ to evaluate", "re-run the training (its checkpoint is missing)")
    out = source / "evals" / f"{datetime.now():%Y%m%d-%H%M%S-%f}_{p.spec.name}_{cfg.data.eval_split}"
    record = RunRecord(out, cfg, new_run_id(cfg.method.name, cfg.data.name, cfg.seed), kind="eval")
    record.update(source_run=str(source))
    record.start_heartbeat()
    try:
        return execute(cfg, out, record, None, saved, p), out
    finally:
        record.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return 0
    runs = [a for a in args if a.startswith("run=")]
    if len(runs) != 1:
        print(f"promptlab-eval: error: name exactly one run=<directory>\n  usage: {USAGE}", file=sys.stderr)
        return 2
    try:
        result, out = run_eval(Path(runs[0][4:]), [a for a in args if not a.startswith("run=")])
    except ConfigError as err:
        print(f"promptlab-eval: error: {err.problem}\n  fix: {err.fix}", file=sys.stderr)
        return 2
    from promptlab.run.summary import summary_line

    print(f"{summary_line(result, out)} · split {result['eval_split']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
