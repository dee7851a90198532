"""Fault campaign: the failure cases users reported, run for real on the tiny model, as a table of
case / expected / observed. Nothing is mocked: each case runs the ``promptlab-train`` / ``promptlab-report``
commands in subprocesses, sends real signals, corrupts real files.

    python scripts/fault_campaign.py --data-root ../shared/data [--out results/fault_campaign.json]

Exit status 0 when every case behaved as expected, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

TINY = ["model=tiny_random", "data.eval_limit=16", "data.k_shot=4", "logger=none", "num_threads=1"]


@dataclass
class Case:
    name: str
    expected: str
    observed: str = ""
    ok: bool = False


def train(args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    flags = [a for a in args if a == "-m"]  # Hydra's parser wants -m before the overrides
    return subprocess.run([sys.executable, "-m", "promptlab.train", *flags, *TINY, *(a for a in args if a != "-m")],
                          env=env, capture_output=True, text=True, timeout=timeout)


def record(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "result.json").read_text())
    except (OSError, ValueError) as err:
        return {"status": f"unreadable ({type(err).__name__})"}


def last_line(text: str) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return lines[-1][:160] if lines else ""


def signal_during_training(sig: signal.Signals, env: dict, work: Path) -> Case:
    """Send a signal once training has started; expect an `interrupted` record and a non-zero exit."""
    run_dir = work / f"sig_{sig.name}"
    code = 128 + sig.value
    case = Case(f"{sig.name} during training", f"record 'interrupted', exit {code}")
    proc = subprocess.Popen([sys.executable, "-m", "promptlab.train", *TINY, "method=prompt_tuning",
                             "method.max_steps=400", f"hydra.run.dir={run_dir}"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (run_dir / "result.json").exists():
        time.sleep(0.2)
    time.sleep(4.0)  # into the training loop
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    status = record(run_dir).get("status")
    case.observed = f"record '{status}', exit {proc.returncode}"
    case.ok = status == "interrupted" and proc.returncode == code
    return case


def kill9_leaves_a_stale_heartbeat(env: dict, work: Path) -> Case:
    run_dir = work / "kill9"
    case = Case("SIGKILL during training", "record 'running' with pid and heartbeat; the pid is gone afterwards")
    proc = subprocess.Popen([sys.executable, "-m", "promptlab.train", *TINY, "method=prompt_tuning",
                             "method.max_steps=400", f"hydra.run.dir={run_dir}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (run_dir / "result.json").exists():
        time.sleep(0.2)
    time.sleep(4.0)
    proc.kill()
    proc.wait()
    rec = record(run_dir)
    pid = rec.get("pid")
    alive = pid is not None and Path(f"/proc/{pid}").exists()
    case.observed = f"record '{rec.get('status')}', pid {pid} alive={alive}, heartbeat_at={rec.get('heartbeat_at')}"
    case.ok = rec.get("status") == "running" and pid is not None and not alive and bool(rec.get("heartbeat_at"))
    return case


def predictions(run_dir: Path) -> list:
    try:
        rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    except (OSError, ValueError):
        return []
    return [(r["idx"], r.get("log_probs")) for r in rows]


def wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int) -> None:
    """Block until the run's plain progress log has passed optimiser step ``step`` (or the process ended)."""
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        log = (run_dir / "train.log").read_text() if (run_dir / "train.log").exists() else ""
        done = [int(x.split("/")[0]) for x in log.split("train step ")[1:]]
        if done and max(done) >= step:
            return
        time.sleep(0.1)


RESUME = ["method=prompt_tuning", "method.max_steps=200", "method.batch_size=2", "data.k_shot=8",
          "checkpoint_every_n_steps=5"]


