#!/usr/bin/env python
"""Benchmark promptlab's label-restricted scoring against a naive full-vocabulary baseline, on CPU.

For one backbone (default: the bundled SmolLM2-135M) it measures

* model load time: first load (GGUF conversion, forced with a fresh temporary cache) and cached load;
* training examples/s for soft prompt tuning (PEFT) and full fine-tuning: ``ChoiceReadout.loss`` (NLL of
  the class-normalised choice scores, as ``PromptModule.training_step``) + AdamW step, versus the model's own loss on prompt+label
  (``model(input_ids=prompt+label, labels=label tokens only).loss``: full logits at every position);
* evaluation examples/s (inference mode): ``ChoiceReadout.scores`` versus full logits at every position,
  log-softmax over the vocabulary, then picking the label tokens (as ``brute_force_scores``, batched);
* peak resident memory (VmHWM, reset before each phase) for each of these phases.

Prompts are real SST-2 examples rendered with promptlab's own code (``prompts.Encoder``: template 0, chat
template); the answer choices are the task's ``choices`` (negative/positive), the same for every example.
Each training run (method x scoring) starts from a freshly loaded backbone (cached: fast).

    python scripts/benchmark.py --data-root /path/to/data            # full run (~5 min on 2 idle cores)
    python scripts/benchmark.py --data-root /path/to/data --quick    # smoke test (~1 min)
    python scripts/benchmark.py --data-root /path/to/data --model tiny_random   # seconds

The data root is the folder holding ``sst2/{train,validation}.jsonl`` (or set ``PROMPTLAB_DATA``).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch
from omegaconf import OmegaConf

from promptlab.data import PromptDataModule
from promptlab.methods import build_method, count_parameters
from promptlab.models import load_backbone
from promptlab.prompts import Encoder, encode_answer
from promptlab.readout import ChoiceReadout
from promptlab.readout.model import pad
from promptlab.tasks import TaskSpec, load_task, training_subset
from promptlab.tracking import PeakMemory, git_commit, proc_status_mb, versions, write_json_atomic

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
METHODS = ("prompt_tuning", "full_finetune")  # conf/method/<name>.yaml
METHOD_TITLES = {"prompt_tuning": "prompt tuning", "full_finetune": "full fine-tuning"}
VARIANTS = ("restricted", "naive")
DEFINITIONS = {
    "restricted_train": "promptlab.readout.ChoiceReadout.loss: F.nll_loss of the class-normalised choice "
                        "log-probs (no LM head over the vocabulary) against the gold class, backward, AdamW step",
    "naive_train": "model(input_ids=prompt+gold label tokens, labels=-100 except the label tokens).loss: "
                   "full-vocabulary logits at every position, backward, AdamW step",
    "restricted_eval": "promptlab.readout.ChoiceReadout.scores under torch.inference_mode",
    "naive_eval": "model(prompt).logits at every position, log_softmax over the vocabulary, label tokens picked, "
                  "normalised over classes (multi-token labels: one sequence per class); torch.inference_mode",
    "examples_per_second": "timed examples / summed step (batch) wall time, warm-up excluded",
    "peak_rss_mb": "VmHWM after resetting it (clear_refs=5) at the start of the phase; includes the process "
                   "baseline (start_rss_mb)",
}


# ----------------------------------------------------------------------------------------------------------
# Arguments


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2_135m", help="a conf/model/ config name (smollm2_135m, tiny_random)")
    p.add_argument("--data-root", default=os.environ.get("PROMPTLAB_DATA"),
                   help="folder holding sst2/{train,validation}.jsonl (default: $PROMPTLAB_DATA)")
    p.add_argument("--out", default=str(REPO / "results" / "benchmark.json"), help="JSON output path")
    p.add_argument("--batch-size", type=int, default=8, help="training batch size")
    p.add_argument("--warmup", type=int, default=None, help="untimed warm-up training steps per run (default 2; --quick 1)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps per run (default 20; --quick 2)")
    p.add_argument("--eval-examples", type=int, default=None,
                   help="SST-2 validation examples to score, a fixed subset (default 256; --quick 16)")
    p.add_argument("--eval-batch-size", type=int, default=16, help="evaluation batch size")
    p.add_argument("--eval-warmup", type=int, default=None,
                   help="untimed warm-up evaluation batches per phase (default 1; --quick 0)")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tmp-dir", default=None, help="parent of the temporary model cache (default: system temp)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test (~1 min): 1 warm-up + 2 timed steps, 16 eval examples; figures are rough")
    p.add_argument("--no-progress", action="store_true", help="no per-step progress bars")
    args = p.parse_args(argv)
    defaults = {"warmup": (2, 1), "steps": (20, 2), "eval_examples": (256, 16), "eval_warmup": (1, 0)}
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    for name in ("batch_size", "steps", "eval_examples", "eval_batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0 or args.eval_warmup < 0:
        p.error("--warmup and --eval-warmup must be >= 0")
    if not (CONF / "model" / f"{args.model}.yaml").is_file():
        known = ", ".join(sorted(f.stem for f in (CONF / "model").glob("*.yaml")))
        p.error(f"no model config conf/model/{args.model}.yaml (have: {known})")
    if not args.data_root:
        p.error("no data root: pass --data-root DIR or set PROMPTLAB_DATA (the folder holding sst2/)")
    if not (Path(args.data_root).expanduser() / "sst2" / "train.jsonl").is_file():
        p.error(f"{args.data_root}/sst2/train.jsonl not found: --data-root must hold sst2/{{train,validation}}.jsonl")
    return args


# ----------------------------------------------------------------------------------------------------------
# Machine facts and memory


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS, so the next phase's peak starts low."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


class Phase:
    """Times one phase and records its peak RSS (VmHWM reset at entry via promptlab's PeakMemory)."""

    def __init__(self, name: str, results: list[dict]):
        self.name, self.results, self.memory = name, results, PeakMemory()
        self.record: dict = {"phase": name}

    def __enter__(self) -> Phase:
        release_memory()
        print(f"[{time.strftime('%H:%M:%S')}] {self.name} ...", flush=True)
        self.record["loadavg_start"] = loadavg()
        self.memory.reset()
        self.record["start_rss_mb"] = _round(proc_status_mb("VmRSS"))
        self.start = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.record["wall_seconds"] = round(time.perf_counter() - self.start, 3)
        self.record["peak_rss_mb"] = _round(self.memory.peak_rss_mb())
        self.record["peak_rss_reset_ok"] = self.memory.reset_ok
        self.record["loadavg_end"] = loadavg()
        if exc_type is None:
            self.results.append(self.record)
            extra = self.record.get("examples_per_second")
            rate = f", {extra:.2f} ex/s" if extra is not None else ""
            print(f"    done in {self.record['wall_seconds']:.1f} s{rate}, peak RSS {self.record['peak_rss_mb']:.0f} MB",
                  flush=True)


def _round(x: float | None, nd: int = 1) -> float | None:
    return None if x is None else round(x, nd)


def progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=f"    {desc}", leave=False, file=sys.stderr, dynamic_ncols=True)


