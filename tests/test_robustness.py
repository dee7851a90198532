"""What a user's mistakes and signals do: bad values fail first with one message, a sweep directory is never
overwritten by another configuration nor run twice, SIGINT/SIGTERM leave an ``interrupted`` record and a
non-zero exit, records carry a heartbeat and can be read by others.

The CLI is driven in-process (``promptlab.train.main`` with ``sys.argv`` set, Hydra's logging off): the same
code path as ``promptlab-train``, without a subprocess's ~8 s of imports.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import EVAL_TEXT_FROM, read_result, sst2_rows, write_jsonl

import promptlab.run
import promptlab.run.execute
import promptlab.run.planning
import promptlab.train
from promptlab import signals, sweep
from promptlab.errors import ConfigError
from promptlab.models import check_hub_id
from promptlab.schema import is_stale
from promptlab.tracking import FILE_MODE, RunRecord, effective_wandb_mode, run_lock, wandb_reachable


@pytest.fixture
def no_model(monkeypatch):
    """A config error must be reported before the model loads."""
    monkeypatch.setattr(promptlab.run.execute, "load_backbone", lambda *a, **k: pytest.fail("the model loaded"))


def send(signum: int) -> None:
    """Deliver ``signum`` to this process, but only while promptlab's handler is in place (else it would
    kill pytest)."""
    handler = signal.getsignal(signum)  # ours, or Lightning's compose of its own and ours (during fit/predict)
    assert handler is signals._handler or signals._handler in getattr(handler, "signal_handlers", [])
    os.kill(os.getpid(), signum)


def signal_during(monkeypatch, target: object, name: str, signum: int) -> None:
    """Patch ``target.name`` to send ``signum`` to this process, then do its job."""
    real = getattr(target, name)

    def wrapper(*args, **kwargs):
        send(signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, wrapper)


def cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """``promptlab-train *args`` in this process: (exit code, stderr)."""
    flags = [a for a in args if a.startswith("-")]  # argparse wants -m before the overrides
    argv = ["promptlab-train", *flags, "model=tiny_random", "logger=none", "data.k_shot=2", "eval_batch_size=8",
            *(a for a in args if a not in flags), "hydra/job_logging=none", "hydra/hydra_logging=none"]
    monkeypatch.setattr(sys, "argv", argv)
    try:
        promptlab.train.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


# ------------------------------------------------------------------------------- typed settings, first


@pytest.mark.parametrize(("overrides", "match"), [
    (("seed=abc",), "seed='abc'"),
    (("seed=-1",), "seed=-1"),
    (("eval_batch_size=0",), "eval_batch_size=0"),
    (("num_threads=-2",), "num_threads=-2"),
    (("skip_completed=maybe",), "skip_completed"),
    (("data.eval_limit=abc",), "data.eval_limit='abc'"),
    (("data.max_prompt_tokens=0",), "data.max_prompt_tokens"),
    (("+data.max_target_tokens=abc",), "data.max_target_tokens"),
    (("data.dev_size=1.5",), "data.dev_size"),
    (("logger=wandb", "logger.wandb.mode=bogus"), "logger.wandb.mode='bogus'"),
    (("method.lr=abc",), "method.lr='abc'"),  # prompt_tuning (below)
    (("method.lr=-1",), "method.lr=-1"),
    (("model=hub", "model.hub_id=/nonexistent/promptlab-model"), "local path that does not exist"),
    (("model.dtype=float33",), "model.dtype"),
])
def test_bad_values_fail_first_with_a_record(make_cfg, run_dir, no_model, overrides, match):
    method = "prompt_tuning" if overrides[0].startswith("method.") else "zero_shot"
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=match) as err:
        promptlab.run.run(make_cfg(*overrides, method=method), run_dir)
    assert time.perf_counter() - start < 5  # one message, not a stall (well under a second when idle)
    assert err.value.fix and "\n" not in err.value.problem
    result = read_result(run_dir)
    assert result["status"] == "failed" and result["error"].startswith("ConfigError: ")
    assert result["finished_at"] and result["pid"] == os.getpid()


def test_hub_id_folder_without_a_model_is_named(make_cfg, run_dir, tmp_path, no_model):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "notes.txt").write_text("weights went elsewhere")
    with pytest.raises(ConfigError, match=f"{folder} is not a model folder: it lacks config.json, weights"):
        promptlab.run.run(make_cfg("model=hub", f"model.hub_id={folder}"), run_dir)
    check_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct")  # a Hub id is not taken for a path


def test_runs_dir_that_cannot_be_written(make_cfg, tmp_path, no_model):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot write"):
        promptlab.run.run(make_cfg(), blocker / "run")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_read_only_runs_dir(make_cfg, tmp_path, no_model):
    runs = tmp_path / "runs"
    runs.mkdir()
    runs.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="Permission denied"):
            promptlab.run.run(make_cfg(), runs / "run")
    finally:
        runs.chmod(0o700)


def test_cli_runs_dir_that_cannot_be_written(monkeypatch, capsys, data_root, tmp_path, no_model):
    monkeypatch.setattr(promptlab.run.planning, "load_task", lambda *a, **k: pytest.fail("data loaded"))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for mode in ((), ("-m", "seed=1,2")):
        code, err = cli(monkeypatch, capsys, *mode, f"paths.data_root={data_root}", "data.dev_size=8", f"paths.runs_dir={blocker}")
        assert code == 2, err
        assert "promptlab: error: cannot write the output directory" in err and "fix: set paths.runs_dir" in err
        assert "Traceback" not in err


def write_sst2(root: Path, train: list[dict], validation: list[dict] | None = None) -> Path:
    write_jsonl(root / "sst2" / "train.jsonl", train)
    write_jsonl(root / "sst2" / "validation.jsonl", validation or sst2_rows(3, text_from=EVAL_TEXT_FROM))
    return root


def test_class_without_training_examples_gets_a_real_fix(make_cfg, run_dir, tmp_path, no_model):
    root = write_sst2(tmp_path / "data", [r for r in sst2_rows(12) if r["label"] == 1])
    with pytest.raises(ConfigError, match="class 0 has no training examples") as err:
        promptlab.run.run(make_cfg(f"paths.data_root={root}", method="few_shot"), run_dir)
    assert "<= 0" not in err.value.fix and "train_size" in err.value.fix


def test_non_utf8_data_is_one_message(make_cfg, run_dir, tmp_path, no_model):
    root = write_sst2(tmp_path / "data", sst2_rows(6))
    (root / "sst2" / "validation.jsonl").write_bytes(b'{"idx": 0, "sentence": "caf\xe9 cr\xe8me", "label": 1}\n')
    with pytest.raises(ConfigError, match="UTF-8") as err:
        promptlab.run.run(make_cfg(f"paths.data_root={root}"), run_dir)
    assert "validation.jsonl" in err.value.problem


def test_repeated_idx_never_gives_two_predictions_one_idx(make_cfg, run_dir, tmp_path):
    validation = sst2_rows(3, text_from=EVAL_TEXT_FROM)
    validation[4]["idx"] = 0  # a repeat of row 0's id (string ids: test_tasks.py)
    root = write_sst2(tmp_path / "data", sst2_rows(10), validation)
    result = promptlab.run.run(make_cfg(f"paths.data_root={root}"), run_dir)
    assert result["status"] == "completed"
    ids = [json.loads(line)["idx"] for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert ids == list(range(6))  # every row's position, as for data without an idx column


# ----------------------------------------------------------------------------------------------- wandb


def test_wandb_not_importable_logs_without_it(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with caplog.at_level("WARNING", logger="promptlab"):
        assert effective_wandb_mode("offline") == "disabled"
    assert len(caplog.records) == 1 and "wandb cannot be imported" in caplog.text


def test_wandb_online_without_network_falls_back_fast(monkeypatch, caplog):
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # auto -> online
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    start = time.perf_counter()
    with caplog.at_level("WARNING", logger="promptlab"):
        assert effective_wandb_mode("auto") == "offline"
    assert time.perf_counter() - start < 5
    assert len(caplog.records) == 1 and "127.0.0.1:9 cannot be reached" in caplog.text
    assert not wandb_reachable()


# ------------------------------------------------------------------------------ record: files, heartbeat


def test_records_and_predictions_are_readable_by_others(make_cfg, run_dir):
    umask = os.umask(0o022)
    os.umask(umask)
    assert (0o666 & ~umask) == FILE_MODE  # as open() would create them; mkstemp alone gives 0600
    promptlab.run.run(make_cfg(), run_dir)
    for name in ("result.json", "predictions.jsonl"):
        assert stat.S_IMODE((run_dir / name).stat().st_mode) == FILE_MODE, name


def test_heartbeat_runs_until_the_last_write(make_cfg, tmp_path):
    record = RunRecord(tmp_path / "r", make_cfg(), "run-1")
    first = read_result(tmp_path / "r")
    assert first["pid"] == os.getpid() and first["host"] and first["heartbeat_at"]
    record.start_heartbeat(every=0.01)
    deadline = time.monotonic() + 5
    while read_result(tmp_path / "r")["heartbeat_at"] == first["heartbeat_at"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert read_result(tmp_path / "r")["heartbeat_at"] > first["heartbeat_at"]
    record.complete({"accuracy": 1.0}, {})
    done = read_result(tmp_path / "r")
    time.sleep(0.1)  # ten more beats, had the thread not stopped
    assert read_result(tmp_path / "r") == done and done["status"] == "completed"
    assert done["heartbeat_at"] == done["finished_at"]
    assert not [t for t in threading.enumerate() if t.name == "promptlab-heartbeat"]


def test_stale_heartbeat_means_a_dead_run():
    now = datetime.now(timezone.utc)
    running = {"status": "running", "heartbeat_at": now.isoformat()}
    assert not is_stale(running, now + timedelta(seconds=60))
    assert is_stale(running, now + timedelta(minutes=10))
    assert not is_stale({**running, "status": "completed"}, now + timedelta(minutes=10))
    assert not is_stale({"status": "running"}, now)  # written before heartbeats existed


def test_last_record_is_final(make_cfg, tmp_path):
    record = RunRecord(tmp_path / "r", make_cfg(), "run-1")
    record.complete({"accuracy": 1.0}, {})
    record.fail(RuntimeError("late"))  # e.g. a signal right after completion
    assert read_result(tmp_path / "r")["status"] == "completed"


# --------------------------------------------------------------------------------------------- signals


@pytest.mark.parametrize(("signum", "target", "name", "method", "phase"), [
    (signal.SIGTERM, promptlab.run.planning, "load_task", "zero_shot", "loading data"),
    (signal.SIGTERM, promptlab.run.execute.PromptModule, "training_step", "prompt_tuning", "training"),
    (signal.SIGINT, promptlab.run.execute.PromptModule, "predict_step", "zero_shot", "evaluation"),
])
def test_signal_in_any_phase_records_interrupted(make_cfg, run_dir, monkeypatch, signum, target, name, method,
                                                 phase):
    before = signal.getsignal(signum)
    signal_during(monkeypatch, target, name, signum)
    with pytest.raises(signals.Interrupted) as err:
        promptlab.run.run(make_cfg(method=method), run_dir)
    assert err.value.exit_code == 128 + signum
    result = read_result(run_dir)
    assert result["status"] == "interrupted"
    assert result["error"] == f"Interrupted: {signal.Signals(signum).name} during {phase}"
    assert signal.getsignal(signum) is before  # run() gives the caller its handlers back


def test_lightning_sigterm_exception_counts_as_interrupted(make_cfg, tmp_path):
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    record = RunRecord(tmp_path / "r", make_cfg(), "run-1")
    record.fail(SIGTERMException())
    assert read_result(tmp_path / "r")["status"] == "interrupted"
    assert read_result(tmp_path / "r")["error"] == "Interrupted: SIGTERM during setup"


def test_signal_during_a_deferred_block_is_raised_after_it():
    with signals.handling(), pytest.raises(signals.Interrupted), signals.deferred():
        send(signal.SIGTERM)
        done = True  # reached: the write this block stands for finished
    assert done


def test_cli_single_run_sigterm_exits_143(monkeypatch, capsys, data_root, tmp_path):
    signal_during(monkeypatch, promptlab.run.planning, "load_task", signal.SIGTERM)
    code, err = cli(monkeypatch, capsys, f"paths.data_root={data_root}", "data.dev_size=8", f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 143, err
    assert read_result(tmp_path / "run")["status"] == "interrupted"
    assert "interrupted by SIGTERM" in err


def test_cli_sweep_stops_at_a_signal_and_says_what_did_not_run(monkeypatch, capsys, data_root, tmp_path):
    signal_during(monkeypatch, promptlab.run.planning, "load_task", signal.SIGINT)
    code, err = cli(monkeypatch, capsys, "-m", "seed=1,2,3", f"paths.data_root={data_root}", "data.dev_size=8",
                    f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert code == 130, err
    assert [p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir() and p.name[0] != "."] \
        == ["0_zero_shot_sst2_s1"]  # the other members never started
    assert read_result(tmp_path / "sweep" / "0_zero_shot_sst2_s1")["status"] == "interrupted"
    assert "1 interrupted" in err and "stopped by SIGINT: 2 of 3 members were not run" in err


# ---------------------------------------------------------------------------------- sweep directory reuse


def test_sweep_dir_reuse_never_replaces_another_configs_record(monkeypatch, capsys, data_root, tmp_path):
    args = ("-m", "seed=1,2", f"paths.data_root={data_root}", "data.dev_size=8", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    code, err = cli(monkeypatch, capsys, *args, "data.template=0")
    assert code == 0, err
    assert "promptlab: sweep" in err and "2 completed" in err
    member = tmp_path / "sweep" / "0_zero_shot_sst2_s1"
    before = (member / "result.json").read_bytes(), (member / "predictions.jsonl").read_bytes()

    monkeypatch.setattr(promptlab.run.execute, "load_backbone", lambda *a, **k: pytest.fail("the model loaded"))
    code, err = cli(monkeypatch, capsys, *args, "data.template=1")
    assert code == 1, err
    assert ((member / "result.json").read_bytes(), (member / "predictions.jsonl").read_bytes()) == before
    assert "another configuration completed here" in err and "hydra.sweep.dir" in err
    assert f"  refused: {member}: ConfigError:" in err and "2 refused" in err

    code, err = cli(monkeypatch, capsys, *args, "data.template=0")  # the same config again: skipped
    assert code == 0, err
    assert "2 skipped" in err


def test_member_locked_by_another_process_is_not_run_twice(monkeypatch, capsys, data_root, tmp_path, no_model):
    member = tmp_path / "sweep" / "0_zero_shot_sst2_s1"
    member.mkdir(parents=True)
    with run_lock(member) as mine:  # held as another sweep of the same command would hold it
        assert mine
        code, err = cli(monkeypatch, capsys, "-m", "seed=1", f"paths.data_root={data_root}", "data.dev_size=8",
                        f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert code == 0, err
    assert not (member / "result.json").exists()
    assert "1 running elsewhere" in err
    with run_lock(member) as mine:  # released with the holder
        assert mine


def test_config_error_in_a_sweep_dir_that_holds_another_config(make_cfg, tmp_path, capsys, no_model):
    """A single run with a fixed hydra.run.dir: ConfigError (exit 2), the other record kept."""
    run_dir = tmp_path / "run"
    RunRecord(run_dir, make_cfg("seed=5"), "old").complete({"accuracy": 1.0}, {})
    before = (run_dir / "result.json").read_bytes()
    with pytest.raises(SystemExit) as exc:
        promptlab.train.run_locked(make_cfg("seed=6"), run_dir, None)
    assert exc.value.code == 2
    assert (run_dir / "result.json").read_bytes() == before
    err = capsys.readouterr().err
    assert "another configuration completed here" in err and "delete that member directory" in err


def test_sweep_summary_reads_only_this_sweeps_records(tmp_path, make_cfg, capsys):
    old = RunRecord(tmp_path / "0_old", make_cfg(), "old")
    old.fail(RuntimeError("from an earlier sweep"))
    state = sweep.SweepState(tmp_path, datetime.now(timezone.utc))
    new = RunRecord(tmp_path / "1_new", make_cfg(), "new")
    new.fail(RuntimeError("boom\nsecond line"))
    assert sweep.report(state) == 1
    err = capsys.readouterr().err
    assert f"promptlab: sweep {tmp_path}: 1 failed\n  failed: {tmp_path / '1_new'}: RuntimeError: boom\n" == err


def test_full_disk_is_one_message_not_a_traceback(monkeypatch, capsys, data_root, tmp_path):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(promptlab.tracking.files, "_write_atomic", full)
    code, err = cli(monkeypatch, capsys, f"paths.data_root={data_root}", "data.dev_size=8", f"hydra.run.dir={tmp_path / 'r'}")
    assert code == 1
    assert "promptlab: error: No space left on device" in err and "fix: free space" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("value", ["abc", "-1", "nan"])
def test_bad_progress_interval_is_a_config_error(make_cfg, run_dir, no_model, monkeypatch, value):
    monkeypatch.setenv("PROMPTLAB_PROGRESS_EVERY", value)
    with pytest.raises(ConfigError, match="PROMPTLAB_PROGRESS_EVERY"):
        promptlab.run.run(make_cfg(), run_dir)


@pytest.mark.parametrize(("override", "match"), [
    ("method=lora", "cannot change method= of a saved run"), ("model=tiny_random", "cannot change model="),
    ("search=templates", "cannot change search="), ("foo=bar", "foo is not a key of the run's config"),
    ("evalbatch_size=4", "evalbatch_size is not a key"), ("data=bogus", "data=bogus is not one of conf/data/"),
    ("logger=nope", "logger=nope is not one of conf/logger/"),
])
def test_promptlab_eval_refuses_what_would_evaluate_something_else_or_nothing(make_cfg, override, match):
    """Each was a raw traceback, or silently ignored, before: one message with a fix."""
    from promptlab.eval import apply_overrides

    with pytest.raises(ConfigError, match=match) as err:
        apply_overrides(make_cfg(), [override])
    assert err.value.fix
    if override == "evalbatch_size=4":
        assert "eval_batch_size" in err.value.fix


def test_promptlab_eval_swaps_the_logger_and_trainer_groups(make_cfg):
    from promptlab.eval import apply_overrides

    cfg = apply_overrides(make_cfg(), ["logger=csv", "trainer.precision=32-true", "+data.note=x"])
    assert "csv" in cfg.logger and cfg.trainer.precision == "32-true" and cfg.data.note == "x"


def test_a_report_over_an_eval_record_of_an_untrained_task_is_written(make_cfg, tmp_path, capsys):
    """promptlab-eval run=... data=rte, then promptlab-report: the rte row has no training cost to plot."""
    from promptlab.eval import run_eval
    from promptlab.report.cli import main as report_main

    root = tmp_path / "runs"
    cfg = make_cfg()
    promptlab.run.run(cfg, root / "zs")
    run_eval(root / "zs", ["data=rte", f"paths.data_root={cfg.paths.data_root}", "data.dev_size=8"])
    assert report_main([str(root), "--bootstrap", "50"]) == 0
    assert (root / "report" / "index.html").is_file() and "rte" in (root / "report" / "table.md").read_text()
    assert report_main([str(root), "--out", str(tmp_path / "a-file" / "report")]) == 0  # created
    (tmp_path / "blocker").write_text("")
    assert report_main([str(root), "--out", str(tmp_path / "blocker" / "report")]) == 2
    assert "cannot write the report to" in capsys.readouterr().err
    assert report_main([str(tmp_path / "nowhere")]) == 2 and not (tmp_path / "nowhere").exists()


def test_promptlab_eval_refuses_another_backbone_unless_asked(make_cfg, tmp_path):
    """Same shape, other weights: a soft prompt would be read by a model it was not trained for."""
    from promptlab.eval import run_eval

    cfg = make_cfg(method="prompt_tuning")
    promptlab.run.run(cfg, tmp_path / "pt")
    with pytest.raises(ConfigError, match=r"not the one the run trained on \(init_seed: 0 then, 1 now\)") as err:
        run_eval(tmp_path / "pt", ["model.init_seed=1"])
    assert "allow_other_model=true" in err.value.fix
    with pytest.raises(ConfigError, match="allow_other_model=yes is not true or false"):
        run_eval(tmp_path / "pt", ["model.init_seed=1", "allow_other_model=yes"])
    record, _ = run_eval(tmp_path / "pt", ["model.init_seed=1", "allow_other_model=true"])
    assert record["status"] == "completed" and record["allow_other_model"] is True
    assert record["provenance"]["model"]["init_seed"] == 1
    assert run_eval(tmp_path / "pt", [])[0]["allow_other_model"] is False