def stop_then_resume(how: str, env: dict, work: Path, rng: random.Random) -> Case:
    """Stop a training run at a random step (SIGTERM, or kill -9), run the same command again: it must
    continue from its checkpoint to the predictions of a run that was never stopped."""
    whole, stopped = work / f"resume_whole_{how}", work / f"resume_{how}"
    at = rng.randint(3, 150)
    case = Case(f"{how} at step ~{at}, then the same command again",
                "resumes from the last checkpoint; predictions identical to an uninterrupted run; exit 0")
    train([*RESUME, f"hydra.run.dir={whole}"], env)
    # a progress line per step, so the stop lands near `at`
    env = {**env, "PROMPTLAB_PROGRESS_EVERY": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "promptlab.train", *TINY, *RESUME, f"hydra.run.dir={stopped}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_step(proc, stopped, at)
    proc.send_signal(signal.SIGTERM if how == "SIGTERM" else signal.SIGKILL)
    proc.wait(timeout=120)
    first = record(stopped).get("status")
    res = train([*RESUME, f"hydra.run.dir={stopped}"], env)
    rec = record(stopped)
    steps = [r["from_step"] for r in rec.get("resumes", [])]
    same = bool(predictions(whole)) and predictions(stopped) == predictions(whole)
    case.observed = (f"first attempt '{first}' (exit {proc.returncode}); second exit {res.returncode}, "
                     f"'{rec.get('status')}', resumed from step {steps}, predictions identical={same}")
    case.ok = res.returncode == 0 and rec.get("status") == "completed" and len(steps) == 1 and same
    return case


def interrupted_sweep_rerun(env: dict, work: Path) -> Case:
    """SIGTERM a sweep in its second member, run it again: the first is skipped, the second resumed."""
    sweep = work / "sweep_resume"
    case = Case("sweep stopped by SIGTERM, then run again", "member 0 skipped, member 1 resumed, both completed, exit 0")
    args = ["-m", *RESUME, "seed=1,2", f"hydra.sweep.dir={sweep}"]
    env = {**env, "PROMPTLAB_PROGRESS_EVERY": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "promptlab.train", "-m", *TINY, *args[1:]], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list(sweep.glob("1_*/train.log")):
        time.sleep(0.1)
    member = next(iter(sweep.glob("1_*")), sweep)
    wait_for_step(proc, member, 12)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    res = train(args, env)
    members = sorted(d for d in sweep.iterdir() if d.is_dir() and not d.name.startswith("."))
    statuses = [record(d).get("status") for d in members]
    resumed = [len(record(d).get("resumes", [])) for d in members]
    case.observed = f"first exit {proc.returncode}; again: exit {res.returncode}, statuses {statuses}, resumes {resumed}"
    case.ok = res.returncode == 0 and statuses == ["completed", "completed"] and resumed == [0, 1]
    return case


def full_disk(env: dict, work: Path) -> Case:
    """A runs dir on a small tmpfs, filled up after one run completed there: the next run fails naming the
    cause, and neither record is torn (the completed one is untouched)."""
    case = Case("disk full (a 1 MB tmpfs, filled)", "clear error, non-zero exit; no torn result.json, the earlier "
                "record intact")
    mount = work / "tiny_disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        case.observed, case.ok = "not run: mounting a tmpfs is not permitted here", True
        return case
    try:
        trained = ["method=prompt_tuning", "method.max_steps=3", f"paths.runs_dir={mount}"]
        train([*trained, f"hydra.run.dir={mount / 'earlier'}"], env)
        with open(mount / "filler", "wb") as f:  # leave 16 KB: the next run's first writes fit, later ones not
            free = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
            f.write(b"\0" * max(free - 16 * 1024, 0))
        res = train([*trained, f"hydra.run.dir={mount / 'r'}"], env)
        states = {}
        for name in ("earlier", "r"):
            path = mount / name / "result.json"
            try:
                states[name] = json.loads(path.read_text()).get("status") if path.exists() else "no record"
            except ValueError:
                states[name] = "TORN"
        said = "No space left on device" in res.stderr + res.stdout
        case.observed = f"exit {res.returncode}, records {states}, says 'No space left on device'={said}"
        case.ok = res.returncode != 0 and states["earlier"] == "completed" and states["r"] != "TORN" and said
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)
    return case