# ----------------------------------------------------------------------------------------------------------
# The two ways of computing the loss and the scores


def restricted_loss(model, readout: ChoiceReadout, batch: dict) -> torch.Tensor:
    """promptlab's objective (``PromptModule.training_step``): NLL of the class-normalised choice scores."""
    return readout.loss(model, batch)


def naive_loss(model, pad_id: int, batch: dict) -> torch.Tensor:
    """The model's own LM loss on prompt + gold answer tokens: full-vocabulary logits at every position."""
    prompts = batch["prompt_ids"]
    answers = [list(cs[int(y)]) for cs, y in zip(batch["choice_ids"], batch["labels"], strict=True)]
    seqs = [list(p) + a for p, a in zip(prompts, answers, strict=True)]
    ids, mask = pad(seqs, pad_id, torch.device("cpu"))
    targets = torch.full_like(ids, -100)
    for i, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        targets[i, len(p): len(p) + len(a)] = torch.tensor(a)
    return model(input_ids=ids, attention_mask=mask, labels=targets, use_cache=False).loss


def naive_scores(model, pad_id: int, prompts: Sequence[Sequence[int]],
                 choices: Sequence[Sequence[Sequence[int]]]) -> torch.Tensor:
    """Choice log-probs from full logits at every position (``brute_force_scores``, batched and padded).

    Shared single-token choices (SST-2): one sequence per example. Otherwise one sequence per (example,
    choice); shorter choice lists are padded with -inf, as ``ChoiceReadout.scores`` does.
    """
    shared = all(list(c) == list(choices[0]) for c in choices)
    single = shared and all(len(t) == 1 for t in choices[0])
    pairs = [(i, c) for i, cs in enumerate(choices) for c in range(len(cs))]
    seqs = [list(p) for p in prompts] if single else [list(prompts[i]) + list(choices[i][c]) for i, c in pairs]
    ids, mask = pad(seqs, pad_id, torch.device("cpu"))
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    logp = logits[:, -ids.shape[1]:].float().log_softmax(-1)  # PEFT prompt tuning prepends virtual positions
    if single:
        last = torch.tensor([len(p) - 1 for p in prompts])
        rows = torch.tensor([t[0] for t in choices[0]])
        return logp[torch.arange(len(prompts)), last][:, rows].log_softmax(-1)
    out = torch.full((len(prompts), max(len(cs) for cs in choices)), -torch.inf)
    for s, (i, c) in enumerate(pairs):
        out[i, c] = sum(logp[s, len(prompts[i]) - 1 + j, tok] for j, tok in enumerate(choices[i][c]))
    return out.log_softmax(-1)


