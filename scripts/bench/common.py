"""What the benchmarks under ``scripts/bench/`` share: promptlab's own objects for a config (composed as
``promptlab-train`` composes it), the plain PyTorch baselines promptlab is measured against, a phase timer
with its peak memory, and the machine facts written beside every figure."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import os
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

import promptlab.run.execute as T
from promptlab.config import CONFIG_DIR
from promptlab.readout.model import pad
from promptlab.tracking import PeakMemory, git_commit, machine_info, versions, write_json_atomic

REPO = Path(__file__).resolve().parents[2]


def parser(description: str, out: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2_135m", help="a conf/model/ name (tiny_random: a smoke test)")
    p.add_argument("--data-root", default=os.environ.get("PROMPTLAB_DATA"), help="default: $PROMPTLAB_DATA")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="a smoke test: few steps and examples, rough figures")
    p.add_argument("--out", default=str(REPO / "results" / out), help="JSON output")
    return p


def setup(args: argparse.Namespace) -> None:
    if not args.data_root or not Path(args.data_root, "sst2", "train.jsonl").is_file():
        raise SystemExit(f"--data-root {args.data_root!r} must hold sst2/train.jsonl (or set PROMPTLAB_DATA)")
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    T.quiet_third_party_noise()


def plan(args: argparse.Namespace, *overrides: str):
    """(config, promptlab's Plan) for ``promptlab-train <overrides>`` on the benchmark's model and data."""
    base = [f"model={args.model}", "logger=none", f"paths.data_root={args.data_root}"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*base, *overrides])
    return cfg, T.plan(cfg)


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS, so the next phase's peak starts low."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class Phase:
    """Times one phase and records its peak resident memory (VmHWM, reset at entry) and the load average."""

    def __init__(self, name: str):
        self.name, self.memory, self.record = name, PeakMemory(), {"phase": name}

    def __enter__(self) -> Phase:
        release_memory()
        print(f"[{time.strftime('%H:%M:%S')}] {self.name} ...", flush=True)
        self.record["load_start"] = round(os.getloadavg()[0], 2)
        self.memory.reset()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.record.update(wall_seconds=round(time.perf_counter() - self.start, 2),
                           peak_rss_mb=round(self.memory.peak_rss_mb()), load_end=round(os.getloadavg()[0], 2))
        if exc[0] is not None:
            print(f"    failed: {exc[0].__name__}", flush=True)
            return
        rate = self.record.get("examples_per_second")
        print(f"    {f'{rate:.2f} ex/s, ' if rate else ''}peak RSS {self.record['peak_rss_mb']} MB", flush=True)


def naive_loss(model: torch.nn.Module, pad_id: int, batch: dict) -> torch.Tensor:
    """The plain PyTorch objective: the model's own LM loss on prompt + gold answer (full-vocabulary logits at
    every position), as a training loop written without promptlab would compute it."""
    prompts = batch["prompt_ids"]
    answers = [list(cs[int(y)]) for cs, y in zip(batch["choice_ids"], batch["labels"], strict=True)]
    ids, mask = pad([list(p) + a for p, a in zip(prompts, answers, strict=True)], pad_id, torch.device("cpu"))
    targets = torch.full_like(ids, -100)
    for i, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        targets[i, len(p): len(p) + len(a)] = torch.tensor(a)
    return model(input_ids=ids, attention_mask=mask, labels=targets, use_cache=False).loss


def naive_scores(model: torch.nn.Module, pad_id: int, prompts: Sequence[Sequence[int]],
                 choices: Sequence[Sequence[Sequence[int]]]) -> torch.Tensor:
    """Plain PyTorch choice scores: full logits at every position of a right-padded batch, log-softmax over the
    vocabulary, the answer tokens' log-probabilities summed and normalised over the answers. Single-token
    answers shared by every example: one sequence per example; otherwise one per (example, answer)."""
    single = all(list(c) == list(choices[0]) for c in choices) and all(len(t) == 1 for t in choices[0])
    pairs = [(i, c) for i, cs in enumerate(choices) for c in range(len(cs))]
    seqs = [list(p) for p in prompts] if single else [list(prompts[i]) + list(choices[i][c]) for i, c in pairs]
    ids, mask = pad(seqs, pad_id, torch.device("cpu"))
    logp = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float().log_softmax(-1)
    if single:
        last = torch.tensor([len(p) - 1 for p in prompts])
        return logp[torch.arange(len(prompts)), last][:, [t[0] for t in choices[0]]].log_softmax(-1)
    out = torch.full((len(prompts), max(len(cs) for cs in choices)), -torch.inf)
    for s, (i, c) in enumerate(pairs):
        out[i, c] = sum(logp[s, len(prompts[i]) - 1 + j, tok] for j, tok in enumerate(choices[i][c]))
    return out.log_softmax(-1)


def write(result: dict, out: str | Path) -> None:
    """The figures with the date, machine (CPU, threads, load average), versions and commit, as JSON."""
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine_info(),
              "versions": versions(), "git_commit": git_commit(REPO), **result}
    write_json_atomic(Path(out), result)
    print(f"wrote {out}")
