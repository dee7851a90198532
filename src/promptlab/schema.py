"""The run-record contract: what ``result.json``, ``predictions.jsonl`` and ``prompts.jsonl`` hold, written by
``tracking`` and read by ``report``. Torch-free, so the report never imports training code.

Conventions, in one place:
- Every metric value is a fraction in [0, 1] (accuracy, exact match, ROUGE F-measure, chrF/100, BLEU/100);
  reports show them x100 as points. ``higher_is_better`` says which way is good.
- ``primary_metric`` names the one metric that tables and figures rank by; ``chance`` is that metric's
  value for uniform guessing (choice tasks only; null for generation).
- A prediction row always carries ``score``: the example's value of the primary metric, so a paired
  bootstrap works for every metric (for corpus metrics such as chrF it is the sentence-level score).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, Literal

# Config sections that do not change what a run computes: left out of the config hash (tracking) and of the
# report's grouping (report.configs).
NON_SEMANTIC_KEYS = ("paths", "logger", "hydra", "tags", "skip_completed", "num_threads", "resume",
                     "checkpoint_every_n_steps", "checkpoint_every_minutes")

SCHEMA_VERSION = 3  # 3: dev_metrics, headline, objective, train_idx, splits; status diverged
HEARTBEAT_SECONDS = 60  # a running record's heartbeat_at is refreshed this often
STALE_AFTER_SECONDS = 3 * HEARTBEAT_SECONDS
# interrupted: stopped by SIGINT/SIGTERM (``error`` names the signal). diverged: training or scoring gave
# non-finite numbers (``diverged_at_step``): an outcome of its configuration, never ranked as a result. A
# ``running`` record whose heartbeat is older than STALE_AFTER_SECONDS belongs to a process that died without
# a word (SIGKILL, power loss).
Status = Literal["running", "completed", "failed", "interrupted", "diverged"]
FINAL = ("completed", "diverged")  # a run that ended this way is not resumed, and a sweep re-run skips it
Kind = Literal["train", "eval"]  # promptlab-train, or promptlab-eval re-scoring a saved run
OutputType = Literal["choice", "generate"]  # a task's; a mixture run's record says "mixture"


@dataclass
class MethodInfo:
    """What a method is, declared once by the method and copied into every record."""

    name: str  # the method YAML's name, e.g. "prompt_tuning"
    type: str  # the registered implementation, e.g. "prompting", "prompt_tuning"
    display_name: str  # "Prompt tuning"
    modifies: str  # "virtual token embeddings (backbone frozen)"
    trains: bool


@dataclass
class Machine:
    """Where the timings were measured: they mean little without the CPU and how busy it was."""

    hostname: str
    cpu: str
    cores: int
    torch_threads: int
    gpu: str | None
    load_start: list[float]  # os.getloadavg() at the start: 1, 5, 15 minutes
    load_end: list[float] | None = None


@dataclass
class RunResult:
    """One ``result.json``. ``metrics`` and ``costs`` are flat name -> number maps (see module docstring)."""

    run_id: str
    status: Status
    kind: Kind
    method: str
    method_info: MethodInfo | None  # None until the method is validated
    model: str
    dataset: str
    output_type: OutputType | Literal["mixture"]
    primary_metric: str
    higher_is_better: bool | None  # None until the task is validated
    chance: float | None
    seed: int
    k_shot: int | None
    train_size: int | None
    template_id: int | None  # None: the prompt was chosen by a search (see selection)
    num_demos: int
    eval_split: str
    config_hash: str
    git_commit: str | None
    versions: dict[str, str]
    machine: Machine
    started_at: str
    schema_version: int = SCHEMA_VERSION
    metrics: dict[str, float] = field(default_factory=dict)
    costs: dict[str, Any] = field(default_factory=dict)
    num_train_examples: int | None = None
    checkpoint: str | None = None  # relative to the run directory
    source_run: str | None = None  # kind == "eval": the training run's directory
    finished_at: str | None = None
    error: str | None = None
    traceback: str | None = None
    pid: int | None = None  # the process that wrote the record, and its host
    host: str | None = None
    heartbeat_at: str | None = None  # refreshed while running (see is_stale)
    git_dirty: bool | None = None  # uncommitted changes in the source tree: the commit alone does not reproduce it
    # seeds per component, data sources ("<file> sha256:<hash>" or "hub:..."), model identity (revision or hash)
    provenance: dict[str, Any] = field(default_factory=dict)
    # one entry per restart from a checkpoint: {"at", "from_step", "checkpoint", "previous_status"}
    resumes: list[dict[str, Any]] = field(default_factory=list)
    # a prompt search (promptlab.search): split, metric, every candidate's text and dev (and eval_all: eval)
    # metrics, and the candidate(s) each readout (raw, each calibration) chose
    selection: dict[str, Any] | None = None
    # an instruction-tuning mixture (promptlab.instruct): seen and held-out tasks, weights, budget, tasks not
    # evaluated; its metrics are "<task>/<metric>" plus seen_mean and heldout_mean (mean primary metrics)
    mixture: dict[str, Any] | None = None
    # the same metrics on dev, where every choice is made (a readout, a prompt, a trial)
    dev_metrics: dict[str, float] = field(default_factory=dict)
    # what heads the run's row: {"metric": "accuracy@batch", "readout", "default", "chosen_on": "dev", "readouts"}
    headline: dict[str, Any] | None = None
    objective: str = "dev"  # the split a sweeper optimised this run on ("eval" only when explicitly allowed)
    # the rows the run drew: its training sample's idx (empty for a method that reads none; per task for a
    # mixture) and how each split was made (rows, where dev came from, overlaps dropped)
    train_idx: list[int] | dict[str, list[int]] = field(default_factory=list)
    splits: dict[str, Any] = field(default_factory=dict)
    diverged_at_step: int | None = None  # status "diverged": the optimiser step where numbers went non-finite
    # tuning (promptlab.tuning): the trial's index, point and space; the dev evaluations the run made and the
    # experiment's budget; a trained run's dev checks (step, dev metrics, score) and the step chosen on dev
    tuning: dict[str, Any] | None = None
    allow_other_model: bool | None = None  # kind == "eval": another backbone's weights evaluated on purpose

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


RESULT_FIELDS = frozenset(f.name for f in fields(RunResult))


def check_fields(names: Any) -> None:
    """A record is written only with ``RunResult``'s fields: a new one is declared there first."""
    unknown = sorted(set(names) - RESULT_FIELDS)
    if unknown:
        raise TypeError(f"not fields of schema.RunResult: {unknown}")


