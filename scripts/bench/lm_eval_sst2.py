"""SST-2 zero-/few-shot choice scoring: promptlab against lm-evaluation-harness, same rows, prompt and model.

    python scripts/bench/lm_eval_sst2.py --data-root ../shared/data \
        --lm-eval-python /work/scratch/lmeval/.venv/bin/python --threads 2 --out results/lm_eval_sst2.json

lm-eval (``lm_eval.simple_evaluate``, HFLM) runs in its own venv (``--lm-eval-python`` re-runs this file there
with ``--worker``); promptlab (Encoder + ChoiceReadout, batches longest first) runs here, after it, so the two
never compute at once. Rows: promptlab's ``data.eval_limit=N`` subset (``--rows first``: the first N). Prompt:
template 0 with the system prompt, through the chat template; 4-shot: promptlab's own seed-0 draw of class-
balanced demonstrations, shown as user/assistant turns (lm-eval: ``sampler: first_n`` over a JSONL holding
exactly them). Both tools' token ids are compared per example and answer. Timings exclude model loading
(reported apart): ``eval_s`` is the whole evaluation (lm-eval: ``simple_evaluate``, i.e. building requests,
scoring, metrics; promptlab: encoding and scoring), ``score_s`` only the scoring (lm-eval: ``loglikelihood``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TASK = "sst2_promptlab"


def lm_eval_task(workdir: Path, template: str, choices: list[str], rows: list[dict], demos: list[dict]) -> Path:
    """Write the eval and few-shot JSONL files and the task YAML (JSON is YAML) lm-eval loads; returns its folder."""
    (workdir / "tasks").mkdir(parents=True, exist_ok=True)
    for name, data in (("eval", rows), ("fewshot", demos)):
        with open(workdir / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps({k: r[k] for k in ("idx", "sentence", "label")}) + "\n" for r in data)
    task = {  # promptlab's render() strips each value: so does `| trim`
        "task": TASK, "dataset_path": "json", "output_type": "multiple_choice",
        "dataset_kwargs": {"data_files": {"validation": str(workdir / "eval.jsonl"),
                                          "train": str(workdir / "fewshot.jsonl")}},
        "test_split": "validation", "fewshot_split": "train", "fewshot_config": {"sampler": "first_n"},
        "doc_to_text": template.replace("{sentence}", "{{sentence | trim}}"), "doc_to_choice": choices,
        "doc_to_target": "label", "target_delimiter": "", "fewshot_delimiter": "",
        "metric_list": [{"metric": "acc"}], "metadata": {"version": 1},
    }
    (workdir / "tasks" / f"{TASK}.yaml").write_text(json.dumps(task, indent=2))
    return workdir / "tasks"


def worker(cfg: dict) -> None:
    """In lm-eval's venv: load HFLM once, evaluate each shot count, dump accuracy, timings and token ids."""
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    torch.set_num_threads(cfg["threads"])
    start = time.perf_counter()
    bf16 = cfg["precision"] == "bf16"  # promptlab's bf16: fp32 weights under autocast, fp32 log-softmax
    lm = HFLM(pretrained=cfg["model"], device="cpu", dtype="float32", batch_size=cfg["batch_size"],
              mixed_precision_dtype="bfloat16" if bf16 else None, softmax_dtype="float32")
    out = {"load_s": time.perf_counter() - start, "torch_threads": torch.get_num_threads(), "runs": [],
           "versions": {p: version(p) for p in ("lm_eval", "torch", "transformers", "tokenizers", "datasets")}}
    score_s = []
    loglikelihood = lm.loglikelihood

    def timed(*a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        res = loglikelihood(*a, **k)
        score_s.append(time.perf_counter() - t)
        return res

    lm.loglikelihood = timed  # the model's part of the evaluation (requests built, scores computed)
    tasks = TaskManager(include_path=cfg["task_dir"], include_defaults=False)
    for shots in cfg["shots"]:
        score_s.clear()
        t = time.perf_counter()
        res = simple_evaluate(model=lm, tasks=[TASK], num_fewshot=shots, task_manager=tasks, log_samples=True,
                              apply_chat_template=True, fewshot_as_multiturn=True, bootstrap_iters=0,
                              system_instruction=cfg["system_prompt"])
        eval_s = time.perf_counter() - t
        samples = [{"idx": s["doc"]["idx"], "label": s["target"], "loglik": [r[0] for r in s["filtered_resps"]],
                    "args": [list(a) for a in s["arguments"]],
                    "ids": [lm._encode_pair(*a) for a in s["arguments"]]} for s in res["samples"][TASK]]
        out["runs"].append({"shots": shots, "accuracy": res["results"][TASK]["acc,none"], "eval_s": eval_s,
                            "score_s": sum(score_s), "samples": samples})
    Path(cfg["out"]).write_text(json.dumps(out))


def run_lm_eval(args: argparse.Namespace, env: dict, task_dir: Path, system_prompt: str, workdir: Path,
                model_dir: Path) -> dict:
    """Run ``worker`` in lm-eval's venv (a subprocess with the same thread settings); its JSON."""
    cfg = {"threads": args.threads, "precision": args.precision, "batch_size": args.batch_size, "shots": [0, 4],
           "model": str(model_dir), "task_dir": str(task_dir), "system_prompt": system_prompt,
           "out": str(workdir / "lm_eval_out.json")}
    (workdir / "worker.json").write_text(json.dumps(cfg))
    subprocess.run([args.lm_eval_python, __file__, "--worker", str(workdir / "worker.json")], env=env, check=True)
    return json.loads((workdir / "lm_eval_out.json").read_text())


def run_promptlab(args: argparse.Namespace, shots: int, rows: list[dict], demos: list[tuple[str, str]],
                  backbone: Any, spec: Any) -> dict:
    """promptlab's own encoding and scoring (Encoder, eval_items' longest-first order, ChoiceReadout)."""
    import torch

    from promptlab.data import eval_items, eval_loader
    from promptlab.prompts import Encoder
    from promptlab.readout import ChoiceReadout

    model, tok = backbone.model.eval(), backbone.tokenizer
    readout, preds = ChoiceReadout(tok.pad_token_id), []
    t = time.perf_counter()
    items = eval_items(Encoder(tok, spec, demos if shots else ()), rows)
    t_score = time.perf_counter()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
        for batch in eval_loader(items, args.batch_size):
            preds += readout.predict(model, batch)
    end = time.perf_counter()
    return {"shots": shots, "accuracy": sum(p["pred"] == p["label"] for p in preds) / len(preds),
            "eval_s": end - t, "score_s": end - t_score, "items": items, "preds": preds}


def compare(lm: dict, pl: dict, tok: Any) -> dict:
    """Token ids of each (prompt + answer) in both tools, predictions, and the answers' normalised log-probs."""
    import torch

    items = {x["idx"]: x for x in pl["items"]}
    preds = {p["idx"]: p for p in pl["preds"]}
    same = moved = agree = 0
    diff = 0.0
    for s in lm["samples"]:
        x, p = items[s["idx"]], preds[s["idx"]]
        same += all(c + a == x["prompt_ids"] + y for (c, a), y in zip(s["ids"], x["choice_ids"], strict=True))
        moved += all(c == x["prompt_ids"][:-1] for c, _ in s["ids"])  # lm-eval: trailing "\n" -> continuation
        lp = torch.tensor(s["loglik"]).log_softmax(-1)
        agree += int(lp.argmax()) == p["pred"]
        diff = max(diff, float((lp - torch.tensor(p["log_probs"])).abs().max()))
    first = lm["samples"][0]
    (ctx, cont), (ctx_ids, cont_ids) = first["args"][0], first["ids"][0]
    return {"examples": len(lm["samples"]), "prompt_and_answer_ids_identical": same,
            "context_is_prompt_minus_last_token": moved, "predictions_agree": agree, "max_abs_logprob_diff": diff,
            "example": {"idx": first["idx"], "lm_eval_context": ctx, "lm_eval_continuation": cont,
                        "lm_eval_continuation_tokens": [tok.decode([i]) for i in cont_ids],
                        "promptlab_prompt": tok.decode(items[first["idx"]]["prompt_ids"]),
                        "lm_eval_context_tokens": len(ctx_ids),
                        "promptlab_prompt_tokens": len(items[first["idx"]]["prompt_ids"])}}


def machine(threads: int) -> dict:
    """CPU model, core count, load average, git commit of this checkout."""
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    cpu = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")), "?")
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "python": platform.python_version(),
            "promptlab_commit": commit, "load_before": os.getloadavg()}