# ----------------------------------------------------------------------------------------------------------
# Phases


def train_phase(name: str, model, step_loss: Callable, batches: list[dict], warmup: int, optim,
                show_progress: bool, results: list[dict]) -> dict:
    """Warm-up steps, then timed steps of forward + cross-entropy + backward + AdamW, on fixed batches."""
    params = [p for p in model.parameters() if p.requires_grad]
    with Phase(name, results) as ph:
        model.train()
        # Constant lr (no warm-up/decay schedule): the method's lr and weight decay, as before.
        optimizer = torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)
        step_seconds, losses = [], []
        for i, batch in enumerate(progress(batches, len(batches), name, show_progress)):
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss = step_loss(model, batch)
            loss.backward()
            optimizer.step()
            elapsed = time.perf_counter() - start
            losses.append(round(loss.item(), 4))
            if i >= warmup:
                step_seconds.append(elapsed)
        timed = batches[warmup:]
        examples = sum(len(b["labels"]) for b in timed)
        tokens = sum(len(p) for b in timed for p in b["prompt_ids"])
        total = sum(step_seconds)
        ph.record.update({
            "kind": "train", "warmup_steps": warmup, "timed_steps": len(step_seconds), "examples": examples,
            "prompt_tokens": tokens, "timed_seconds": round(total, 3), "examples_per_second": examples / total,
            "prompt_tokens_per_second": tokens / total,
            "examples_per_second_median_step": len(timed[0]["labels"]) / statistics.median(step_seconds),
            "step_seconds": [round(s, 3) for s in step_seconds], "losses": losses,
        })
        optimizer.zero_grad(set_to_none=True)
        del optimizer
    return ph.record


