"""The field's decoders on this CPU, before promptlab's own (``readout.decoding``): transformers' ``generate`` with
its default dynamic cache, with a static cache and ``torch.compile`` (transformers' ``CompileConfig``, forced on
for CPU), and its continuous batching (``generate_batch``, paged attention). GSM8K zero-shot CoT, greedy, up to
256 new tokens, 16 prompts a batch, fp32 and bf16 autocast (``generate`` only: ``UNDER_AUTOCAST`` says why); the
compiled decoder twice (the first pass compiles), and how many graphs ``torch.compile`` built for two batch sizes
(16, then the 8-prompt remainder).

    python scripts/bench/field_decoders.py --data-root ../shared/data     # ~10 min on 2 idle cores
"""

from __future__ import annotations

import contextlib
import time

import torch
from common import Phase, parser, plan, setup, write
from transformers import CompileConfig, GenerationConfig

import promptlab.run.execute as T
from promptlab.data import eval_items
from promptlab.models.precision import bf16_linear_weights, resolve
from promptlab.readout.model import pad

DECODERS = ("generate", "static_compile", "generate_batch")  # generate first: the others are compared with its tokens
# Why two decoders are measured in fp32 only (checked with transformers 5.23)
UNDER_AUTOCAST = {
    "static_compile": "not run: the static cache is allocated in the model's dtype (fp32) and its index_copy_ "
                      "refuses autocast's bf16 keys",
    "generate_batch": "not run: it runs the model in its own dtype, without autocast",
}


def new_tokens(row: list[int], eos: int) -> list[int]:
    return row[:row.index(eos) + 1] if eos in row else row


def with_generate(model, tok, prompts, config, batch: int) -> list[list[int]]:
    out = []
    for i in range(0, len(prompts), batch):
        ids, mask = pad(prompts[i:i + batch], tok.pad_token_id, torch.device("cpu"), left=True)
        rows = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)[:, ids.shape[1]:]
        out += [new_tokens(r, tok.eos_token_id) for r in rows.tolist()]
    return out


def with_generate_batch(model, tok, prompts, config, batch: int) -> list[list[int]]:
    results = model.generate_batch(prompts, generation_config=config)
    if len(results) != len(prompts) or not all(r.generated_tokens for r in results.values()):
        raise RuntimeError("generate_batch failed (its log above says why)")
    return [new_tokens(list(r.generated_tokens), tok.eos_token_id) for r in results.values()]


def main() -> dict:
    p = parser(__doc__.split("\n\n")[0], "bench_field_decoders.json")
    p.add_argument("--examples", type=int, default=24)
    p.add_argument("--decoders", default=",".join(DECODERS), help="comma-separated, of " + ",".join(DECODERS))
    args = p.parse_args()
    if unknown := set(args.decoders.split(",")) - set(DECODERS):
        p.error(f"--decoders: unknown {', '.join(sorted(unknown))}; choose from {','.join(DECODERS)}")
    setup(args)
    cfg, pl = plan(args, "data=gsm8k", "method=zero_shot_cot", f"data.eval_limit={args.examples}")
    backbone = T.load_backbone(cfg.model, cfg.paths.cache_dir)
    model = pl.method.prepare(backbone, pl.spec).eval()
    module, encoder = T.build_module(pl, backbone, model)
    tok = backbone.tokenizer
    prompts = [list(x["prompt_ids"]) for x in eval_items(encoder, pl.task.eval)]
    base = {"max_new_tokens": 256, "do_sample": False, "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id}
    compile_config = CompileConfig(mode="default", fullgraph=False)
    compile_config._compile_all_devices = True  # transformers compiles on CUDA/XPU/TPU only unless told
    decoders = {"generate": (with_generate, GenerationConfig(**base)),
                "static_compile": (with_generate, GenerationConfig(**base, cache_implementation="static",
                                                                   compile_config=compile_config)),
                "generate_batch": (with_generate_batch, GenerationConfig(**base))}
    out, reference = {"examples": len(prompts)}, {}
    for precision in ("32-true", resolve("auto")):
        bf16 = precision.startswith("bf16")
        for name, (run, config) in decoders.items():
            if name not in args.decoders.split(","):
                continue
            if bf16 and name in UNDER_AUTOCAST:
                out[f"{name}_{precision}"] = UNDER_AUTOCAST[name]
                continue
            torch._dynamo.reset()
            from torch._dynamo.utils import counters
            counters.clear()
            for attempt in (1, 2) if name == "static_compile" else (1,):
                # no_grad, not inference_mode: generate_batch decodes in a worker thread, which may not write the
                # inference tensors its buffers would be made as here
                with (Phase(f"{name} {precision} pass {attempt}") as ph, torch.no_grad(),
                      torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16),
                      bf16_linear_weights(model) if bf16 else contextlib.nullcontext()):
                    start = time.perf_counter()
                    rows = run(model, tok, prompts, config, 16)
                    seconds = time.perf_counter() - start
                tokens = sum(map(len, rows))
                ref = reference.setdefault(precision, rows)
                ph.record.update(tokens=tokens, seconds=round(seconds, 1), tokens_per_second=round(tokens / seconds, 1),
                                 identical_to_generate=f"{sum(a == b for a, b in zip(rows, ref, strict=True))}/{len(rows)}",
                                 graphs=int(counters["stats"]["unique_graphs"]))
                out[f"{name}_{precision}_pass{attempt}"] = ph.record
                print(ph.record, flush=True)
    write(out, args.out)
    return out


if __name__ == "__main__":
    main()
