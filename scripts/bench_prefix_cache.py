"""Few-shot scoring with and without the shared-prefix KV cache (``readout.model.PrefixCache``), in one run.

    python scripts/bench_prefix_cache.py --data-root ../shared/data            # bundled SmolLM2-135M
    python scripts/bench_prefix_cache.py --model tiny_random --examples 32    # smoke test

Scores the same few-shot SST-2 batches (the task's template 0, ``--demos`` class-balanced demonstrations)
twice, after one untimed warm-up batch each: every whole sequence through the model, then the shared
prefix once per batch. Prints examples/s, the speed-up, the largest difference between the two sets of
answer log-probabilities, the load average; writes the same as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

import promptlab.train as T
from promptlab.data import collate, eval_items

REPO = Path(__file__).resolve().parents[1]


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2_135m")
    p.add_argument("--data-root", default=os.environ.get("PROMPTLAB_DATA"))
    p.add_argument("--examples", type=int, default=192)
    p.add_argument("--demos", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(REPO / "results" / "bench_prefix_cache.json"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = [f"model={args.model}", "data=sst2", "method=few_shot", f"method.num_demos={args.demos}",
                 "logger=none", "data.k_shot=32", f"data.eval_limit={args.examples}"]
    if args.data_root:
        overrides.append(f"paths.data_root={args.data_root}")
    with initialize_config_dir(config_dir=str(T.CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    plan = T.plan(cfg)
    backbone = T.load_backbone(cfg.model, cfg.paths.cache_dir)
    model = plan.method.prepare(backbone, plan.spec)
    module, encoder = T.build_module(plan, backbone, model)
    items = eval_items(encoder, plan.task.eval)
    batches = [collate(items[i:i + args.batch_size]) for i in range(0, len(items), args.batch_size)]
    readout, result = module.readout, {"load_start": os.getloadavg()[0]}
    scores = {}
    for name, min_tokens in (("whole sequences", 10**9), ("shared prefix cached", 32)):
        readout.prefix.min_tokens, readout.prefix.prefix = min_tokens, []
        with torch.no_grad():
            readout.scores(model, batches[0]["prompt_ids"], batches[0]["choice_ids"])  # warm-up
            start = time.perf_counter()
            scores[name] = torch.cat([readout.scores(model, b["prompt_ids"], b["choice_ids"]) for b in batches])
            seconds = time.perf_counter() - start
        result[name] = {"seconds": round(seconds, 2), "examples_per_second": round(len(items) / seconds, 2)}
    a, b = scores.values()
    result.update(
        speedup=round(result["shared prefix cached"]["examples_per_second"]
                      / result["whole sequences"]["examples_per_second"], 2),
        max_abs_logprob_diff=float((a - b).abs().max()), same_predictions=bool((a.argmax(1) == b.argmax(1)).all()),
        examples=len(items), demos=args.demos, batch_size=args.batch_size, model=args.model,
        mean_prompt_tokens=round(sum(len(x["prompt_ids"]) for x in items) / len(items), 1),
        shared_prefix_tokens=len(readout.prefix.prefix), threads=torch.get_num_threads(),
        load_end=os.getloadavg()[0])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
