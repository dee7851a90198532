"""Choice scoring with and without key/value reuse (``readout.model.PrefixCache``), in one run, on the same batches:

* ``sst2_4shot``: SST-2 with 4 demonstrations: the system turn and demonstrations every prompt shares run once
  per batch (single-token answers);
* ``trec_0shot``: TREC zero-shot, six answer words of several tokens: each prompt runs once, its six answers
  continue its cache (without reuse: six whole sequences per example);
* ``copa_0shot``: COPA, two answer sentences of each example's own: the same, per example.

Both ways run in fp32 under ``torch.inference_mode`` (only the reuse differs), after one untimed warm-up
batch. Prints examples/s, the speed-up, the largest difference of answer log-probabilities and whether the
predictions agree; writes JSON.

    python scripts/bench/prefix_reuse.py --data-root ../shared/data            # ~6 min on 2 idle cores
    python scripts/bench/prefix_reuse.py --data-root ../shared/data --model tiny_random --quick
"""

from __future__ import annotations

import time

import torch
from common import parser, plan, release_memory, setup, write

import promptlab.run.execute as T
from promptlab.data import collate, eval_items

CASES = {
    "sst2_4shot": ("data=sst2", "method=few_shot", "method.num_demos=4", "data.k_shot=32"),
    "trec_0shot": ("data=trec", "method=zero_shot"),
    "copa_0shot": ("data=copa", "method=zero_shot"),
}


def run_case(args, overrides: tuple[str, ...]) -> dict:
    cfg, p = plan(args, *overrides, f"data.eval_limit={args.examples}")
    backbone = T.load_backbone(cfg.model, cfg.paths.cache_dir)
    model = p.method.prepare(backbone, p.spec)
    module, encoder = T.build_module(p, backbone, model)
    items = eval_items(encoder, p.task.eval)
    batches = [collate(items[i:i + args.batch_size]) for i in range(0, len(items), args.batch_size)]
    readout, result, scores = module.readout, {}, {}
    for name, enabled in (("whole_sequences", False), ("reused", True)):
        readout.prefix.enabled, readout.prefix.prefix = enabled, []
        release_memory()
        with torch.inference_mode():
            readout.scores(model, batches[0]["prompt_ids"], batches[0]["choice_ids"])  # warm-up
            start = time.perf_counter()
            scores[name] = torch.cat([readout.scores(model, b["prompt_ids"], b["choice_ids"]) for b in batches])
            seconds = time.perf_counter() - start
        result[name] = {"seconds": round(seconds, 2), "examples_per_second": round(len(items) / seconds, 2)}
        print(f"    {name}: {len(items) / seconds:.2f} ex/s", flush=True)
    a, b = scores.values()
    finite = a.isfinite()
    result.update(speedup=round(result["reused"]["examples_per_second"] / result["whole_sequences"]["examples_per_second"], 2),
                  max_abs_logprob_diff=float((a[finite] - b[finite]).abs().max()),
                  same_predictions=bool((a.argmax(1) == b.argmax(1)).all()), examples=len(items),
                  answers_per_example=round(sum(len(x["choice_ids"]) for x in items) / len(items), 2),
                  mean_answer_tokens=round(sum(len(c) for x in items for c in x["choice_ids"])
                                           / sum(len(x["choice_ids"]) for x in items), 2),
                  mean_prompt_tokens=round(sum(len(x["prompt_ids"]) for x in items) / len(items), 1),
                  shared_prefix_tokens=len(readout.prefix.prefix))
    return result


def main() -> dict:
    p = parser(__doc__.split("\n\n")[0], "bench_prefix_reuse.json")
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    p.add_argument("--examples", type=int, default=None, help="rows per task (default 128; --quick 16)")
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()
    args.examples = args.examples or (16 if args.quick else 128)
    setup(args)
    results = {}
    for name in args.cases:
        print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)
        results[name] = run_case(args, CASES[name])
        print(f"    speed-up {results[name]['speedup']}x, max |diff| {results[name]['max_abs_logprob_diff']:.1e}, "
              f"same predictions: {results[name]['same_predictions']}", flush=True)
    out = {"results": results, "batch_size": args.batch_size, "threads": torch.get_num_threads()}
    write(out, args.out)
    return out


if __name__ == "__main__":
    main()
