"""What the shared-prefix key/value cache (``readout.model.PrefixCache``) saves in the two workloads it now covers.
Each is measured both ways in one run, on the same pre-encoded batches, with the rounds interleaved (every other
round in reverse order) and the median over the rounds reported:

* ``images``: the colours task scored zero-shot and few-shot with 4 image demonstrations on the SmolVLM-shaped
  backbone (``multimodal.smolvlm_shaped``: real SmolLM2-135M, random SigLIP-B/16 at 512 px, 64 tokens an image).
  ``before`` is the cache with its image handling switched off, as it was before: a batch with pixel inputs runs
  whole, including every demonstration image for every row. ``after`` is the cache as it is now: the
  demonstrations, images included, run once per pass, keyed by their pixels. The figure is few-shot cost over
  zero-shot cost, before and after.
* ``multitask``: ``serving.MultiTaskModel`` scoring SST-2 and RTE rows on SmolLM2-135M with one adapter per task
  (prompt tuning; LoRA). The adapters are untrained, saved right after promptlab's ``prepare``, since costs do not
  depend on their values. Batches are mixed-task (shuffled) or one task each. Per-task prefix caches are ``off``
  (as before: a multi-task model always ran whole sequences) or ``on``.

Every pass is a new evaluation pass (``new_pass``: the prefix is computed again) timing ``readout.predict`` over
the batches, after one untimed batch of every configuration. Each pass records wall and CPU seconds, the load
average and peak RSS (``common.Phase``). Precision is ``auto`` (bf16 autocast where the CPU has it, as a
promptlab run) unless ``--precision 32``. Prints every pass, then the ratios and whether before and after
predict alike; writes JSON. The colours images come from DATA_ROOT/colours if it is there; otherwise they are
made in a temporary folder, as ``python -m promptlab.tasks.shapes`` makes them (64 + 32 rows).

    python scripts/bench/cache_reuse.py --data-root ../shared/data          # ~15 min on 2 idle cores (bf16)
    python scripts/bench/cache_reuse.py --data-root ../shared/data --quick  # tiny random models, ~30 s

``--precision 32`` takes ~25 min. ``--quick`` (one thread unless ``--threads``) only proves that the script runs:
on tiny random models the cache's copies cost about what they save, so its ratios say nothing about real sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from common import Phase, parser, plan, setup, write
from multimodal import smolvlm_shaped

import promptlab.run.execute as T
from promptlab.data import collate, eval_items
from promptlab.models.precision import bf16_linear_weights, resolve
from promptlab.models.serving import MultiTaskModel
from promptlab.prompts import Encoder
from promptlab.readout import ChoiceReadout
from promptlab.readout.model import PrefixCache
from promptlab.tasks.shapes import make


class ImagelessPrefixCache(PrefixCache):
    """``PrefixCache`` with its image handling switched off, as it was before: a batch with pixel inputs runs
    whole (text-only batches still reuse their prefix)."""

    def _split(self, model: torch.nn.Module, sequences: Sequence[Sequence[int]], limit: int,
               images: dict | None) -> tuple[int, int]:
        return (0, 0) if images else super()._split(model, sequences, limit, images)


@dataclass
class Config:
    """One way of scoring, timed once a round: a model, a readout set up one way, the batches it scores."""

    model: torch.nn.Module
    readout: ChoiceReadout
    batches: list[dict]
    records: list[dict] = field(default_factory=list)  # one per timed pass
    predictions: list[dict] = field(default_factory=list)  # the last pass's

    @property
    def rows(self) -> int:
        return sum(len(b["idx"]) for b in self.batches)

    def prefix_tokens(self) -> int | dict[int, int]:
        """The cached prefix's length; a multi-task model's: per task id."""
        prefix = self.readout.prefix
        return {t: len(c.prefix) for t, c in prefix.tasks.items()} if prefix.tasks else len(prefix.prefix)

    def run(self, name: str) -> None:
        """One evaluation pass over the batches, timed."""
        self.readout.new_pass()
        with Phase(name) as ph:
            start, cpu = time.perf_counter(), time.process_time()
            self.predictions = [r for b in self.batches for r in self.readout.predict(self.model, b)]
            seconds = time.perf_counter() - start
            ph.record.update(seconds=round(seconds, 3), cpu_seconds=round(time.process_time() - cpu, 3),
                             examples_per_second=round(self.rows / seconds, 2), prefix_tokens=self.prefix_tokens())
        self.records.append(ph.record)


def interleave(configs: dict[str, Config], rounds: int) -> None:
    """One untimed batch of every configuration, then ``rounds`` rounds of one pass each; every other round runs
    them in reverse order, so a load that drifts weighs on all alike."""
    for c in configs.values():
        c.readout.predict(c.model, c.batches[0])
    for r in range(rounds):
        for name in list(configs)[:: 1 if r % 2 == 0 else -1]:
            configs[name].run(f"round {r + 1}/{rounds}: {name}")


def summary(c: Config) -> dict:
    """Medians over the rounds, the load range and largest peak RSS, and every pass's record."""
    seconds = statistics.median(r["seconds"] for r in c.records)
    return {"rows": c.rows, "batches": len(c.batches), "seconds": round(seconds, 3),
            "cpu_seconds": round(statistics.median(r["cpu_seconds"] for r in c.records), 3),
            "examples_per_second": round(c.rows / seconds, 2), "prefix_tokens": c.records[-1]["prefix_tokens"],
            "load": [min(r["load_start"] for r in c.records), max(r["load_end"] for r in c.records)],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in c.records), "passes": c.records}