def main() -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--lm-eval-python", default="/work/scratch/lmeval/.venv/bin/python")
    p.add_argument("--data-root", default=os.environ.get("PROMPTLAB_DATA"))
    p.add_argument("--examples", type=int, default=400)
    p.add_argument("--rows", choices=("eval_limit", "first"), default="eval_limit",
                   help="promptlab's seeded data.eval_limit subset, or the split's first N rows")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast, both tools")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workdir", type=Path, default=None, help="task YAML, JSONL, raw outputs (default: a temp dir)")
    p.add_argument("--out", type=Path, default=REPO / "results" / "lm_eval_sst2.json")
    args = p.parse_args()
    if args.worker:
        return worker(json.loads(Path(args.worker).read_text()))
    env = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    os.environ.update(env)  # before torch is imported
    import torch
    from hydra import compose, initialize_config_dir

    import promptlab.run.execute as T
    from promptlab.config import CONFIG_DIR
    from promptlab.models import load_backbone

    torch.set_num_threads(args.threads)
    info = machine(args.threads)
    overrides = ["model=smollm2_135m", "data=sst2", "method=few_shot", "method.num_demos=4", "logger=none",
                 f"data.eval_limit={args.examples if args.rows == 'eval_limit' else 'null'}"]
    overrides += [f"paths.data_root={args.data_root}"] if args.data_root else []
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    plan = T.plan(cfg)
    model_dir = Path(cfg.paths.cache_dir).expanduser() / "models" / cfg.model.name  # the converted bundled model
    if not (model_dir / "model.safetensors").is_file():
        raise SystemExit(f"{model_dir} has no model.safetensors: run promptlab once (it converts the bundled GGUF)")
    spec, rows = plan.spec, plan.task.eval[: args.examples]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lm_eval_sst2_"))
    task_dir = lm_eval_task(workdir, spec.prompt_template, list(spec.choices), rows, plan.demos)
    lm = run_lm_eval(args, {**os.environ, **env}, task_dir, spec.system_prompt, workdir, model_dir)
    backbone = load_backbone(cfg.model, cfg.paths.cache_dir)  # loads model_dir (converted on first use)
    demos = [plan.method.demo(spec, r) for r in plan.demos]
    results, checks = [], {}
    for run in lm["runs"]:
        pl = run_promptlab(args, run["shots"], rows, demos, backbone, spec)
        checks[f"{run['shots']}-shot"] = compare(run, pl, backbone.tokenizer)
        checks[f"{run['shots']}-shot"]["promptlab_speedup"] = {k: run[k] / pl[k] for k in ("eval_s", "score_s")}
        for tool, r in (("lm-eval", run), ("promptlab", pl)):
            results.append({"tool": tool, "shots": r["shots"], "accuracy": r["accuracy"], "eval_s": r["eval_s"],
                            "score_s": r["score_s"], "examples_per_s": len(rows) / r["eval_s"]})
    info.update(load_after=os.getloadavg(), torch_threads=torch.get_num_threads(), lm_eval_threads=lm["torch_threads"])
    record = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "machine": info,
              "versions": {"lm_eval_venv": lm["versions"], "promptlab_venv": {
                  p: version(p) for p in ("torch", "transformers", "tokenizers", "datasets")}},
              "setup": {"examples": len(rows), "rows": args.rows, "batch_size": args.batch_size,
                        "precision": args.precision, "demo_idx": [r["idx"] for r in plan.demos],
                        "eval_idx": [r["idx"] for r in rows], "workdir": str(workdir)},
              "load_s": {"lm-eval": lm["load_s"], "promptlab": backbone.load_seconds},
              "results": results, "checks": checks}
    print(f"\n{'tool':<10} {'shots':>5} {'acc %':>6} {'eval s':>7} {'ex/s':>6} {'score s':>8}")
    for r in results:
        print(f"{r['tool']:<10} {r['shots']:>5} {100 * r['accuracy']:>6.2f} {r['eval_s']:>7.1f} "
              f"{r['examples_per_s']:>6.1f} {r['score_s']:>8.1f}")
    for name, c in checks.items():
        print(f"{name}: ids identical {c['prompt_and_answer_ids_identical']}/{c['examples']}, predictions agree "
              f"{c['predictions_agree']}/{c['examples']}, max |d log p| {c['max_abs_logprob_diff']:.2e}, "
              f"promptlab speed-up x{c['promptlab_speedup']['eval_s']:.2f} (scoring x{c['promptlab_speedup']['score_s']:.2f})")
        e = c["example"]
        print(f"  idx {e['idx']}: lm-eval context == promptlab prompt (decoded): "
              f"{e['lm_eval_context'] == e['promptlab_prompt']}; lm-eval continuation tokens "
              f"{e['lm_eval_continuation_tokens']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    print(f"wrote {args.out} (lm-eval files in {workdir})")
    return record


if __name__ == "__main__":
    main()