# Cost keys a record may carry (all optional; a method that does not train has zeros, not gaps).
COST_KEYS = (
    "trainable_params", "total_params", "trainable_fraction", "model_load_seconds",
    "train_seconds", "train_steps", "train_examples_seen", "train_tokens_seen", "train_examples_per_second",
    "eval_seconds", "eval_examples", "eval_examples_per_second",
    "eval_prompt_tokens",  # the eval prompts' tokens (an ensemble's every prompt; a search: every readout's pick)
    "query_seconds", "query_prompt_tokens",  # per example, the headline's prompt(s) only: what serving costs a query
    "dev_examples", "dev_eval_seconds",  # dev scored beside eval (a search's dev scoring is in search_seconds)
    "dev_check_seconds",  # dev checks during training (method.dev_every_n_steps)
    "generated_tokens", "generation_seconds", "generated_tokens_per_second",
    "demo_generated_tokens", "demo_generation_seconds",  # model-written demonstrations (few-shot CoT)
    "demo_selection_seconds",  # nearest-neighbour demonstrations: embedding the pool and the queries
    "peak_rss_mb", "peak_rss_reset_per_run", "peak_gpu_mb", "checkpoint_bytes", "truncated_prompts",
    "stored_params", "optimizer_state_bytes",  # per task (the checkpoint's tensors); AdamW's moments at the end
    "resume_checkpoints", "resume_checkpoint_seconds", "resume_checkpoint_bytes",  # this attempt's saves
    # prompt search: candidates, dev examples and prompt tokens scored, tokens written (proposals, reasoning),
    # seconds (proposal and dev scoring; a proposer model's load); eval_all's extra eval of the others
    "search_candidates", "search_examples_scored", "search_tokens_scored", "search_generated_tokens",
    "search_seconds", "search_proposal_seconds", "search_proposer_load_seconds", "sensitivity_eval_seconds",
)

# predictions.jsonl (eval) and dev_predictions.jsonl (dev), one row per example (sorted by idx):
#   choice:   idx, label, pred, pred_name, log_probs (per answer, normalised over the answers), answer_logprobs
#             (summed log-likelihood per answer) with answer_tokens/_chars/_bytes, score; pred@<readout> for
#             every other readout (evaluation.readouts); CoT runs add "generation"
#   generate: idx, generation (raw model text), answer (after filters), references, scores {metric: v}, score
#   both:     prompt_hash, the prompt the model read for pred (its key in prompts.jsonl; a prompt search's row: the
#             prompt its raw readout chose, which ``prompt`` names; a CLIP row, read through no text prompt, has
#             none); a prompt ensemble's row also has prompt_hashes, every member's (prompt_hash: the first's)
PREDICTION_KEYS = {
    "choice": ("idx", "label", "pred", "pred_name", "log_probs", "answer_logprobs", "answer_tokens", "answer_chars",
               "answer_bytes", "score", "prompt_hash"),
    "generate": ("idx", "generation", "answer", "references", "scores", "score", "prompt_hash"),
}

# prompts.jsonl, beside them: each distinct prompt of both files once, as lm-evaluation-harness's --log_samples
# keeps it: {"prompt_hash", "text", "tokens"}; text is the prompt's token ids decoded (chat template, system
# prompt, demonstrations and any truncation as the model read them), tokens their number.
PROMPTS_FILE = "prompts.jsonl"


def prompt_hash(text: str) -> str:
    """A prompt's key in prompts.jsonl: the first 16 hex digits of its text's SHA-256."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def record_problem(rec: Any) -> str | None:
    """Why a parsed ``result.json`` cannot be used by the report, or None when it can.

    Lenient on purpose: records of schema 1 (before generation; accuracy only) stay readable.
    """
    if not isinstance(rec, dict):
        return f"expected a JSON object, got {type(rec).__name__}"
    missing = [k for k in ("method", "dataset") if not isinstance(rec.get(k), str)]
    if missing:
        return f"missing {', '.join(missing)}"
    for section in ("metrics", "costs"):
        if not isinstance(rec.get(section) or {}, dict):
            return f"{section!r} is not an object"
    return None


def is_stale(rec: dict, now: datetime | None = None) -> bool:
    """A ``running`` record whose process stopped writing its heartbeat: it died (e.g. SIGKILL) or hangs.

    Records without a heartbeat (written before it existed) are never called stale.
    """
    beat = rec.get("heartbeat_at") if rec.get("status") == "running" else None
    if not isinstance(beat, str):
        return False
    try:
        then = datetime.fromisoformat(beat)
    except ValueError:
        return False
    return ((now or datetime.now(timezone.utc)) - then).total_seconds() > STALE_AFTER_SECONDS


def primary_metric(rec: dict) -> str:
    """The metric a record ranks by (schema-1 records were all accuracy)."""
    return rec.get("primary_metric") or "accuracy"