def agreement(a: Config, b: Config) -> dict:
    """How far two configurations' last predictions of the same rows differ."""
    pairs = list(zip(a.predictions, b.predictions, strict=True))
    diffs = [abs(x - y) for p, q in pairs for x, y in zip(p["log_probs"], q["log_probs"], strict=True)
             if math.isfinite(x) and math.isfinite(y)]
    same = sum(p["pred"] == q["pred"] for p, q in pairs) / len(pairs)
    return {"max_abs_logprob_diff": max(diffs), "same_predictions": round(same, 3)}


def ratio(s: dict[str, dict], a: str, b: str, key: str = "seconds") -> float:
    return round(s[a][key] / s[b][key], 2)


@contextlib.contextmanager
def scoring(models: Sequence[torch.nn.Module], bf16: bool) -> Iterator[None]:
    """Inference as a promptlab evaluation runs it: under bf16-mixed, linear weights cast once (outside inference
    mode, as ``PromptModule.predicting``) and bf16 autocast; else fp32."""
    with contextlib.ExitStack() as stack:
        for m in models if bf16 else ():
            stack.enter_context(bf16_linear_weights(m))
        stack.enter_context(torch.inference_mode())
        stack.enter_context(torch.autocast("cpu", torch.bfloat16, enabled=bf16))
        yield


def batches_of(items: list[dict], size: int) -> list[dict]:
    return [collate(items[b: b + size]) for b in range(0, len(items), size)]


@contextlib.contextmanager
def colours_root(data_root: str) -> Iterator[tuple[str, str]]:
    """(a data root holding colours/, where its rows came from): the given root's, else made in a temporary one."""
    if Path(data_root, "colours", "train.jsonl").is_file():
        yield data_root, str(Path(data_root, "colours"))
        return
    with tempfile.TemporaryDirectory() as tmp:
        make(Path(tmp, "colours"))
        yield tmp, "made by promptlab.tasks.shapes.make (64 train, 32 validation rows)"


