"""Serving N tasks from one frozen backbone (``serving.MultiTaskModel``, PEFT #759) vs N fully fine-tuned models.

    PROMPTLAB_DATA=../shared/data python scripts/bench_multitask.py \\
        --runs runs/serve/*prompt_tuning* runs/serve/*lora* --full-model-checkpoint runs/serve/full/checkpoint

``--runs`` are completed PEFT runs (``config.yaml``, ``result.json``, ``checkpoint/``), grouped by method (e.g.
prompt tuning, LoRA) on one backbone; each group serves its first 1..``--max-tasks`` tasks. For each N:

* storage: the backbone's weight files + N adapter directories vs N x the full model checkpoint's files;
* memory: RSS growth while loading, measured in a fresh subprocess per approach and read after each load
  (incrementally: N adapters into one backbone; N real copies of the full model, from_pretrained N times);
* throughput: prompt prefill (examples/s) of one stream of ``--examples-per-task`` eval rows from each of the N
  tasks (each encoded with its task's Encoder, task_id set; seeded shuffle, batches of ``--batch-size``), as mixed
  batches through MultiTaskModel, or each batch split into one-task sub-batches through a PeftModel holding the N
  adapters, switched with set_adapter (switch time counted);
* load / switch time: loading the N-th adapter into the served model; a set_adapter switch; from_pretrained of
  one more full model.

Then, for choice tasks, checks that mixed batches predict what each run recorded (predictions.jsonl). Writes JSON
(``--out``, with the machine and its load average) and a PNG of it next to the JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from promptlab.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
DEVICE = torch.device("cpu")
WEIGHTS = ("*.safetensors", "*.bin")
SERVED_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")  # README.md is not


NOTES = {
    "storage": "backbone weight files + adapter_config.json and adapter weights per task (PEFT's README.md left out) "
               "vs N x every file of the full model checkpoint",
    "memory": "VmRSS growth of a fresh subprocess, read after each load (incremental, one process per approach); "
              "weights are copied out of the file mapping (materialize), as N different models would need",
    "throughput": "prompt prefill only (last hidden states, no LM head), after one untimed warm-up batch; split: "
                  "one forward per task present in a batch, set_adapter only when the task changes",
    "load_seconds": "add_adapter: MultiTaskModel.add_task of the N-th adapter (LoRA's first wraps the backbone in "
                    "a PeftModel); set_adapter: mean of a switch; full: from_pretrained, which maps the file (pages "
                    "are read on first use)",
}


@dataclass
class Run:
    name: str  # the task's name in the served model
    dir: Path
    cfg: DictConfig

    @property
    def checkpoint(self) -> Path:
        return self.dir / "checkpoint"


def read_runs(dirs: list[str]) -> dict[str, list[Run]]:
    """Completed runs grouped by method name, in the order given; all on one backbone."""
    from promptlab.eval import source_config

    groups: dict[str, list[Run]] = {}
    for d in map(Path, dirs):
        cfg, _ = source_config(d)
        runs = groups.setdefault(cfg.method.name, [])
        name = cfg.data.name if all(r.name != cfg.data.name for r in runs) else f"{cfg.data.name}@{d.name}"
        runs.append(Run(name, d, cfg))
    models = {json.dumps(OmegaConf.to_container(r.cfg.model), sort_keys=True) for g in groups.values() for r in g}
    if len(models) > 1:
        raise ConfigError(f"the runs use {len(models)} different backbones", "pass runs of one model")
    return groups


def file_bytes(directory: Path, patterns) -> int:
    return sum(f.stat().st_size for p in patterns for f in directory.glob(p) if f.is_file())


def backbone_bytes(backbone) -> int:
    """Its weight files on disk; the tensors' bytes for a model without files (tiny_random)."""
    path = Path(backbone.path)
    on_disk = file_bytes(path, WEIGHTS) if path.is_dir() else 0
    return on_disk or sum(p.numel() * p.element_size() for p in {id(p): p for p in backbone.model.parameters()}.values())


def rss_mb() -> float:
    from promptlab.tracking import proc_status_mb

    gc.collect()
    return proc_status_mb("VmRSS")


