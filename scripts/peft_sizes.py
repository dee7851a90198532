"""Trainable vs stored parameters of every trained method YAML on a backbone, without training: each method
prepares the model, saves its per-task state, and the saved tensors are counted. Prints a table, writes JSON.

    PROMPTLAB_DATA=../shared/data python scripts/peft_sizes.py --out docs/measurements/peft_sizes.json
"""

from __future__ import annotations

import argparse
import json
import tempfile

from hydra import compose, initialize_config_dir

from promptlab.config import CONFIG_DIR
from promptlab.methods import build_method, count_parameters
from promptlab.models import load_backbone
from promptlab.tasks import TaskSpec
from promptlab.tracking import dir_bytes, stored_parameters

METHODS = ("prompt_tuning", "prefix_tuning", "p_tuning", "lora", "dora", "ia3", "multitask_prompt_tuning",
           "full_finetune")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    out = {}
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for name in METHODS:
            cfg = compose(config_name="train", overrides=[f"method={name}", f"model={args.model}"])
            method = build_method(cfg.method)
            model = method.prepare(load_backbone(cfg.model, cfg.paths.cache_dir), TaskSpec.from_config(cfg.data))
            trainable, _ = count_parameters(model)
            with tempfile.TemporaryDirectory() as d:
                method.save(model, d)
                out[name] = {"trainable_params": trainable, "stored_params": stored_parameters(d),
                             "checkpoint_bytes": dir_bytes(d)}
            print(f"{name:26s} trainable {trainable:>12,}  stored {out[name]['stored_params']:>12,}  "
                  f"checkpoint {out[name]['checkpoint_bytes'] / 2**10:>10,.1f} KB", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"model": args.model, "methods": out}, f, indent=1)


if __name__ == "__main__":
    main()
