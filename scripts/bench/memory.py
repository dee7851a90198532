"""Peak memory against input length: one training step (forward, backward, AdamW) of prompt tuning and full
fine-tuning with and without ``method.gradient_checkpointing``, and one evaluation batch, at several prompt
lengths; each in a fresh process so every peak (VmHWM) is its own. Prompts are random token ids (memory does
not depend on the text); the answers are SST-2's two words; precision as shipped (``trainer.precision=auto``).

    python scripts/bench/memory.py --data-root ../shared/data            # ~6 min on 2 idle cores
    python scripts/bench/memory.py --data-root ../shared/data --model tiny_random --quick
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch
from common import parser, plan, setup, write

import promptlab.run.execute as T
from promptlab.models.precision import resolve
from promptlab.prompts import encode_answer
from promptlab.tracking import PeakMemory

CASES = [("prompt_tuning", False), ("prompt_tuning", True), ("full_finetune", False), ("full_finetune", True),
         ("eval", False)]


def measure(args) -> dict:
    """One case in this process: the peak resident memory of one step at ``--length`` tokens."""
    method, ckpt = CASES[args.case]
    cfg, p = plan(args, "data=sst2", f"method={'zero_shot' if method == 'eval' else method}")
    backbone = T.load_backbone(cfg.model, cfg.paths.cache_dir)
    model = p.method.prepare(backbone, p.spec)
    if method != "eval":
        p.method.cfg.gradient_checkpointing = ckpt
        p.method.checkpoint_activations(model)
    module, encoder = T.build_module(p, backbone, model)
    g = torch.Generator().manual_seed(0)
    batch = args.batch_size * (2 if method == "eval" else 1)
    prompts = torch.randint(0, backbone.model.config.vocab_size, (batch, args.length), generator=g).tolist()
    choice_ids = [[encode_answer(encoder.tokenizer, c) for c in p.spec.choices]] * batch
    step = {"prompt_ids": prompts, "choice_ids": choice_ids, "labels": torch.zeros(batch, dtype=torch.long)}
    bf16 = resolve("auto").startswith("bf16")
    memory = PeakMemory()
    before = memory.peak_rss_mb()
    memory.reset()
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        if method == "eval":
            with torch.inference_mode():
                module.readout.scores(model.eval(), prompts, choice_ids)
        else:
            optimizer = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-5)
            model.train()
            module.readout.loss(model, step).backward()
            optimizer.step()
    return {"method": method, "gradient_checkpointing": ckpt, "length": args.length, "batch": batch,
            "peak_rss_mb": round(memory.peak_rss_mb()), "model_loaded_rss_mb": round(before),
            "seconds": round(time.perf_counter() - start, 2)}


def main() -> dict:
    p = parser(__doc__.split("\n\n")[0], "bench_memory.json")
    p.add_argument("--lengths", nargs="+", type=int, default=None, help="prompt tokens (default 256 1024 2048)")
    p.add_argument("--batch-size", type=int, default=2, help="training batch (evaluation: twice this)")
    p.add_argument("--case", type=int, default=None, help=argparse.SUPPRESS)  # one case, in a child process
    p.add_argument("--length", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    setup(args)
    if args.case is not None:
        print(json.dumps(measure(args)))
        return {}
    lengths = args.lengths or ([32, 64] if args.quick else [256, 1024, 2048])
    rows = []
    for case in range(len(CASES)):
        for length in lengths:
            child = [sys.executable, __file__, "--case", str(case), "--length", str(length), "--model", args.model,
                     "--data-root", args.data_root, "--batch-size", str(args.batch_size)]
            if args.threads:
                child += ["--threads", str(args.threads)]
            out = subprocess.run(child, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            rows.append(json.loads(out))
            print(rows[-1], flush=True)
    result = {"rows": rows, "precision": resolve("auto")}
    write(result, args.out)
    return result


if __name__ == "__main__":
    main()
