"""Training speed and peak memory: prompt tuning, LoRA and full fine-tuning on SST-2, each run four ways on the
same examples, batch size, steps and learning rate, from a fresh backbone:

* ``plain``: a plain PyTorch loop (no Lightning, no Hydra): the model's own LM loss on prompt + answer, fp32,
  shuffled batches, AdamW;
* ``promptlab_off``: promptlab's Lightning trainer with this release's speed-ups off (``trainer.precision=32-true``,
  ``bucket_by_length=false``);
* ``promptlab``: promptlab as shipped (``trainer.precision=auto``: bf16-mixed where the CPU has avx512_bf16;
  length-bucketed batches);
* ``promptlab_step_by_hand``: the same batches and loss as ``promptlab`` in a hand loop: what it lacks against
  ``promptlab`` is what Lightning adds per step (logging, progress, hooks).

Examples/s counts the steps after ``--warmup`` untimed ones, wall clock from the end of the last warm-up step.

    python scripts/bench/training.py --data-root ../shared/data             # ~8 min on 2 idle cores
    python scripts/bench/training.py --data-root ../shared/data --model tiny_random --quick
"""

from __future__ import annotations

import contextlib
import tempfile
import time

import lightning as L
import torch
from common import Phase, naive_loss, parser, plan, setup, write

import promptlab.run.execute as T
from promptlab.data import PromptDataModule, collate
from promptlab.models.precision import bf16_linear_weights, resolve

METHODS = ("prompt_tuning", "lora", "full_finetune")
VARIANTS = ("plain", "promptlab_off", "promptlab", "promptlab_step_by_hand")


class StepTimes(L.Callback):
    """The wall clock at the end of every training step, and each batch's size."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.sizes: list[int] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.ends.append(time.perf_counter())
        self.sizes.append(len(batch["prompt_ids"]))


def rate(ends: list[float], sizes: list[int], warmup: int) -> dict:
    seconds = ends[-1] - ends[warmup - 1]
    return {"examples_per_second": sum(sizes[warmup:]) / seconds, "timed_steps": len(ends) - warmup,
            "timed_seconds": round(seconds, 2)}


def run_variant(args, method: str, variant: str) -> dict:
    speedups = variant != "promptlab_off"
    cfg, p = plan(args, "data=sst2", f"method={method}", "data.k_shot=null", f"data.train_size={args.steps * 8}",
                  "method.batch_size=8", f"method.max_steps={args.steps}", f"bucket_by_length={str(speedups).lower()}",
                  f"trainer.precision={'auto' if speedups else '32-true'}")
    torch.manual_seed(0)
    backbone = T.load_backbone(cfg.model, cfg.paths.cache_dir)
    model = p.method.prepare(backbone, p.spec)
    module, encoder = T.build_module(p, backbone, model)
    dm = PromptDataModule(encoder, p.train_rows, [], 8, 16, p.settings.seed, bucket=p.settings.bucket_by_length)
    dm.setup("fit")
    with Phase(f"{method}: {variant}") as ph:
        if variant in ("promptlab_off", "promptlab"):
            timer = StepTimes()
            with tempfile.TemporaryDirectory() as tmp:
                trainer = T.make_trainer(cfg, p.settings, tmp, [], True, [timer])
                with module.fitting(trainer):
                    trainer.fit(module, datamodule=dm)
            ends, sizes = timer.ends, timer.sizes
        else:
            ends, sizes = hand_loop(module, dm, p.settings.precision, plain=variant == "plain", steps=args.steps,
                                    pad_id=backbone.tokenizer.pad_token_id)
        ph.record.update(rate(ends, sizes, args.warmup), precision="32-true" if variant == "plain" else
                         p.settings.precision, bucketed=p.settings.bucket_by_length and variant != "plain")
    return ph.record


def hand_loop(module, dm: PromptDataModule, precision: str, plain: bool, steps: int, pad_id: int):
    """AdamW steps without Lightning: the plain loop's LM loss on shuffled batches (torch's default AdamW), or
    promptlab's loss and optimiser on promptlab's batches under its autocast."""
    model = module.model.train()
    trainable = [q for q in model.parameters() if q.requires_grad]
    optimizer = (torch.optim.AdamW(trainable, lr=module.optim.lr, weight_decay=module.optim.weight_decay) if plain
                 else module.configure_optimizers()["optimizer"])  # promptlab's own (fused) AdamW
    if plain:
        order = torch.randperm(len(dm.train_items), generator=torch.Generator().manual_seed(0)).tolist()
        batches = [collate([dm.train_items[i] for i in order[j:j + 8]]) for j in range(0, steps * 8, 8)]
    else:
        batches = list(dm.train_dataloader())[:steps]
    bf16 = precision.startswith("bf16") and not plain
    ends, sizes = [], []
    # promptlab's frozen weights cast to bf16 once, as PromptModule.fitting does for trainer.fit
    cast = bf16_linear_weights(model, frozen_only=True) if bf16 else contextlib.nullcontext()
    with cast:
        _steps(model, module, optimizer, batches, bf16, plain, pad_id, ends, sizes)
    return ends, sizes


def _steps(model, module, optimizer, batches: list[dict], bf16: bool, plain: bool, pad_id: int,
           ends: list[float], sizes: list[int]) -> None:
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = naive_loss(model, pad_id, batch) if plain else module.readout.loss(model, batch)
        loss.backward()
        optimizer.step()
        ends.append(time.perf_counter())
        sizes.append(len(batch["prompt_ids"]))


def main() -> dict:
    p = parser(__doc__.split("\n\n")[0], "bench_training.json")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--steps", type=int, default=None, help="steps per run, warm-up included (default 22)")
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args()
    args.steps = args.steps or (4 if args.quick else 22)
    setup(args)
    results = {m: {v: run_variant(args, m, v) for v in VARIANTS} for m in args.methods}
    summary = {}
    for m, r in results.items():
        ex = {v: r[v]["examples_per_second"] for v in VARIANTS}
        summary[m] = {"vs_plain": round(ex["promptlab"] / ex["plain"], 2),
                      "vs_off": round(ex["promptlab"] / ex["promptlab_off"], 2),
                      "lightning_overhead": round(1 - ex["promptlab"] / ex["promptlab_step_by_hand"], 3),
                      "peak_rss_mb": r["promptlab"]["peak_rss_mb"]}
        print(f"{m:15s} " + "  ".join(f"{v} {ex[v]:.2f}" for v in VARIANTS) + f"  -> {summary[m]}")
    if {"prompt_tuning", "full_finetune"} <= set(results):
        summary["prompt_tuning_memory_vs_full_finetune"] = round(
            results["prompt_tuning"]["promptlab"]["peak_rss_mb"] / results["full_finetune"]["promptlab"]["peak_rss_mb"], 2)
    out = {"summary": summary, "results": results, "batch_size": 8, "steps": args.steps, "warmup": args.warmup,
           "auto_precision": resolve("auto")}
    write(out, args.out)
    return out


if __name__ == "__main__":
    main()