def ddp_two_processes(env: dict, work: Path) -> Case:
    case = Case("trainer=ddp_cpu (2 processes) vs 1 process", "one record, same predictions, same metrics")
    one, two = work / "ddp_one", work / "ddp_two"
    train(["method=few_shot", f"hydra.run.dir={one}"], env)
    res = train(["method=few_shot", "trainer=ddp_cpu", f"hydra.run.dir={two}"], env)
    preds_one, preds_two = predictions(one), predictions(two)
    same = [i for i, _ in preds_one] == [i for i, _ in preds_two] and all(
        abs(x - y) <= 1e-5 for (_, a), (_, b) in zip(preds_one, preds_two, strict=True) for x, y in zip(a, b, strict=True))
    records = len(list(two.rglob("result.json")))
    m1, m2 = record(one).get("metrics"), record(two).get("metrics")
    case.observed = f"exit {res.returncode}, {records} record(s), predictions same={same}, metrics {m2} vs {m1}"
    case.ok = res.returncode == 0 and records == 1 and same and m1 == m2
    return case


def sweep_with_a_failing_member(env: dict, work: Path) -> Case:
    sweep = work / "sweep_fail"
    case = Case("sweep with a failing member", "other members complete; summary names the failure; exit 1")
    res = train(["-m", "method=zero_shot,prompt_tuning", "++method.peft.num_virtual_tokens=0",
                 f"hydra.sweep.dir={sweep}"], env)
    statuses = sorted(record(d).get("status", "?") for d in sweep.iterdir() if d.is_dir() and not d.name.startswith("."))
    case.observed = f"statuses {statuses}, exit {res.returncode}, last line: {last_line(res.stdout + res.stderr)}"
    case.ok = statuses == ["completed", "failed"] and res.returncode == 1
    return case


def reused_sweep_dir(env: dict, work: Path) -> Case:
    sweep = work / "sweep_reuse"
    case = Case("sweep dir reused with a changed override", "the completed template-0 record is kept")
    train(["-m", "data.template=0", f"hydra.sweep.dir={sweep}"], env)
    first = {d.name: record(d).get("config_hash") for d in sweep.iterdir() if (d / "result.json").exists()}
    res = train(["-m", "data.template=1", f"hydra.sweep.dir={sweep}"], env)
    after = {d.name: record(d).get("config_hash") for d in sweep.iterdir() if (d / "result.json").exists()}
    kept = all(after.get(k) == v for k, v in first.items())
    case.observed = f"kept={kept}, exit {res.returncode}, last line: {last_line(res.stdout + res.stderr)}"
    case.ok = kept and res.returncode != 0
    return case


def overlapping_sweeps(env: dict, work: Path) -> Case:
    sweep = work / "sweep_overlap"
    case = Case("two identical sweeps started together", "each member runs once")
    args = [sys.executable, "-m", "promptlab.train", "-m", *TINY, "method=prompt_tuning", "method.max_steps=20",
            "seed=1,2", f"hydra.sweep.dir={sweep}"]
    procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    finished = sum(o.count("prompt_tuning on sst2:") for o in outs)
    case.observed = f"{finished} member runs finished in all (2 members), exits {[p.returncode for p in procs]}"
    case.ok = finished == 2
    return case


