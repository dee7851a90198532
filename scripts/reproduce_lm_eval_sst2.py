"""lm-evaluation-harness's own ``sst2`` task reproduced with promptlab: the harness's shipped task YAML (its prompt,
answer words and ``acc``) on the bundled model, against ``promptlab-train data=sst2_lm_eval
model.chat_template=none``, zero-shot, on the whole validation split (872 rows), both in fp32.

    python scripts/reproduce_lm_eval_sst2.py --lm-eval-python /work/scratch/lmeval/.venv/bin/python \
        --out docs/measurements/lm_eval_sst2_reproduction.json

The harness runs in its own venv (``--lm-eval-python`` re-runs this file there with ``--worker``); its shipped
``glue/sst2/default.yaml`` is ``include``d by a two-line task that only points its dataset at the local JSONL
(the Hub is unreachable here). Prints both accuracies, how many predictions agree, how many (prompt, answer)
token-id sequences are identical, and the largest difference between the two tools' answer log-likelihoods.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def worker(cfg: dict) -> None:
    """In the harness's venv: its sst2 task, zero-shot, HFLM in fp32; per-sample requests and log-likelihoods."""
    import lm_eval
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    torch.set_num_threads(cfg["threads"])
    shipped = Path(lm_eval.__file__).parent / "tasks" / "glue" / "sst2" / "default.yaml"
    task_dir = Path(cfg["workdir"]) / "tasks"
    task_dir.mkdir(parents=True, exist_ok=True)
    (task_dir / "sst2_local.yaml").write_text(json.dumps({
        "include": str(shipped), "task": "sst2_local", "tag": [], "dataset_path": "json", "dataset_name": None,
        "dataset_kwargs": {"data_files": {"train": cfg["train"], "validation": cfg["validation"]}}}))
    lm = HFLM(pretrained=cfg["model"], device="cpu", dtype="float32", batch_size=cfg["batch_size"])
    start = time.perf_counter()
    res = simple_evaluate(model=lm, tasks=["sst2_local"], num_fewshot=0, log_samples=True, bootstrap_iters=0,
                          task_manager=TaskManager(include_path=str(task_dir), include_defaults=False))
    samples = [{"idx": s["doc"]["idx"], "label": s["target"], "loglik": [r[0] for r in s["filtered_resps"]],
                "ids": [[*lm._encode_pair(*a)] for a in s["arguments"]]} for s in res["samples"]["sst2_local"]]
    Path(cfg["out"]).write_text(json.dumps({
        "accuracy": res["results"]["sst2_local"]["acc,none"], "seconds": time.perf_counter() - start,
        "shipped_task": shipped.read_text(), "lm_eval_version": lm_eval.__version__, "samples": samples}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--lm-eval-python", default="/work/scratch/lmeval/.venv/bin/python")
    p.add_argument("--data-root", default=os.environ.get("PROMPTLAB_DATA"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", type=Path, default=REPO / "results" / "lm_eval_sst2_reproduction.json")
    args = p.parse_args()
    if args.worker:
        return worker(json.loads(Path(args.worker).read_text()))
    import torch
    from hydra import compose, initialize_config_dir

    import promptlab.run.execute as T
    from promptlab.config import CONFIG_DIR
    from promptlab.models import load_backbone

    torch.set_num_threads(args.threads)
    overrides = ["model=smollm2_135m", "data=sst2_lm_eval", "model.chat_template=none", "method=zero_shot",
                 "select_readout=false", "trainer.precision=32-true", "logger=none", "data.dev_size=8",
                 f"eval_batch_size={args.batch_size}", f"paths.data_root={args.data_root}"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    load_backbone(cfg.model, cfg.paths.cache_dir)  # converts the bundled GGUF once, if not yet
    model_dir = Path(cfg.paths.cache_dir).expanduser() / "models" / cfg.model.name
    workdir = Path(tempfile.mkdtemp(prefix="lm_eval_sst2_"))
    load = os.getloadavg()
    started = datetime.datetime.now().isoformat(timespec="seconds")
    job = {"threads": args.threads, "batch_size": args.batch_size, "model": str(model_dir), "workdir": str(workdir),
           "train": str(Path(args.data_root) / "sst2" / "train.jsonl"), "out": str(workdir / "lm_eval.json"),
           "validation": str(Path(args.data_root) / "sst2" / "validation.jsonl")}
    (workdir / "job.json").write_text(json.dumps(job))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run([args.lm_eval_python, __file__, "--worker", str(workdir / "job.json")], env=env, check=True)
    harness = json.loads((workdir / "lm_eval.json").read_text())

    start = time.perf_counter()
    record = T.run(cfg, workdir / "promptlab_run")
    seconds = time.perf_counter() - start
    preds = {r["idx"]: r for r in map(json.loads, (workdir / "promptlab_run" / "predictions.jsonl").open())}
    backbone = load_backbone(cfg.model, cfg.paths.cache_dir)
    task = T.plan(cfg)
    encoder = task.method.encoder(backbone, task.spec, [])
    rows = {r["idx"]: r for r in task.task.eval}
    agree = same_ids = 0
    worst = 0.0
    for s in harness["samples"]:
        mine = preds[s["idx"]]
        agree += max(range(2), key=lambda c: s["loglik"][c]) == mine["pred"]
        worst = max(worst, max(abs(a - b) for a, b in zip(s["loglik"], mine["answer_logprobs"], strict=True)))
        item = encoder.item(rows[s["idx"]], train=False)
        same_ids += all(ctx == item["prompt_ids"] and cont == ids
                        for (ctx, cont), ids in zip(s["ids"], item["choice_ids"], strict=True))
    out = {
        "date": started, "load_average_before": load, "load_average_after": os.getloadavg(),
        "threads": args.threads, "precision": "fp32 (both)", "examples": len(harness["samples"]),
        "lm_eval": {"version": harness["lm_eval_version"], "accuracy": harness["accuracy"],
                    "seconds": round(harness["seconds"], 1), "shipped_task": harness["shipped_task"]},
        "promptlab": {"accuracy": record["metrics"]["accuracy"], "accuracy@per_char (acc_norm)":
                      record["metrics"]["accuracy@per_char"], "seconds": round(seconds, 1),
                      "command": "promptlab-train " + " ".join(o for o in overrides if not o.startswith("paths."))},
        "difference_points": round(100 * (record["metrics"]["accuracy"] - harness["accuracy"]), 2),
        "predictions_agree": agree, "prompt_and_answer_ids_identical": same_ids,
        "max_abs_loglikelihood_diff": worst,
        "example_prompt": backbone.tokenizer.decode(encoder.item(next(iter(rows.values())), train=False)["prompt_ids"]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps({k: v for k, v in out.items() if k != "lm_eval"}, indent=2))
    print(f"lm-evaluation-harness {out['lm_eval']['version']}: acc {100 * harness['accuracy']:.2f}; promptlab: "
          f"{100 * record['metrics']['accuracy']:.2f} ({out['difference_points']:+.2f} points)")


if __name__ == "__main__":
    main()