def materialize(model: torch.nn.Module) -> torch.nn.Module:
    """Give the model its own copy of every weight. transformers maps a safetensors file into memory (copy on write),
    so N loads of one checkpoint would share its pages where N different fine-tuned models could not, and pages
    never read would not be resident: neither is what serving N tasks costs. Tied weights stay tied."""
    for t in [*model.parameters(), *model.buffers()]:
        t.data = t.data.clone()
    return model


def child(job: dict) -> dict:
    """Runs in a fresh process: RSS (MB) before anything loads, then after each load; and each load's seconds."""
    import peft  # noqa: F401  (imported before the baseline: code is not what is measured)
    from transformers import AutoModelForCausalLM

    from promptlab.models import load_backbone
    from promptlab.models.serving import MultiTaskModel

    torch.set_num_threads(1)
    rss, seconds, keep = [rss_mb()], [], []
    if job["what"] == "full":
        dtype = getattr(torch, job["model"].get("dtype", "float32"))
        for _ in range(job["n"]):
            start = time.perf_counter()
            model = AutoModelForCausalLM.from_pretrained(job["checkpoint"], dtype=dtype)
            seconds.append(time.perf_counter() - start)  # what loading costs; the copy below is for measuring
            keep.append(materialize(model))
            rss.append(rss_mb())
        return {"rss_mb": rss, "load_seconds": seconds}
    backbone = load_backbone(OmegaConf.create(job["model"]), job["cache_dir"])
    model = MultiTaskModel(materialize(backbone.model))
    rss.append(rss_mb())
    for name, directory in job["checkpoints"].items():
        start = time.perf_counter()
        model.add_task(name, directory)
        seconds.append(time.perf_counter() - start)
        rss.append(rss_mb())
    return {"rss_mb": rss, "load_seconds": seconds}


