"""Decoding speed on GSM8K, same prompts, same run, tokens counted up to and including the one that ended a row:

* greedy: zero-shot chain-of-thought (up to 256 new tokens, stop strings "\\n\\n\\n" and "Question:");
* sampled: self-consistency, 8 reasoning paths per question at temperature 0.7 after four worked solutions
  (up to 128 new tokens).

Variants (16 rows decoded at once in each):

* ``generate``: transformers' ``model.generate`` in fp32 (its ``stop_strings``; ``num_return_sequences=8``
  when sampling), batches of 16 rows, as a user would call it;
* ``off``: promptlab's readout with its decoding speed-ups off (through ``model.generate``), fp32;
* ``fp32``: promptlab's slot decoder (``readout.decoding``) in fp32: token for token what ``generate`` writes;
* ``bf16_batches``: the slot decoder under bf16 autocast, handed 16 prompts at a time (no slot is refilled);
* ``promptlab``: as shipped with ``trainer.precision=auto``: bf16 where the CPU has it, every prompt of the pass
  handed to the decoder, a finished row's slot refilled with the next prompt;
* ``width32``: as ``promptlab`` with 32 slots.

Also: how many generations are identical to ``generate``'s (fp32) and to ``fp32``'s (bf16).

    python scripts/bench/generation.py --data-root ../shared/data           # ~12 min on 2 idle cores
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
from promptlab.data import eval_items
from promptlab.models.precision import bf16_linear_weights, resolve
from promptlab.readout.model import pad

GREEDY = ("generate", "off", "fp32", "bf16_batches", "promptlab", "width32")
SAMPLED = ("generate", "fp32", "promptlab")


def readout_and_prompts(args, method: str, examples: int) -> tuple:
    cfg, pl = plan(args, "data=gsm8k", f"method={method}", f"data.eval_limit={examples}", "data.max_prompt_tokens=4096")
    backbone = T.load_backbone(cfg.model, cfg.paths.cache_dir)
    model = pl.method.prepare(backbone, pl.spec)
    module, encoder = T.build_module(pl, backbone, model)
    readout = module.readout if isinstance(module.readout, G.GenerateReadout) else module.readout.gen
    return model, backbone.tokenizer, readout, [list(x["prompt_ids"]) for x in eval_items(encoder, pl.task.eval)]


def with_generate(model, tokenizer, readout, prompts: list, rows: int) -> list[list[int]]:
    """transformers' generate with its own stop strings, ``rows`` sequences a call; each sequence's new tokens."""
    n = readout.sampling.samples
    config = readout.config
    if n > 1:
        config = type(config).from_dict({**config.to_dict(), "num_return_sequences": n})
    out_rows = []
    for i in range(0, len(prompts), max(1, rows // n)):
        ids, mask = pad(prompts[i:i + max(1, rows // n)], tokenizer.pad_token_id, torch.device("cpu"), left=True)
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                             stop_strings=readout.until or None, tokenizer=tokenizer)
        out_rows += [row.tolist() for row in out[:, ids.shape[1]:]]
    return out_rows


def run_variant(variant: str, model, tokenizer, readout, prompts: list, width: int) -> list[list[int]]:
    """Each sequence's new tokens under ``variant`` (not ``off``: see ``workload``)."""
    n = readout.sampling.samples
    if variant == "generate":
        return with_generate(model, tokenizer, readout, prompts, width)
    bf16 = resolve("auto").startswith("bf16") and variant != "fp32"
    readout.width = 2 * width if variant == "width32" else width
    per_call = max(1, width // n) if variant == "bf16_batches" else len(prompts)
    rows = []
    with (torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16),
          bf16_linear_weights(model) if bf16 else contextlib.nullcontext()):  # as module.predicting
        for i in range(0, len(prompts), per_call):
            rows += readout.decode(model, prompts[i:i + per_call], n)
    return rows


def workload(args, name: str, method: str, examples: int, variants: tuple[str, ...]) -> dict:
    model, tokenizer, readout, prompts = readout_and_prompts(args, method, examples)
    results, texts = {}, {}
    for variant in variants:
        readout.new_pass()
        with Phase(f"{name}: {variant}") as ph, torch.inference_mode():
            start = time.perf_counter()
            if variant == "off":  # the readout's generate path (as for prompt tuning), fp32
                per_call, decoded = max(1, args.width // readout.sampling.samples), []
                with mock.patch.object(G, "decodable", return_value=False):
                    for i in range(0, len(prompts), per_call):
                        decoded += readout.generate(model, prompts[i:i + per_call], repeats=readout.sampling.samples)
            else:
                decoded = [readout._decode(row) for row in run_variant(variant, model, tokenizer, readout, prompts,
                                                                       args.width)]
            seconds = time.perf_counter() - start
            tokens = sum(g.num_tokens for g in decoded)
            texts[variant] = [g.text for g in decoded]
            ph.record.update(tokens=tokens, seconds=round(seconds, 2), tokens_per_second=round(tokens / seconds, 2),
                             sequences=len(decoded))
        results[variant] = ph.record
    rate = {v: results[v]["tokens_per_second"] for v in variants}
    summary = {f"{v}_vs_generate": round(rate[v] / rate["generate"], 2) for v in variants if v != "generate"}
    if "off" in rate:
        summary["promptlab_vs_off"] = round(rate["promptlab"] / rate["off"], 2)
    summary["tokens_per_second"] = rate
    if readout.sampling.greedy:  # sampled paths differ by construction (another random stream)
        same = sum(a == b for a, b in zip(texts["fp32"], texts["generate"], strict=True))
        summary["fp32_identical_to_generate"] = f"{same}/{len(prompts)}"
    same = sum(a == b for a, b in zip(texts["promptlab"], texts["fp32"], strict=True))
    summary["bf16_identical_to_fp32"] = f"{same}/{len(texts['fp32'])}"
    print(name, summary, flush=True)
    return {"summary": summary, "results": results, "examples": len(prompts), "samples": readout.sampling.samples,
            "mean_prompt_tokens": round(sum(map(len, prompts)) / len(prompts), 1)}


def main() -> dict:
    p = parser(__doc__.split("\n\n")[0], "bench_generation.json")
    p.add_argument("--examples", type=int, default=None, help="GSM8K test rows, greedy (default 48; --quick 6)")
    p.add_argument("--sampled-examples", type=int, default=None, help="rows for 8 paths each (default 8; --quick 2)")
    p.add_argument("--width", type=int, default=16, help="rows decoded at once")
    args = p.parse_args()
    args.examples = args.examples or (6 if args.quick else 48)
    args.sampled_examples = args.sampled_examples or (2 if args.quick else 8)
    setup(args)
    out = {"width": args.width, "precision": resolve("auto"),
           "greedy": workload(args, "greedy", "zero_shot_cot", args.examples, GREEDY),
           "sampled": workload(args, "sampled", "self_consistency", args.sampled_examples, SAMPLED)}
    write(out, args.out)
    return out


if __name__ == "__main__":
    main()
