"""Generation speed: zero-shot chain-of-thought on GSM8K (up to 256 new tokens, stop strings "\\n\\n\\n" and
"Question:"), greedy, in batches of 16 prompts longest first, three ways on the same prompts:

* ``plain``: transformers' ``model.generate`` (KV cache; its ``stop_strings``), fp32, as a user would call it;
* ``promptlab_off``: promptlab's readout through ``model.generate`` (finished rows stay in the batch), fp32;
* ``promptlab``: as shipped: its own greedy loop, where a row that wrote EOS or a stop string leaves the batch
  and the cache at once, under ``trainer.precision=auto`` (bf16-mixed where the CPU has avx512_bf16, with the
  linear weights cast to bf16 once, as ``PromptModule.predicting`` does).

Tokens/s counts each row's tokens up to and including the one that ended it. Also: how many generations are
identical to fp32 ``promptlab_off`` (bf16 may change a greedy choice, and every token after it).

    python scripts/bench/generation.py --data-root ../shared/data           # ~6 min on 2 idle cores
    python scripts/bench/generation.py --data-root ../shared/data --model tiny_random --quick
"""

from __future__ import annotations

import contextlib
import time
from unittest import mock

import torch
from common import Phase, parser, plan, setup, write

import promptlab.readout.generate as G
import promptlab.run.execute as T
from promptlab.data import collate, eval_items
from promptlab.models.precision import bf16_linear_weights, resolve

VARIANTS = ("plain", "promptlab_off", "promptlab")


def plain_generate(model, tokenizer, readout, prompts) -> list[int]:
    """transformers' generate with its own stop strings; the tokens each row wrote (up to EOS or the stop)."""
    from promptlab.readout.model import pad

    ids, mask = pad(prompts, tokenizer.pad_token_id, torch.device("cpu"), left=True)
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=readout.config,
                         stop_strings=readout.until or None, tokenizer=tokenizer)
    return [readout._decode(row.tolist()).num_tokens for row in out[:, ids.shape[1]:]]


def main() -> dict:
    p = parser(__doc__.split("\n\n")[0], "bench_generation.json")
    p.add_argument("--examples", type=int, default=None, help="GSM8K test rows (default 32; --quick 4)")
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()
    args.examples = args.examples or (4 if args.quick else 32)
    setup(args)
    cfg, pl = plan(args, "data=gsm8k", "method=zero_shot_cot", f"data.eval_limit={args.examples}")
    backbone = T.load_backbone(cfg.model, cfg.paths.cache_dir)
    model = pl.method.prepare(backbone, pl.spec)
    module, encoder = T.build_module(pl, backbone, model)
    readout = module.readout
    items = eval_items(encoder, pl.task.eval)
    batches = [collate(items[i:i + args.batch_size]) for i in range(0, len(items), args.batch_size)]
    bf16 = resolve("auto").startswith("bf16")
    results, texts = {}, {}
    for variant in VARIANTS:
        with Phase(variant) as ph, torch.inference_mode():
            start, tokens, texts[variant] = time.perf_counter(), 0, []
            for b in batches:
                if variant == "plain":
                    tokens += sum(plain_generate(model, backbone.tokenizer, readout, b["prompt_ids"]))
                    continue
                fast = bf16 and variant == "promptlab"
                with (mock.patch.object(G, "plain_forward", return_value=variant == "promptlab"),
                      torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast),
                      bf16_linear_weights(model) if fast else contextlib.nullcontext()):  # as module.predicting
                    gens = readout.generate(model, b["prompt_ids"])
                tokens += sum(g.num_tokens for g in gens)
                texts[variant] += [g.text for g in gens]
            seconds = time.perf_counter() - start
            ph.record.update(tokens=tokens, seconds=round(seconds, 2), tokens_per_second=round(tokens / seconds, 2),
                             examples_per_second=len(items) / seconds)
        results[variant] = ph.record
    same = sum(a == b for a, b in zip(texts["promptlab"], texts["promptlab_off"], strict=True))
    summary = {"vs_plain": round(results["promptlab"]["tokens_per_second"] / results["plain"]["tokens_per_second"], 2),
               "vs_off": round(results["promptlab"]["tokens_per_second"] / results["promptlab_off"]["tokens_per_second"], 2),
               "identical_generations": f"{same}/{len(items)}", "precision": "bf16-mixed" if bf16 else "32-true"}
    print(summary)
    out = {"summary": summary, "results": results, "examples": len(items), "batch_size": args.batch_size,
           "mean_prompt_tokens": round(sum(len(x["prompt_ids"]) for x in items) / len(items), 1)}
    write(out, args.out)
    return out


if __name__ == "__main__":
    main()
