"""Where a decode step's time goes: SmolLM2-135M, 16 GSM8K zero-shot CoT prompts decoded together, steps 1-40
after the prompt, with transformers' ``DynamicCache`` (as ``generate`` decodes) and with promptlab's slot
cache (``readout.decoding``), in fp32 and under bf16 autocast (bf16 linear weights, as ``trainer.precision=auto``).

Each step's wall time is measured without the profiler and with it; ``torch.profiler`` gives each operator's own time,
grouped: matmuls (the linear layers and the LM head), cache writes and casts (the copies that grow or write
the cache, and autocast's casts),
attention (SDPA), sampling (argmax), other operators (norms, RoPE, elementwise, casts); Python and dispatch
is the profiled step's wall time minus every operator's time (the profiler adds a little to both). Also the stop-string check (the tokenizer decoding each
row's text) as promptlab did it (whole rows) and does it (the last tokens).

With ``--compile`` the slot cache's step is also timed (bf16, not profiled) with ``torch.compile`` (inductor,
``dynamic=True``) on each decoder layer's MLP and norms (``mlp``), and on the whole decoder layers (``layers``;
the slot cache's update breaks the graph), with inductor's ``freezing`` off and on (weights pre-packed for oneDNN).

    python scripts/bench/decode_profile.py --data-root ../shared/data     # ~2 min on 2 idle cores
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from unittest import mock

import torch
import torch._inductor.config
from common import parser, plan, setup, write
from torch.profiler import ProfilerActivity, profile

import promptlab.run.execute as T
from promptlab.data import eval_items
from promptlab.models.precision import bf16_linear_weights, resolve
from promptlab.readout.decoding import SlotDecoder
from promptlab.readout.model import NO_LOGITS, head_of, pad, project, run_keeping_last_hidden

GROUPS = {"matmuls": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::t"),
          "cache writes and casts": ("aten::cat", "aten::copy_", "aten::index_copy_", "aten::slice_scatter"),
          "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::scaled_dot_product_attention"),
          "sampling": ("aten::argmax", "aten::multinomial", "aten::softmax")}


def grouped(prof, steps: int) -> dict[str, float]:
    """Milliseconds a step per group of operators (self time: a parent op's children are not counted twice)."""
    out = dict.fromkeys([*GROUPS, "other operators"], 0.0)
    for e in prof.key_averages():
        group = next((g for g, names in GROUPS.items() if e.key in names), "other operators")
        out[group] += e.self_cpu_time_total / 1000 / steps
    return out


def dynamic_steps(model, ids, mask, steps: int):
    """A step function decoding with a DynamicCache (concatenating keys and values), as generate does."""
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    state = {"cache": out.past_key_values, "mask": mask, "token": out.logits[:, -1].argmax(-1),
             "position": positions[:, -1:] + 1}
    head, none = head_of(model), NO_LOGITS

    def step():
        state["mask"] = torch.cat([state["mask"], state["mask"].new_ones(len(ids), 1)], 1)
        _, hidden = run_keeping_last_hidden(model, input_ids=state["token"][:, None], attention_mask=state["mask"],
                                            position_ids=state["position"], past_key_values=state["cache"],
                                            use_cache=True, logits_to_keep=none)
        state["token"] = project(head, hidden[:, -1]).argmax(-1)
        state["position"] = state["position"] + 1
    return step


def slot_steps(model, prompts, pad_id: int, width: int):
    """A step function of the slot decoder, after admitting ``prompts`` into ``width`` slots."""
    decoder = SlotDecoder(model, pad_id, width, lambda logits: logits.argmax(-1), lambda new: False)
    prefix = decoder.shared_prefix(prompts)
    queue = deque((i, 0) for i in range(len(prompts)))
    decoder.cache = None
    decoder.admit(list(range(width)), queue, prompts, 1, prefix, [[] for _ in prompts])

    def step():
        decoder.step()
    return step


def measure(make_step, steps: int, warm: int = 3) -> dict:
    step = make_step()
    for _ in range(warm):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    wall = 1000 * sum(times) / steps
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        profiled_wall = 1000 * (time.perf_counter() - start) / steps
    groups = grouped(prof, steps)
    ops = sum(groups.values())
    return {"step_ms": round(wall, 1), "profiled_step_ms": round(profiled_wall, 1),
            "groups_ms": {g: round(ms, 1) for g, ms in groups.items()},
            "python_and_dispatch_ms": round(max(0.0, profiled_wall - ops), 1)}


def compiled_steps(model, prompts, pad_id: int, steps: int) -> dict:
    """The slot cache's step time (bf16) with parts of every decoder layer compiled; the model is restored."""
    layers = model.model.layers
    parts = {"mlp": ("mlp", "input_layernorm", "post_attention_layernorm"), "layers": None}
    out = {}
    for freezing in (False, True):
        for name, modules in parts.items():
            torch._dynamo.reset()
            saved = [dict(layer._modules) for layer in layers]
            with mock.patch.object(torch._inductor.config, "freezing", freezing):
                for layer in layers:
                    if modules is None:
                        layer.forward = torch.compile(layer.forward, dynamic=True)
                    for m in modules or ():
                        setattr(layer, m, torch.compile(getattr(layer, m), dynamic=True))
                step = slot_steps(model, prompts, pad_id, len(prompts))
                start = time.perf_counter()
                for _ in range(3):
                    step()
                first = time.perf_counter() - start
                times = []
                for _ in range(steps):
                    start = time.perf_counter()
                    step()
                    times.append(time.perf_counter() - start)
            for layer, modules_before in zip(layers, saved, strict=True):
                layer._modules.update(modules_before)
                layer.__dict__.pop("forward", None)
            key = f"compiled_{name}{'_frozen' if freezing else ''}"
            out[key] = {"step_ms": round(1000 * sum(times) / steps, 1), "first_3_steps_s": round(first, 1)}
            print(f"{key}: {out[key]}", flush=True)
    return out


def main() -> dict:
    p = parser(__doc__.split("\n\n")[0], "bench_decode_profile.json")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--compile", action="store_true", help="also time the step with torch.compile (bf16)")
    args = p.parse_args()
    setup(args)
    cfg, pl = plan(args, "data=gsm8k", "method=zero_shot_cot", "data.eval_limit=16")
    backbone = T.load_backbone(cfg.model, cfg.paths.cache_dir)
    model = pl.method.prepare(backbone, pl.spec).eval()
    module, encoder = T.build_module(pl, backbone, model)
    prompts = [list(x["prompt_ids"]) for x in eval_items(encoder, pl.task.eval)]
    tok = backbone.tokenizer
    ids, mask = pad(prompts, tok.pad_token_id, torch.device("cpu"), left=True)
    out = {"prompts": len(prompts), "steps": args.steps}
    for precision in ("32-true", resolve("auto")):
        bf16 = precision.startswith("bf16")
        with (torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16),
              bf16_linear_weights(model) if bf16 else contextlib.nullcontext()):
            for name, make in (("dynamic_cache", lambda: dynamic_steps(model, ids, mask, args.steps)),
                               ("slot_cache", lambda: slot_steps(model, prompts, tok.pad_token_id, len(prompts)))):
                out[f"{name}_{precision}"] = r = measure(make, args.steps)
                print(f"{name} {precision}: {r}", flush=True)
            if bf16 and args.compile:
                out |= compiled_steps(model, prompts, tok.pad_token_id, args.steps)
    row = list(range(1000, 1200))  # 200 tokens written so far, 16 rows
    for name, tail in (("whole_row", len(row)), ("last_tokens", 2 * 9 + 8)):
        start = time.perf_counter()
        for _ in range(16):
            tok.decode(row[-tail:], skip_special_tokens=True)
        out[f"stop_check_ms_{name}"] = round(1000 * (time.perf_counter() - start), 2)
    print({k: v for k, v in out.items() if k.startswith("stop_check")})
    write(out, args.out)
    return out


if __name__ == "__main__":
    main()