def in_child(job: dict, threads_env: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], capture_output=True, text=True,
                         env=threads_env, check=False)
    if out.returncode:
        raise RuntimeError(f"memory subprocess failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def encoded(runs: list[Run], tok, data_root: str | None, per_task: int) -> list[list[dict]]:
    """Each task's first ``per_task`` eval rows, encoded as its run encoded them, with its task id."""
    from promptlab.prompts import Encoder
    from promptlab.tasks import TaskSpec, load_task

    out = []
    for i, run in enumerate(runs):
        spec = TaskSpec.from_config(run.cfg.data)
        rows = load_task(spec, data_root or run.cfg.paths.data_root).eval[:per_task]
        encoder = Encoder(tok, spec, task_id=i)
        out.append([encoder.item(r, train=False) for r in rows])
    return out


def batches_of(items: list[dict], size: int, seed: int = 0) -> list[list[dict]]:
    items = list(items)
    random.Random(seed).shuffle(items)  # requests of the N tasks arrive interleaved
    return [items[i:i + size] for i in range(0, len(items), size)]


@torch.no_grad()
def mixed_pass(batches, model, pad_id: int) -> None:
    from promptlab.readout.model import final_hidden_states, pad

    for b in batches:
        ids, mask = pad([x["prompt_ids"] for x in b], pad_id, DEVICE)
        final_hidden_states(model, ids, mask, [x["task_id"] for x in b])


@torch.no_grad()
def split_pass(batches, peft_model, names: list[str], pad_id: int) -> tuple[float, int]:
    """Each batch as one-task sub-batches, switching the active adapter when the task changes; (switch seconds,
    switches)."""
    from promptlab.readout.model import final_hidden_states, pad

    seconds, switches = 0.0, 0
    for b in batches:
        for t in dict.fromkeys(x["task_id"] for x in b):
            if peft_model.active_adapter != names[t]:
                start = time.perf_counter()
                peft_model.set_adapter(names[t], inference_mode=True)
                seconds += time.perf_counter() - start
                switches += 1
            ids, mask = pad([x["prompt_ids"] for x in b if x["task_id"] == t], pad_id, DEVICE)
            final_hidden_states(peft_model, ids, mask)
    return seconds, switches


def timed(fn, batches, *args):
    fn(batches[:1], *args)  # warm-up, untimed
    start = time.perf_counter()
    out = fn(batches, *args)
    return time.perf_counter() - start, out


@torch.no_grad()
def check_predictions(model, runs: list[Run], items: list[list[dict]], tok, batch_size: int) -> dict:
    """Choice tasks: mixed-batch predictions vs each run's predictions.jsonl (per idx)."""
    from promptlab.readout import ChoiceReadout

    choice = [i for i, r in enumerate(runs) if r.cfg.data.output_type == "choice"]
    recorded = [{r["idx"]: r for r in map(json.loads, (runs[i].dir / "predictions.jsonl").read_text().splitlines())}
                for i in range(len(runs))]
    readout, same, diff, n = ChoiceReadout(tok.pad_token_id), 0, 0.0, 0
    for b in batches_of([x for i in choice for x in items[i]], batch_size):
        scores = readout.scores(model, [x["prompt_ids"] for x in b], [x["choice_ids"] for x in b],
                                [x["task_id"] for x in b])
        for x, s in zip(b, scores, strict=True):
            rec = recorded[x["task_id"]][x["idx"]]
            same += int(s.argmax()) == rec["pred"]
            got = s[: len(rec["log_probs"])].tolist()
            diff = max(diff, *(abs(u - v) for u, v in zip(got, rec["log_probs"], strict=True)))
            n += 1
    return {"tasks": [runs[i].name for i in choice], "examples": n, "same_predictions": same == n if n else None,
            "mismatched_predictions": n - same, "max_abs_logprob_diff": diff,
            "note": "predictions.jsonl keeps log-probs to 5 decimals"}


def bench_method(method: str, runs: list[Run], args, full_bytes: int, env: dict) -> dict:
    from peft import PeftModel

    from promptlab.models import load_backbone
    from promptlab.models.serving import MultiTaskModel
    from promptlab.tracking import dir_bytes

    cfg = runs[0].cfg
    backbone = load_backbone(cfg.model, cfg.paths.cache_dir)
    base = backbone_bytes(backbone)  # before LoRA layers join its parameters
    tok, names = backbone.tokenizer, [r.name for r in runs]
    model, add_seconds = MultiTaskModel(backbone.model), []
    for r in runs:
        start = time.perf_counter()
        model.add_task(r.name, r.checkpoint)
        add_seconds.append(time.perf_counter() - start)
    if model.kind == "lora":
        peft_model = model.peft  # the same PeftModel: mixed batches by adapter_names, split ones by set_adapter
    else:  # PEFT's own way to hold several soft prompts: one PeftModel, one active prompt at a time
        peft_model = PeftModel.from_pretrained(backbone.model, runs[0].checkpoint, adapter_name=names[0]).eval()
        for r in runs[1:]:
            peft_model.load_adapter(r.checkpoint, adapter_name=r.name)
    start, cycles = time.perf_counter(), 10
    for _ in range(cycles):
        for name in names:
            peft_model.set_adapter(name, inference_mode=True)
    set_adapter = (time.perf_counter() - start) / (cycles * len(names))

    items = encoded(runs, tok, args.data_root, args.examples_per_task)
    n_range = list(range(1, len(runs) + 1))
    adapter_bytes = [file_bytes(r.checkpoint, SERVED_FILES) for r in runs]
    mixed, split, switch_seconds, switches = [], [], [], []
    for n in n_range:
        batches = batches_of([x for task in items[:n] for x in task], args.batch_size)
        count = sum(len(b) for b in batches)
        seconds, _ = timed(mixed_pass, batches, model, tok.pad_token_id)
        mixed.append(count / seconds)
        seconds, (switch, k) = timed(split_pass, batches, peft_model, names, tok.pad_token_id)
        split.append(count / seconds)
        switch_seconds.append(switch)
        switches.append(k)
        print(f"{method} N={n}: {mixed[-1]:.1f} examples/s mixed, {split[-1]:.1f} split "
              f"({k} switches, {switch:.4f} s)", flush=True)
    equality = check_predictions(model, runs, items, tok, args.batch_size)

    memory = in_child({"what": "adapters", "model": OmegaConf.to_container(cfg.model, resolve=True),
                       "cache_dir": str(cfg.paths.cache_dir), "checkpoints": {r.name: str(r.checkpoint) for r in runs}},
                      env)
    rss = memory["rss_mb"]
    return {
        "kind": model.kind, "n": n_range,
        "tasks": [{"name": r.name, "run": str(r.dir), "output_type": r.cfg.data.output_type,
                   "adapter_bytes": b, "checkpoint_dir_bytes": dir_bytes(r.checkpoint)}
                  for r, b in zip(runs, adapter_bytes, strict=True)],
        "storage_bytes": {"backbone": base, "adapters": [base + sum(adapter_bytes[:n]) for n in n_range],
                          "full_models": [n * full_bytes for n in n_range]},
        "memory_mb": {"backbone": rss[1] - rss[0], "adapters": [r - rss[1] for r in rss[2:]],
                      "served": [r - rss[0] for r in rss[2:]]},
        "throughput": {"unit": "prompt prefill examples/s", "mixed": mixed, "split": split,
                       "split_switch_seconds": switch_seconds, "split_switches": switches,
                       "examples": [n * args.examples_per_task for n in n_range]},
        "load_seconds": {"add_adapter": add_seconds, "add_adapter_child": memory["load_seconds"],
                         "set_adapter": set_adapter, "backbone": backbone.load_seconds},
        "equality": equality,
    }


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", help="completed PEFT run directories")
    p.add_argument("--full-model-checkpoint", help="a full fine-tuning run's checkpoint/ directory")
    p.add_argument("--max-tasks", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--examples-per-task", type=int, default=32)
    p.add_argument("--data-root", default=os.environ.get("PROMPTLAB_DATA"),
                   help="default: $PROMPTLAB_DATA, else each run's paths.data_root")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(REPO / "results" / "bench_multitask.json"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return {}
    if not args.runs or not args.full_model_checkpoint:
        p.error("--runs and --full-model-checkpoint are required")
    if args.threads:
        torch.set_num_threads(args.threads)
    from promptlab.report.serving import serving_figure
    from promptlab.tracking import dir_bytes, load_average, machine_info

    machine = machine_info()
    full_dir = Path(args.full_model_checkpoint)
    if not (full_dir / "config.json").is_file():
        raise ConfigError(f"{full_dir} is not a saved model (no config.json)",
                          "pass the checkpoint/ of a completed full_finetune run")
    groups = {m: runs[: args.max_tasks] for m, runs in read_runs(args.runs).items()}
    full_bytes = dir_bytes(full_dir)
    threads = str(torch.get_num_threads())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # the children only load
    result = {"model": next(iter(groups.values()))[0].cfg.model.name, "batch_size": args.batch_size,
              "examples_per_task": args.examples_per_task, "threads": int(threads), "machine": machine,
              "notes": NOTES,
              "methods": {m: bench_method(m, runs, args, full_bytes, env) for m, runs in groups.items()}}
    n_full = max(len(r) for r in groups.values())
    import psutil

    fits = int(0.8 * psutil.virtual_memory().available // max(full_bytes, 1))  # never swap the machine
    full = in_child({"what": "full", "checkpoint": str(full_dir), "n": min(n_full, fits),
                     "model": OmegaConf.to_container(next(iter(groups.values()))[0].cfg.model, resolve=True)}, env)
    rss = full["rss_mb"]
    result["full"] = {"checkpoint": str(full_dir), "bytes": full_bytes, "n": list(range(1, len(rss))),
                      "memory_mb": [r - rss[0] for r in rss[1:]], "load_seconds": full["load_seconds"],
                      "skipped_n_above": min(n_full, fits) if fits < n_full else None}
    machine["load_end"] = load_average()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    serving_figure(result, out.with_suffix(".png"))
    print(json.dumps({m: {k: v[k] for k in ("n", "throughput", "equality")} for m, v in result["methods"].items()},
                     indent=1))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return result


if __name__ == "__main__":
    try:
        main()
    except ConfigError as err:
        sys.exit(f"bench_multitask: {err}")
