"""notebooks/analysis.ipynb runs top to bottom against synthetic run records (PROMPTLAB_RUNS_DIR)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from promptlab.schema import Machine, MethodInfo, RunResult

nbformat = pytest.importorskip("nbformat", reason="dev dependency: pip install -e '.[dev]'")
nbclient = pytest.importorskip("nbclient", reason="dev dependency: pip install -e '.[dev]'")
pytest.importorskip("ipykernel", reason="dev dependency: pip install -e '.[dev]'")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "analysis.ipynb"


INFO = {"zero_shot": MethodInfo("zero_shot", "prompting", "Zero-shot", "nothing (manual prompt)", False),
        "prompt_tuning": MethodInfo("prompt_tuning", "prompt_tuning", "Prompt tuning", "soft prompt", True),
        "full_finetune": MethodInfo("full_finetune", "full_finetune", "Full fine-tuning", "all", True)}


def write_run(root: Path, method: str, seed: int, acc: float, trainable: int, train_seconds: float) -> None:
    """A completed schema-2 run (accuracy primary) with its predictions."""
    run_dir = root / f"{seed}_{method}_sst2_s{seed}"
    run_dir.mkdir(parents=True)
    n_correct = round(acc * 50)
    rec = RunResult(
        run_id=run_dir.name, status="completed", kind="train", method=method, method_info=INFO[method],
        model="tiny_random", dataset="sst2", output_type="choice", primary_metric="accuracy",
        higher_is_better=True, chance=0.5, seed=seed, k_shot=16, train_size=None, template_id=0, num_demos=0,
        eval_split="validation", config_hash="0" * 16, git_commit=None, versions={},
        started_at="2026-11-23T20:59:00",
        machine=Machine("node1", "Intel Xeon", 2, 2, None, [0.3, 0.2, 0.1], [0.9, 0.4, 0.2]),
        metrics={"accuracy": n_correct / 50, "macro_f1": n_correct / 50},
        costs={"trainable_params": trainable, "total_params": 34080, "trainable_fraction": trainable / 34080,
               "train_seconds": train_seconds, "train_examples_per_second": 20.0 if trainable else None,
               "peak_rss_mb": 600.0, "peak_rss_reset_per_run": True, "peak_gpu_mb": None,
               "checkpoint_bytes": 4 * trainable},
        num_train_examples=32 if trainable else 0, finished_at="2026-11-23T21:00:00")
    (run_dir / "result.json").write_text(json.dumps(rec.to_dict()))
    preds = [{"idx": i, "label": 1, "pred": int(i < n_correct), "pred_name": "x", "log_probs": [0, 0],
              "score": float(i < n_correct)} for i in range(50)]
    (run_dir / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))


def test_analysis_notebook_executes(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    for seed, acc in enumerate([0.5, 0.6, 0.7]):
        write_run(runs, "zero_shot", seed, 0.5, 0, 0.0)
        write_run(runs, "prompt_tuning", seed, acc, 640, 1.5)
        write_run(runs, "full_finetune", seed, acc + 0.2, 34080, 4.0)
    monkeypatch.setenv("PROMPTLAB_RUNS_DIR", str(runs))

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()

    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/markdown", "")) for o in outputs)
    assert f"9 run records under {runs}" in text
    assert "| Method" in text and "60.0 ± 10.0" in text  # the comparison table
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the main figure, accuracy vs time (and whatever else applies)
    assert "Intel Xeon (2 cores), 1-min load 0.3–0.9" in text  # the table caption names the machine