def eval_phase(name: str, model, score: Callable, batches: list[dict], warmup: int, show_progress: bool,
               results: list[dict]) -> tuple[dict, torch.Tensor]:
    """Untimed warm-up batches (re-scored later), then every batch timed, in inference mode."""
    with Phase(name, results) as ph:
        model.eval()
        scores, batch_seconds = [], []
        with torch.inference_mode():
            for batch in batches[:warmup]:
                score(model, batch)
            for batch in progress(batches, len(batches), name, show_progress):
                start = time.perf_counter()
                scores.append(score(model, batch).float())
                batch_seconds.append(time.perf_counter() - start)
        examples = sum(len(b["labels"]) for b in batches)
        tokens = sum(len(p) for b in batches for p in b["prompt_ids"])
        total = sum(batch_seconds)
        ph.record.update({
            "kind": "eval", "warmup_batches": min(warmup, len(batches)), "batches": len(batches),
            "examples": examples, "prompt_tokens": tokens, "timed_seconds": round(total, 3),
            "examples_per_second": examples / total, "prompt_tokens_per_second": tokens / total,
            "batch_seconds": [round(s, 3) for s in batch_seconds],
        })
    return ph.record, torch.cat(scores)


# ----------------------------------------------------------------------------------------------------------
# Main


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the weight-loading bar is noise here
    except ImportError:
        pass
    # PEFT calls a transformers method that warns about its own deprecation; nothing to act on here.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    show_progress = not args.no_progress
    bench_start = time.perf_counter()

    model_cfg = OmegaConf.load(CONF / "model" / f"{args.model}.yaml")
    data_cfg = OmegaConf.load(CONF / "data" / "sst2.yaml")
    n_train = args.batch_size * (args.warmup + args.steps)
    data_cfg.merge_with({"source": "local", "template": 0, "k_shot": None, "train_size": n_train,
                         "eval_limit": args.eval_examples})
    spec = TaskSpec.from_config(data_cfg)
    methods = {m: build_method(OmegaConf.load(CONF / "method" / f"{m}.yaml")) for m in args.methods}
    for method in methods.values():
        method.validate(spec)

    meta = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": args.model,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "versions": versions(),
        "git_commit": git_commit(REPO),
        "platform": platform.platform(),
        "args": {k: v for k, v in vars(args).items() if k != "data_root"},
        "data": {"dataset": "sst2", "template": 0, "train_split": spec.train_split,
                 "eval_split": spec.eval_split},
        "loadavg_start": loadavg(),
    }
    print(f"promptlab benchmark: {args.model} on {meta['cpu_model']} ({meta['cpu_count']} CPUs), "
          f"{meta['torch_threads']} torch threads, torch {meta['versions']['torch']}, "
          f"transformers {meta['versions']['transformers']}, peft {meta['versions']['peft']}", flush=True)
    print(f"batch {args.batch_size}, {args.warmup} warm-up + {args.steps} timed steps per training run, "
          f"{args.eval_examples} eval examples (batch {args.eval_batch_size}); load average {meta['loadavg_start']}",
          flush=True)

    phases: list[dict] = []
    cache_dir = Path(tempfile.mkdtemp(prefix="promptlab-bench-", dir=args.tmp_dir))
    try:
        # Data first: every data check runs before any model loads (as promptlab.train does).
        start = time.perf_counter()
        task = load_task(spec, str(Path(args.data_root).expanduser()))
        train_rows = training_subset(task, args.seed)
        meta["data"]["task_load_seconds"] = round(time.perf_counter() - start, 3)

        # 1. Model load: the first load converts the GGUF into the fresh cache; the second reads that cache.
        with Phase("load: first (fresh cache)", phases) as ph:
            backbone = load_backbone(model_cfg, cache_dir)
            ph.record.update(kind="load", load_seconds=round(backbone.load_seconds, 3), from_cache=backbone.from_cache)
        tokenizer = backbone.tokenizer
        del backbone
        with Phase("load: cached", phases) as ph:
            backbone = load_backbone(model_cfg, cache_dir)
            ph.record.update(kind="load", load_seconds=round(backbone.load_seconds, 3), from_cache=backbone.from_cache)
        _, total_params = count_parameters(backbone.model)
        del backbone

        # Prompts with promptlab's own code: the Encoder renders template 0 through the chat template (no
        # demonstrations) and encodes each example's choices; the batches carry prompt_ids, choice_ids, labels.
        label_ids = [encode_answer(tokenizer, c) for c in spec.choices]  # what every item's choice_ids holds
        pad_id = tokenizer.pad_token_id
        readout = ChoiceReadout(pad_id)
        encoder = Encoder(tokenizer, spec)
        dm = PromptDataModule(encoder, train_rows, task.eval, args.batch_size, args.eval_batch_size, args.seed)
        dm.setup("fit")
        train_batches = list(dm.train_dataloader())[: args.warmup + args.steps]
        eval_batches = list(dm.predict_dataloader())
        meta["data"].update({
            "template_text": spec.prompt_template, "system_prompt": spec.system_prompt,
            "verbalizer": list(spec.choices), "label_token_ids": label_ids,  # key kept: the task's choices
            "single_token_labels": all(len(t) == 1 for t in label_ids), "train_examples": len(train_rows),
            "eval_examples": sum(len(b["labels"]) for b in eval_batches),
            "mean_train_prompt_tokens": round(
                sum(len(x["prompt_ids"]) for x in dm.train_items) / len(dm.train_items), 1),
            "mean_eval_prompt_tokens": round(
                sum(len(x["prompt_ids"]) for x in dm.eval_items) / len(dm.eval_items), 1),
            "truncated_prompts": encoder.truncated,
        })

        losses = {
            "restricted": lambda model, batch: restricted_loss(model, readout, batch),
            "naive": lambda model, batch: naive_loss(model, pad_id, batch),
        }
        scorers = {
            "restricted": lambda model, batch: readout.scores(model, batch["prompt_ids"], batch["choice_ids"]),
            "naive": lambda model, batch: naive_scores(model, pad_id, batch["prompt_ids"], batch["choice_ids"]),
        }
        checks: dict[str, dict] = {}
        params: dict[str, dict] = {}

        # 2. Per method: fresh backbone -> train (restricted), then evaluate both ways on that model;
        #    fresh backbone again -> train (naive). Each training run starts from the same weights.
        for m in args.methods:
            method = methods[m]
            for variant in VARIANTS:
                release_memory()
                torch.manual_seed(args.seed)
                backbone = load_backbone(model_cfg, cache_dir)
                model = method.prepare(backbone, spec)
                trainable, total = count_parameters(model)
                params[m] = {"trainable": trainable, "total": total}
                rec = train_phase(f"{m} train {variant}", model, losses[variant], train_batches, args.warmup, method.optim(),
                                  show_progress, phases)
                rec.update(method=m, variant=variant, backbone_reload_seconds=round(backbone.load_seconds, 3))
                if variant == "restricted":
                    scores = {}
                    for ev in VARIANTS:
                        rec, scores[ev] = eval_phase(f"{m} eval {ev}", model, scorers[ev], eval_batches,
                                                     args.eval_warmup, show_progress, phases)
                        rec.update(method=m, variant=ev)
                    real = scores["restricted"].isfinite() | scores["naive"].isfinite()  # -inf: padded choices
                    diff = (scores["restricted"] - scores["naive"])[real].abs().max().item()
                    agree = (scores["restricted"].argmax(-1) == scores["naive"].argmax(-1)).float().mean().item()
                    checks[m] = {"max_abs_diff_class_logprob": diff, "argmax_agreement": agree}
                    print(f"    check: restricted vs naive class log-probs max |diff| {diff:.2e}, "
                          f"argmax agreement {agree:.3f}", flush=True)
                del model, backbone
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)

    summary = summarise(phases, args.methods)
    result = {"meta": {**meta, "total_params": total_params, "loadavg_end": loadavg(),
                       "benchmark_seconds": round(time.perf_counter() - bench_start, 1)},
              "definitions": DEFINITIONS, "parameters": params, "summary": summary, "score_check": checks, "phases": phases}
    print()
    print(format_table(result))
    write_json_atomic(args.out, result)
    print(f"\nwrote {args.out}")
    return result


