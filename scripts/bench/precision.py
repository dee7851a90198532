"""bf16 autocast against fp32, nothing else changed: the same model, batches and code (promptlab's readout loss
and fused AdamW for training, its scoring for evaluation), on SST-2; only ``torch.autocast`` differs. Each
precision runs twice, alternating (fp32, bf16, fp32, bf16), and the faster run of each counts, so a passing
disturbance does not decide the ratio. Evaluation also reports accuracy and how many predictions agree.

    python scripts/bench/precision.py --data-root ../shared/data            # ~5 min on 2 idle cores
    python scripts/bench/precision.py --data-root ../shared/data --model tiny_random --quick
"""

from __future__ import annotations

import contextlib
import time

import torch
from common import parser, plan, release_memory, setup, write

import promptlab.run.execute as T
from promptlab.data import PromptDataModule, collate, eval_items
from promptlab.models.precision import bf16_linear_weights, cpu_has_bf16


def build(args, *overrides: str):
    cfg, p = plan(args, "data=sst2", *overrides)
    torch.manual_seed(0)
    backbone = T.load_backbone(cfg.model, cfg.paths.cache_dir)
    model = p.method.prepare(backbone, p.spec)
    module, encoder = T.build_module(p, backbone, model)
    return p, module, encoder


def timed(fn, bf16: bool) -> float:
    release_memory()
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        fn()
    return time.perf_counter() - start


def train_case(args, method: str) -> dict:
    p, module, encoder = build(args, f"method={method}", "data.k_shot=null", f"data.train_size={8 * args.steps}")
    dm = PromptDataModule(encoder, p.train_rows, [], 8, 16, 0)
    dm.setup("fit")
    batches = list(dm.train_dataloader())[: args.steps]
    model, optimizer = module.model.train(), module.configure_optimizers()["optimizer"]

    def steps(bf16: bool):
        def run():  # bf16: the frozen weights cast once, as PromptModule.fitting does for trainer.fit
            with bf16_linear_weights(model, frozen_only=True) if bf16 else contextlib.nullcontext():
                for batch in batches:
                    optimizer.zero_grad(set_to_none=True)
                    module.readout.loss(model, batch).backward()
                    optimizer.step()
        return run

    timed(steps(True), True)  # warm-up: both kernels' first calls, the optimiser's state
    seconds = {}
    for _ in range(2):
        for name in ("fp32", "bf16"):
            seconds[name] = min(seconds.get(name, float("inf")), timed(steps(name == "bf16"), name == "bf16"))
    examples = sum(len(b["prompt_ids"]) for b in batches)
    return {k: {"examples_per_second": round(examples / v, 2)} for k, v in seconds.items()} | {
        "speedup": round(seconds["fp32"] / seconds["bf16"], 2), "steps": len(batches), "examples": examples}


def eval_case(args) -> dict:
    p, module, encoder = build(args, "method=zero_shot", f"data.eval_limit={args.examples}")
    items = eval_items(encoder, p.task.eval)
    batches = [collate(items[i:i + 16]) for i in range(0, len(items), 16)]
    model, scores = module.model.eval(), {}

    def score(name: str):
        def run():  # bf16: the linear weights cast once, as PromptModule.predicting does for trainer.predict
            with torch.inference_mode(), bf16_linear_weights(model) if name == "bf16" else contextlib.nullcontext():
                scores[name] = torch.cat([module.readout.scores(model, b["prompt_ids"], b["choice_ids"]) for b in batches])
        return run

    timed(score("bf16"), True)
    seconds = {}
    for _ in range(2):
        for name in ("fp32", "bf16"):
            seconds[name] = min(seconds.get(name, float("inf")), timed(score(name), name == "bf16"))
    labels = torch.cat([b["labels"] for b in batches])
    acc = {k: round(100 * float((v.argmax(1) == labels).float().mean()), 2) for k, v in scores.items()}
    return {k: {"examples_per_second": round(len(items) / v, 2), "accuracy": acc[k]} for k, v in seconds.items()} | {
        "speedup": round(seconds["fp32"] / seconds["bf16"], 2), "examples": len(items),
        "predictions_agree": round(float((scores["fp32"].argmax(1) == scores["bf16"].argmax(1)).float().mean()), 4),
        "max_abs_logprob_diff": round(float((scores["fp32"] - scores["bf16"]).abs().max()), 4)}


def main() -> dict:
    p = parser(__doc__.split("\n\n")[0], "bench_precision.json")
    p.add_argument("--steps", type=int, default=None, help="training steps per timing (default 8; --quick 2)")
    p.add_argument("--examples", type=int, default=None, help="evaluation rows (default 400; --quick 16)")
    args = p.parse_args()
    args.steps, args.examples = args.steps or (2 if args.quick else 8), args.examples or (16 if args.quick else 400)
    setup(args)
    results = {f"train_{m}": train_case(args, m) for m in ("prompt_tuning", "full_finetune")}
    results["eval_zero_shot"] = eval_case(args)
    for name, r in results.items():
        print(f"{name:22s} fp32 {r['fp32']} bf16 {r['bf16']} speed-up {r['speedup']}x", flush=True)
    out = {"results": results, "cpu_has_bf16": cpu_has_bf16(), "threads": torch.get_num_threads()}
    write(out, args.out)
    return out


if __name__ == "__main__":
    main()