def images(args: argparse.Namespace, bf16: bool) -> dict:
    """Zero-shot and few-shot colours scoring, the cache's image handling off (before) and on (after)."""
    configs: dict[str, Config] = {}
    with colours_root(args.data_root) as (root, source):
        # the SmolVLM-shaped backbone is planned as SmolVLM-256M (same architecture and template; not loaded)
        vlm = argparse.Namespace(**{**vars(args), "data_root": root,
                                    "model": "smolvlm_256m" if args.vlm == "smolvlm_shaped" else args.vlm})
        backbone = None
        for method in ("zero_shot", "few_shot"):
            demos = (f"method.num_demos={args.demos}",) if method == "few_shot" else ()
            cfg, p = plan(vlm, "data=colours", f"method={method}", *demos, f"data.eval_limit={args.image_rows}")
            if backbone is None:
                backbone = smolvlm_shaped(cfg.paths.cache_dir) if args.vlm == "smolvlm_shaped" else \
                    T.load_backbone(cfg.model, cfg.paths.cache_dir)
            model = p.method.prepare(backbone, p.spec).eval()
            module, encoder = T.build_module(p, backbone, model)
            batches = batches_of(eval_items(encoder, p.task.eval), args.image_batch_size)
            before = p.method.readout(backbone.tokenizer, p.spec, p.settings.seed)
            before.prefix = ImagelessPrefixCache(args.min_tokens)
            module.readout.prefix.min_tokens = args.min_tokens
            configs[f"{method} before"] = Config(model, before, batches)
            configs[f"{method} after"] = Config(model, module.readout, batches)
    prompt_tokens = {m: len(configs[f"{m} after"].batches[0]["prompt_ids"][0]) for m in ("zero_shot", "few_shot")}
    with scoring(list({id(c.model): c.model for c in configs.values()}.values()), bf16):
        interleave(configs, args.rounds)
    s = {name: summary(c) for name, c in configs.items()}
    out = {"backbone": args.vlm, "data": source, "rows": args.image_rows, "batch_size": args.image_batch_size,
           "num_demos": args.demos, "prompt_tokens": prompt_tokens,
           "fewshot_over_zeroshot": {w: ratio(s, f"few_shot {w}", f"zero_shot {w}") for w in ("before", "after")},
           "fewshot_over_zeroshot_cpu": {w: ratio(s, f"few_shot {w}", f"zero_shot {w}", "cpu_seconds")
                                         for w in ("before", "after")},
           "fewshot_speedup": ratio(s, "few_shot before", "few_shot after"),
           "agreement": {m: agreement(configs[f"{m} before"], configs[f"{m} after"]) for m in ("zero_shot", "few_shot")},
           "configs": s}
    print(f"images ({args.vlm}, {args.image_rows} rows, batches of {args.image_batch_size}):")
    for w in ("before", "after"):
        print(f"    {w}: zero-shot {s[f'zero_shot {w}']['seconds']:.2f} s, few-shot {s[f'few_shot {w}']['seconds']:.2f} s"
              f" = {out['fewshot_over_zeroshot'][w]}x zero-shot (CPU {out['fewshot_over_zeroshot_cpu'][w]}x), "
              f"few-shot prefix {s[f'few_shot {w}']['prefix_tokens']} tokens")
    print(f"    few-shot speed-up {out['fewshot_speedup']}x; before vs after: "
          + ", ".join(f"{m} max |diff| {a['max_abs_logprob_diff']:.1e}, same predictions {a['same_predictions']:.0%}"
                      for m, a in out["agreement"].items()), flush=True)
    return out