def summarise(phases: list[dict], methods: Sequence[str]) -> dict:
    """Examples/s, peak RSS and restricted/naive speed-ups, per method and kind (train, eval)."""
    out: dict = {"load": {}}
    for ph in phases:
        if ph.get("kind") == "load":
            key = "first" if ph["phase"].startswith("load: first") else "cached"
            out["load"][key] = {"seconds": ph["load_seconds"], "peak_rss_mb": ph["peak_rss_mb"],
                                "from_cache": ph["from_cache"]}
    for m in methods:
        out[m] = {}
        for kind in ("train", "eval"):
            row = {}
            for ph in phases:
                if ph.get("method") == m and ph.get("kind") == kind:
                    row[ph["variant"]] = {"examples_per_second": round(ph["examples_per_second"], 3),
                                          "peak_rss_mb": ph["peak_rss_mb"]}
            if "restricted" in row and "naive" in row:
                row["speedup"] = round(row["restricted"]["examples_per_second"] / row["naive"]["examples_per_second"], 3)
                row["peak_rss_ratio_naive_over_restricted"] = round(
                    row["naive"]["peak_rss_mb"] / row["restricted"]["peak_rss_mb"], 3)
            out[m][kind] = row
    return out


def format_table(result: dict) -> str:
    meta, s = result["meta"], result["summary"]
    v = meta["versions"]
    lines = [
        f"Benchmark: {meta['model']} ({meta['total_params'] / 1e6:.1f} M params), {meta['date']}",
        f"CPU: {meta['cpu_model']} x{meta['cpu_count']}, torch threads {meta['torch_threads']}; "
        f"torch {v['torch']}, transformers {v['transformers']}, peft {v['peft']}",
        f"Data: SST-2 template 0, train batch {meta['args']['batch_size']} x {meta['args']['steps']} timed steps "
        f"(+{meta['args']['warmup']} warm-up), eval {meta['data']['eval_examples']} examples "
        f"(batch {meta['args']['eval_batch_size']}); mean prompt {meta['data']['mean_train_prompt_tokens']} tokens",
        f"Load average: start {meta['loadavg_start']}, end {meta['loadavg_end']}; "
        f"total {meta['benchmark_seconds']:.0f} s",
        "",
    ]
    load = s["load"]
    for key, title in (("first", "first (GGUF conversion)" if meta["model"] != "tiny_random" else "first"),
                       ("cached", "cached")):
        if key in load:
            lines.append(f"Model load, {title:<24} {load[key]['seconds']:8.2f} s   peak RSS {load[key]['peak_rss_mb']:7.0f} MB")
    lines.append("")
    header = (f"{'method':<17} {'phase':<6} {'restricted ex/s':>15} {'naive ex/s':>11} {'speed-up':>9} "
              f"{'restr. peak MB':>15} {'naive peak MB':>14}")
    lines += [header, "-" * len(header)]
    for m, title in METHOD_TITLES.items():
        if m not in s:
            continue
        for kind in ("train", "eval"):
            row = s[m][kind]
            r, n = row.get("restricted", {}), row.get("naive", {})
            speed = f"{row['speedup']:.2f}x" if "speedup" in row else "-"
            lines.append(
                f"{title:<17} {kind:<6} {r.get('examples_per_second', float('nan')):15.2f} "
                f"{n.get('examples_per_second', float('nan')):11.2f} {speed:>9} "
                f"{r.get('peak_rss_mb', float('nan')):15.0f} {n.get('peak_rss_mb', float('nan')):14.0f}")
    checks = result.get("score_check", {})
    if checks:
        lines.append("")
        for m, c in checks.items():
            lines.append(f"Score check ({METHOD_TITLES[m]}): restricted vs naive class log-probs max |diff| "
                         f"{c['max_abs_diff_class_logprob']:.1e}, argmax agreement {c['argmax_agreement']:.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