def corrupt_records_in_report(env: dict, work: Path) -> Case:
    runs = work / "corrupt"
    case = Case("corrupt and truncated records", "report succeeds and lists each unreadable record")
    train([f"hydra.run.dir={runs / 'good'}"], env)
    (runs / "truncated").mkdir(parents=True)
    good = (runs / "good" / "result.json").read_text()
    (runs / "truncated" / "result.json").write_text(good[: len(good) // 2])
    (runs / "garbage").mkdir()
    (runs / "garbage" / "result.json").write_bytes(b"\xff\xfe not json")
    res = subprocess.run([sys.executable, "-c", "from promptlab.report import main; raise SystemExit(main())",
                          str(runs)], env=env, capture_output=True, text=True, timeout=300)
    table = (runs / "report" / "table.md").read_text() if (runs / "report" / "table.md").exists() else ""
    listed = table.count("truncated") >= 1 and table.count("garbage") >= 1
    case.observed = f"exit {res.returncode}, both listed={listed}"
    case.ok = res.returncode == 0 and listed
    return case


def bad_values(env: dict, work: Path) -> list[Case]:
    """Values that used to be silently reinterpreted: each must be exit 2 with a cause and a fix."""
    cases = []
    plain = ["data.k_shot=0", "data.k_shot=1.5", "data.eval_limit=-3", "data.eval_limit=0", "method.max_steps=0",
             "method.max_steps=-1", "data.max_prompt_tokens=0", "seed=abc", "eval_batch_size=0", "num_threads=-2",
             "logger=wandb", "method.lr=abc", "+method.num_virtual_tokens=5", "+evalbatchsize=4"]
    # (method, override): PEFT fields PEFT itself would take (any string as a true bool, a zero size)
    named = [("lora", "+method.peft.use_dora=no"), ("prefix_tuning", "method.peft.prefix_projection=maybe"),
             ("lora", "method.peft.lora_alpha=abc"), ("p_tuning", "method.peft.encoder_hidden_size=0"),
             ("multitask_prompt_tuning", "method.peft.num_ranks=0")]
    # a zero-shot method given demonstrations (ran Auto-CoT demos recorded as zero-shot); sampling mistakes
    named += [("zero_shot_cot", "method.num_demos=2"), ("self_consistency", "method.sampling.temperature=0"),
              ("self_consistency", "method.filters=[]")]
    # the typed method and model schemas: a key another method type reads, a bool that is no bool, a dtype
    named += [("lora", "+method.trigger=Think."), ("lora", "method.gradient_checkpointing=maybe"),
              ("zero_shot", "model.dtype=float33")]
    for name, override in [(None, o) for o in plain] + named:
        extra = ["logger.wandb.mode=bogus"] if override == "logger=wandb" else []
        method = f"method={name or ('prompt_tuning' if override.startswith('method.') else 'zero_shot')}"
        res = train([method, override, *extra, f"hydra.run.dir={work / ('bad_' + override.replace('=', '_'))}"], env)
        err = res.stderr.strip().splitlines()
        clear = res.returncode == 2 and any(line.strip().startswith("fix:") for line in err)
        shown = " ".join([*([method] if name else []), override, *extra])
        cases.append(Case(f"bad value {shown}", "exit 2, a cause and a fix",
                          f"exit {res.returncode}: {last_line(res.stderr)}", clear))
    return cases


CASES: list[Callable[[dict, Path], Case | list[Case]]] = [
    bad_values, sweep_with_a_failing_member, reused_sweep_dir, overlapping_sweeps, corrupt_records_in_report,
    lambda env, work: signal_during_training(signal.SIGTERM, env, work),
    lambda env, work: signal_during_training(signal.SIGINT, env, work),
    kill9_leaves_a_stale_heartbeat,
    lambda env, work: stop_then_resume("SIGTERM", env, work, RNG),
    lambda env, work: stop_then_resume("SIGKILL", env, work, RNG),
    interrupted_sweep_rerun, full_disk, ddp_two_processes,
]
RNG = random.Random(int(os.environ.get("FAULT_SEED", "0")))  # the random stop steps; FAULT_SEED varies them


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=os.environ.get("PROMPTLAB_DATA"), required=False)
    parser.add_argument("--out", help="also write the table as JSON here")
    args = parser.parse_args()
    if not args.data_root:
        parser.error("pass --data-root (the folder holding sst2/ ...) or set PROMPTLAB_DATA")
    work = Path(tempfile.mkdtemp(prefix="promptlab-faults-"))
    env = {**os.environ, "PROMPTLAB_DATA": str(Path(args.data_root).resolve()), "PROMPTLAB_CACHE": str(work / "cache"),
           "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    results: list[Case] = []
    for make in CASES:
        try:
            out = make(env, work)
        except Exception as err:  # a case that cannot even run is a failed case, not a crashed campaign
            out = Case(getattr(make, "__name__", "case"), "runs", f"{type(err).__name__}: {err}", False)
        for case in out if isinstance(out, list) else [out]:
            results.append(case)
            print(f"{'ok  ' if case.ok else 'FAIL'} | {case.name} | expected: {case.expected} | observed: {case.observed}",
                  flush=True)
    print(f"{sum(c.ok for c in results)} passed, {sum(not c.ok for c in results)} failed")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps([asdict(c) for c in results], indent=2))
    return 0 if all(c.ok for c in results) else 1


if __name__ == "__main__":
    sys.exit(main())
