"""Evaluation speed: zero-shot, 4-shot and 16-shot scoring of SST-2 validation rows, each three ways on the same
prompts (promptlab's Encoder: template 0, system prompt, chat template, class-balanced demonstrations):

* ``plain``: a plain PyTorch loop (no Lightning): full logits at every position of each right-padded batch in
  the rows' order, log-softmax over the vocabulary, fp32, ``torch.inference_mode``;
* ``promptlab_off``: promptlab's ``trainer.predict`` with this release's speed-ups off: fp32, every whole
  sequence through the model (no shared-prefix cache), batches in the rows' order;
* ``promptlab``: as shipped: ``trainer.precision=auto`` (bf16-mixed where the CPU has avx512_bf16), the shared
  prefix (system turn, demonstrations) run once per batch, batches longest first.

Also: the predictions' agreement and each way's accuracy (bf16 may flip near-ties).

    python scripts/bench/evaluation.py --data-root ../shared/data           # ~10 min on 2 idle cores
    python scripts/bench/evaluation.py --data-root ../shared/data --model tiny_random --quick
"""

from __future__ import annotations

import tempfile
import time

import torch
from common import Phase, naive_scores, parser, plan, setup, write

import promptlab.run.execute as T
from promptlab.data import collate, eval_items, eval_loader

VARIANTS = ("plain", "promptlab_off", "promptlab")


def run_shots(args, shots: int) -> dict:
    method = ["method=zero_shot"] if shots == 0 else ["method=few_shot", f"method.num_demos={shots}"]
    out = {}
    preds = {}
    for variant in VARIANTS:
        speedups = variant == "promptlab"
        cfg, p = plan(args, "data=sst2", *method, "data.k_shot=32", f"data.eval_limit={args.examples}",
                      "data.max_prompt_tokens=2048",
                      f"trainer.precision={'auto' if speedups else '32-true'}")
        backbone = T.load_backbone(cfg.model, cfg.paths.cache_dir)
        model = p.method.prepare(backbone, p.spec)
        module, encoder = T.build_module(p, backbone, model)
        if not speedups:
            module.readout.prefix.enabled = False  # every whole sequence through the model
        items = eval_items(encoder, p.task.eval) if speedups else [encoder.item(r, train=False) for r in p.task.eval]
        with Phase(f"{shots}-shot: {variant}") as ph:
            start = time.perf_counter()
            if variant == "plain":
                rows = plain_loop(model, backbone.tokenizer.pad_token_id, items, args.batch_size)
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    trainer = T.make_trainer(cfg, p.settings, tmp, [], False)
                    with module.predicting(trainer):
                        rows = [r for b in trainer.predict(module, eval_loader(items, args.batch_size)) for r in b]
            seconds = time.perf_counter() - start
            preds[variant] = {r["idx"]: (r["pred"], r["label"]) for r in rows}
            ph.record.update(examples_per_second=len(items) / seconds, seconds=round(seconds, 2),
                             precision="32-true" if variant == "plain" else p.settings.precision,
                             accuracy=round(100 * sum(y == t for y, t in preds[variant].values()) / len(items), 2),
                             mean_prompt_tokens=round(sum(len(x["prompt_ids"]) for x in items) / len(items), 1))
        out[variant] = ph.record
    out["promptlab_off_agrees_with_plain"] = agreement(preds["promptlab_off"], preds["plain"])
    out["promptlab_agrees_with_plain"] = agreement(preds["promptlab"], preds["plain"])
    return out


def agreement(a: dict, b: dict) -> float:
    return round(sum(a[i][0] == b[i][0] for i in a) / len(a), 4)


@torch.inference_mode()
def plain_loop(model, pad_id: int, items: list[dict], batch_size: int) -> list[dict]:
    model.eval()
    rows = []
    for start in range(0, len(items), batch_size):
        batch = collate(items[start:start + batch_size])
        scores = naive_scores(model, pad_id, batch["prompt_ids"], batch["choice_ids"])
        rows += [{"idx": i, "label": int(y), "pred": int(s.argmax())}
                 for i, y, s in zip(batch["idx"], batch["labels"], scores, strict=True)]
    return rows


def main() -> dict:
    p = parser(__doc__.split("\n\n")[0], "bench_evaluation.json")
    p.add_argument("--shots", nargs="+", type=int, default=[0, 4, 16])
    p.add_argument("--examples", type=int, default=None, help="validation rows (default 128; --quick 16)")
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()
    args.examples = args.examples or (16 if args.quick else 128)
    setup(args)
    results = {f"{k}-shot": run_shots(args, k) for k in args.shots}
    summary = {}
    for name, r in results.items():
        ex = {v: r[v]["examples_per_second"] for v in VARIANTS}
        summary[name] = {"vs_plain": round(ex["promptlab"] / ex["plain"], 2),
                         "vs_off": round(ex["promptlab"] / ex["promptlab_off"], 2),
                         "accuracy": {v: r[v]["accuracy"] for v in VARIANTS}}
        print(f"{name:8s} " + "  ".join(f"{v} {ex[v]:.2f}" for v in VARIANTS) + f"  -> {summary[name]}")
    out = {"summary": summary, "results": results, "examples": args.examples, "batch_size": args.batch_size}
    write(out, args.out)
    return out


if __name__ == "__main__":
    main()
