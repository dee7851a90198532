"""What the multimodal rows cost at real size: trainable and stored parameters, one training step (forward,
backward, AdamW at batch 8) and evaluation speed, and peak memory, per method, on the synthetic colours task.

No real vision-language or CLIP weights can be downloaded here, so the backbones have the real models' shapes:
* ``smolvlm_shaped``: SmolVLM-256M's architecture, an Idefics3 with a SigLIP-B/16 encoder at 512 px (random
  weights), pixel shuffle by 4 (64 image tokens an image) and the bundled SmolLM2-135M as its language model
  (real weights), SmolVLM's chat template, one 512-px image a prompt (no image splitting);
* ``clip_b32_shaped``: CLIP ViT-B/32's configuration (transformers' defaults), random weights.
Costs do not depend on the weights' values; accuracies would, so none are reported.

    python scripts/bench/multimodal.py --data-root DIR_WITH_colours/     # ~5 min on 2 idle cores
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from common import Phase, parser, write
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import promptlab.run.execute as T
from promptlab.config import CONFIG_DIR
from promptlab.data import collate
from promptlab.methods import build_method, count_parameters
from promptlab.models import Backbone, load_backbone
from promptlab.models.precision import bf16_linear_weights, resolve
from promptlab.models.tiny_multimodal import clip, clip_tokenizer, idefics3
from promptlab.tasks import TaskSpec, load_task
from promptlab.tracking import dir_bytes, stored_parameters

VLM_METHODS = ("zero_shot", "few_shot", "prompt_tuning", "lora", "full_finetune")
CLIP_METHODS = ("clip_zero_shot", "coop", "linear_probe")


def smolvlm_shaped(cache_dir: str) -> Backbone:
    lm = load_backbone(OmegaConf.load(CONFIG_DIR / "model" / "smollm2_135m.yaml"), cache_dir)
    siglip_b16_512 = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                      "image_size": 512, "patch_size": 16}
    model, processor = idefics3(lm.tokenizer, lm.model.config.to_dict(), siglip_b16_512, scale=4)
    lm.model.resize_token_embeddings(len(lm.tokenizer))  # the image tokens idefics3() added
    missing = model.model.text_model.load_state_dict(lm.model.model.state_dict(), strict=False)
    assert not missing.missing_keys, missing
    model.tie_weights()
    return Backbone(model, lm.tokenizer, lm.path, 0.0, False, "vlm", processor)


def clip_b32_shaped(cache_dir: str) -> Backbone:
    # the tiny tokenizer: its ids fit CLIP's 49,408-token vocabulary; prompts are a few words, the cost is the towers'
    model, processor = clip(clip_tokenizer(), {"vocab_size": 49408}, {}, projection_dim=512)
    return Backbone(model, processor.tokenizer, str(Path(cache_dir) / "clip"), 0.0, False, "clip", processor)


def measure(args, backbone: Backbone, method_name: str, precision: str, steps: int) -> dict:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"method={method_name}", "data=colours", "data.k_shot=16"])
    spec = TaskSpec.from_config(cfg.data)
    task = load_task(spec, args.data_root)
    method = build_method(cfg.method)
    model = method.prepare(backbone, spec)
    readout = method.readout(backbone.tokenizer, spec)
    demos = [method.demo(spec, r) for r in task.train[: method.num_demos]]
    encoder = method.encoder(backbone, spec, demos)
    trainable, total = count_parameters(model)
    out = {"method": method_name, "trainable_params": trainable, "total_params": total}
    bf16 = precision == "bf16-mixed"
    if method.trains:
        items = [encoder.item(r, train=True) for r in task.train[: 8 * (steps + 1)]]
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=True)
        model.train()
        with Phase(f"{method_name}: {steps} training steps") as ph, bf16_linear_weights(model, True) if bf16 else \
                torch.autocast("cpu", enabled=False):
            for s in range(steps + 1):
                if s == 1:
                    start = time.perf_counter()  # the first step warms up
                with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                    loss = readout.loss(model, collate(items[8 * s: 8 * s + 8]))
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            ph.record.update(seconds_per_step=round((time.perf_counter() - start) / steps, 2),
                             examples_per_second=8 * steps / (time.perf_counter() - start))
        out["train"] = ph.record
        with tempfile.TemporaryDirectory() as tmp:
            method.save(model, Path(tmp) / "checkpoint")
            out["stored_params"] = stored_parameters(Path(tmp) / "checkpoint")
            out["checkpoint_bytes"] = dir_bytes(Path(tmp) / "checkpoint")
    model.eval()
    rows = task.eval[: args.eval_rows]
    with Phase(f"{method_name}: evaluation of {len(rows)} rows") as ph, torch.no_grad(), \
            bf16_linear_weights(model) if bf16 else torch.autocast("cpu", enabled=False), \
            torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        start = time.perf_counter()
        items = [encoder.item(r, train=False) for r in rows]
        for b in range(0, len(items), 8):
            readout.predict(model, collate(items[b: b + 8]))
        ph.record["examples_per_second"] = len(rows) / (time.perf_counter() - start)
    out["eval"] = ph.record
    return out


def main() -> None:
    p = parser(__doc__, "bench_multimodal.json")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--eval-rows", type=int, default=32)
    args = p.parse_args()
    if not args.data_root or not Path(args.data_root, "colours", "train.jsonl").is_file():
        raise SystemExit("--data-root must hold colours/ (python -m promptlab.tasks.shapes DIR/colours)")
    if args.threads:
        torch.set_num_threads(args.threads)
    T.quiet_third_party_noise()
    precision = resolve("auto")
    cache = str(Path(tempfile.gettempdir()) / "promptlab-bench-cache")
    results = {"precision": precision, "steps": args.steps, "rows": []}
    for build, methods in ((smolvlm_shaped, VLM_METHODS), (clip_b32_shaped, CLIP_METHODS)):
        for name in methods:
            backbone = build(cache)  # fresh: full fine-tuning must not start from another method's weights
            results["rows"].append({"backbone": build.__name__, **measure(args, backbone, name, precision,
                                                                           args.steps)})
    write(results, args.out)


if __name__ == "__main__":
    main()
