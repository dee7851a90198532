"""Does a trained soft prompt write the same text in a left-padded batch as alone? Greedy, fp32, on the first
evaluation prompts of its task (of different lengths), three ways:

* ``alone``: PEFT's ``generate`` on each prompt by itself (no padding: the positions training used);
* ``peft_batched``: PEFT's ``generate`` on the left-padded batch (it drops position ids, so a padded row's text
  sits further from the soft prompt);
* ``slots``: promptlab's slot decoder (``readout.decoding``) on the same batch.

Prints, for every prompt, whether each batched text equals its ``alone`` text (the first differing texts in
full), and writes JSON. The checkpoint is a prompt-tuning run's, e.g. from ``experiment=generation_demo``:

    python scripts/bench/soft_prompt_positions.py --data-root ../shared/data \\
        --checkpoint runs/generation_demo/7_prompt_tuning_dialogsum_s0/checkpoint    # ~2 min on 2 idle cores
"""

from __future__ import annotations

import torch
from common import parser, plan, setup, write

import promptlab.run.execute as T
from promptlab.data import eval_items
from promptlab.methods import build_method
from promptlab.readout.model import pad


def main() -> dict:
    p = parser(__doc__.split("\n\n")[0], "bench_soft_prompt_positions.json")
    p.add_argument("--checkpoint", required=True, help="a prompt-tuning run's checkpoint directory")
    p.add_argument("--arm", default="dialogsum_prompt_tuning", help="the conf/arm/ the checkpoint was trained as")
    p.add_argument("--prompts", type=int, default=6)
    p.add_argument("--new-tokens", type=int, default=40)
    args = p.parse_args()
    setup(args)
    cfg, pl = plan(args, f"arm={args.arm}", f"data.eval_limit={args.prompts}")
    backbone = T.load_backbone(cfg.model, cfg.paths.cache_dir)
    model = build_method(cfg.method).load(backbone, args.checkpoint).eval()
    module, encoder = T.build_module(pl, backbone, model)
    prompts = [list(x["prompt_ids"]) for x in eval_items(encoder, pl.task.eval)]
    readout, tok = module.readout, backbone.tokenizer
    readout.config.max_new_tokens = args.new_tokens

    def text(row: list[int]) -> str:
        return readout._decode(row).text

    with torch.no_grad():
        alone = [model.generate(input_ids=torch.tensor([q]), attention_mask=torch.ones(1, len(q), dtype=torch.long),
                                generation_config=readout.config)[0, len(q):].tolist() for q in prompts]
        ids, mask = pad(prompts, tok.pad_token_id, torch.device("cpu"), left=True)
        batched = model.generate(input_ids=ids, attention_mask=mask, generation_config=readout.config)
        ways = {"peft_batched": [r.tolist() for r in batched[:, ids.shape[1]:]], "slots": readout.decode(model, prompts)}
    rows = []
    for i, q in enumerate(prompts):
        row = {"prompt_tokens": len(q), "padding": ids.shape[1] - len(q), "alone": text(alone[i])}
        for way, out in ways.items():
            row[way] = text(out[i])
            row[f"{way}_same"] = row[way] == row["alone"]
        rows.append(row)
        print(f"prompt {i}: {len(q)} tokens, padding {row['padding']}: " +
              ", ".join(f"{w} {'same' if row[f'{w}_same'] else 'differs'}" for w in ways), flush=True)
        if not row["peft_batched_same"]:
            print(f"    alone:        {row['alone']!r}\n    peft_batched: {row['peft_batched']!r}")
    out = {"checkpoint": args.checkpoint, "arm": args.arm, "new_tokens": args.new_tokens, "rows": rows,
           **{f"{w}_same": f"{sum(r[f'{w}_same'] for r in rows)}/{len(rows)}" for w in ways}}
    print({k: v for k, v in out.items() if k.endswith("_same")})
    write(out, args.out)
    return out


if __name__ == "__main__":
    main()