def multitask(args: argparse.Namespace, bf16: bool) -> dict:
    """MultiTaskModel scoring, per method and kind of batch, its per-task prefix caches off and on."""
    configs: dict[str, Config] = {}
    models = []
    for method in args.methods:
        backbone, checkpoints, per_task = None, {}, []
        with tempfile.TemporaryDirectory() as tmp:
            for i, task in enumerate(args.tasks):
                cfg, p = plan(args, f"data={task}", f"method={method}", f"data.eval_limit={args.per_task}")
                backbone = backbone or T.load_backbone(cfg.model, cfg.paths.cache_dir)
                fresh = T.load_backbone(cfg.model, cfg.paths.cache_dir)  # prepare wraps its backbone
                checkpoints[task] = Path(tmp, task)
                p.method.save(p.method.prepare(fresh, p.spec), checkpoints[task])
                per_task.append(eval_items(Encoder(backbone.tokenizer, p.spec, task_id=i), p.task.eval))
            served = MultiTaskModel(backbone.model, checkpoints)  # the adapters are loaded: tmp may go
        models.append(served)
        mixed = [x for items in per_task for x in items]
        random.Random(0).shuffle(mixed)
        kinds = {"mixed": batches_of(mixed, args.batch_size),
                 "one task a batch": [b for items in per_task for b in batches_of(items, args.batch_size)]}
        for kind, batches in kinds.items():
            for cache in ("off", "on"):
                readout = ChoiceReadout(backbone.tokenizer.pad_token_id)
                readout.prefix.enabled, readout.prefix.min_tokens = cache == "on", args.min_tokens
                configs[f"{method} {kind} cache {cache}"] = Config(served, readout, batches)
    with scoring(models, bf16):
        interleave(configs, args.rounds)
    s = {name: summary(c) for name, c in configs.items()}
    cases = [name.removesuffix(" cache off") for name in configs if name.endswith(" cache off")]
    out = {"model": args.model, "tasks": args.tasks, "rows_per_task": args.per_task, "batch_size": args.batch_size,
           "speedup": {c: ratio(s, f"{c} cache off", f"{c} cache on") for c in cases},
           "agreement": {c: agreement(configs[f"{c} cache off"], configs[f"{c} cache on"]) for c in cases},
           "configs": s}
    print(f"multitask ({args.model}, tasks {', '.join(args.tasks)}, {args.per_task} rows each, batches of "
          f"{args.batch_size}):")
    for c in cases:
        a = out["agreement"][c]
        print(f"    {c}: cache off {s[f'{c} cache off']['seconds']:.2f} s, on {s[f'{c} cache on']['seconds']:.2f} s "
              f"(speed-up {out['speedup'][c]}x), prefixes {s[f'{c} cache on']['prefix_tokens']} tokens; "
              f"max |diff| {a['max_abs_logprob_diff']:.1e}, same predictions {a['same_predictions']:.0%}", flush=True)
    return out


def main() -> dict:
    p = parser(__doc__.split("\n\n")[0], "bench_cache_reuse.json")
    p.set_defaults(model=None)
    p.add_argument("--vlm", default=None, help="smolvlm_shaped (default) or a conf/model/ vision-language model "
                                               "(--quick: tiny_random_vlm)")
    p.add_argument("--precision", default="auto", choices=["auto", "32", "bf16"])
    p.add_argument("--rounds", type=int, default=None, help="timed rounds after the warm-up (default 3; --quick 2)")
    p.add_argument("--image-rows", type=int, default=None, help="colours rows (default 16; --quick 8)")
    p.add_argument("--image-batch-size", type=int, default=8)
    p.add_argument("--demos", type=int, default=4, help="few-shot demonstrations, each with its image")
    p.add_argument("--tasks", nargs="+", default=["sst2", "rte"], help="multitask: one adapter each")
    p.add_argument("--methods", nargs="+", default=["prompt_tuning", "lora"], choices=["prompt_tuning", "lora"])
    p.add_argument("--per-task", type=int, default=None, help="multitask rows per task (default 64; --quick 16)")
    p.add_argument("--batch-size", type=int, default=16, help="multitask batch size")
    p.add_argument("--min-tokens", type=int, default=PrefixCache().min_tokens, help="shortest prefix cached")
    p.add_argument("--skip", choices=["images", "multitask"], help="measure only the other workload")
    args = p.parse_args()
    quick = args.quick
    args.model = args.model or ("tiny_random" if quick else "smollm2_135m")
    args.vlm = args.vlm or ("tiny_random_vlm" if quick else "smolvlm_shaped")
    args.rounds = args.rounds or (2 if quick else 3)
    args.image_rows = args.image_rows or (8 if quick else 16)
    args.per_task = args.per_task or (16 if quick else 64)
    # one thread for tiny models (as the tests): two OpenMP threads spin-wait on a busy 2-core machine
    args.threads = args.threads or (1 if quick else None)
    setup(args)
    missing = [t for t in args.tasks if not Path(args.data_root, t).is_dir()]
    if missing:
        raise SystemExit(f"--data-root {args.data_root!r} has no {', '.join(missing)}/")
    precision = resolve(args.precision)
    bf16 = precision == "bf16-mixed"
    result = {"precision": precision, "rounds": args.rounds, "min_tokens": args.min_tokens,
              "threads": torch.get_num_threads(), "quick": quick}
    if args.skip != "images":
        result["images"] = images(args, bf16)
    if args.skip != "multitask":
        result["multitask"] = multitask(args, bf16)
    write(result, args.out)
    return result


if __name__ == "__main__":
    main()
