"""Calibration of choice scores (contextual, batch): the maths by hand, the run's metrics from its own
predictions, the report column beside the raw score, and bad settings refused before the model loads."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import read_predictions
from omegaconf import OmegaConf, open_dict
from test_generation import GEN_TASK

import promptlab.run
import promptlab.run.execute
from promptlab.errors import ConfigError
from promptlab.evaluation.calibration import CONTENT_FREE, calibrated_scores, content_free_rows, prior
from promptlab.report import load_runs, summarize
from promptlab.report.tables import display_table, readout_table

P = np.array([[0.9, 0.1], [0.6, 0.4], [0.7, 0.3]])


def test_batch_prior_and_scores_by_hand():
    lp = np.log(P) - 3.0  # unnormalised (as answer log-probs are): only the normalised distribution counts
    assert prior(lp) == pytest.approx([2.2 / 3, 0.8 / 3])
    scores = calibrated_scores(lp, prior(lp))
    assert scores == pytest.approx(np.log(P / np.array([2.2 / 3, 0.8 / 3])))
    assert scores.argmax(axis=1).tolist() == [0, 1, 1]  # raw argmax: [0, 0, 0]


def test_contextual_prior_is_the_mean_over_content_free_inputs():
    free = np.log(np.array([[0.8, 0.2], [0.6, 0.4], [0.7, 0.3]]))
    assert prior(free) == pytest.approx([0.7, 0.3])
    assert calibrated_scores(np.log(P), prior(free)).argmax(axis=1).tolist() == [0, 1, 0]


def test_content_free_rows_blank_every_template_field():
    rows = content_free_rows({"idx": 4, "sentence": "great", "label": 1}, {"sentence"})
    assert [r["sentence"] for r in rows] == list(CONTENT_FREE)
    assert all(r["label"] == 1 for r in rows) and len({r["idx"] for r in rows}) == len(rows)


def test_run_reports_calibrated_metrics_beside_raw_ones(make_cfg, run_dir, tmp_path):
    result = promptlab.run.run(make_cfg("calibration=[contextual,batch]", method="few_shot"), run_dir)
    metrics = result["metrics"]
    assert {"accuracy", "accuracy@contextual", "accuracy@batch", "macro_f1@batch"} <= set(metrics)
    rows = read_predictions(run_dir)
    lp, labels = np.array([r["log_probs"] for r in rows]), np.array([r["label"] for r in rows])
    batch = calibrated_scores(lp, prior(lp)).argmax(axis=1)
    assert [r["pred@batch"] for r in rows] == batch.tolist()
    assert metrics["accuracy@batch"] == pytest.approx(float((batch == labels).mean()))
    assert metrics["accuracy"] == pytest.approx(float((lp.argmax(axis=1) == labels).mean()))  # raw unchanged

    summary = summarize(load_runs(tmp_path))
    head = result["headline"]
    # one seed: an interval over the examples alone
    assert display_table(summary)["Accuracy (%)"].iloc[0].startswith(f"{100 * metrics[head['metric']]:.1f} [")
    assert display_table(summary)["Readout (on dev)"].iloc[0] == head["readout"]
    table = readout_table(summary)  # every readout beside the headline, the chosen one marked
    assert {"raw", "per_token", "per_char", "per_byte", "contextual", "batch"} <= set(table.columns)
    assert table["batch"].iloc[0].startswith(f"{100 * metrics['accuracy@batch']:.1f} [")
    assert table[head["readout"]].iloc[0].endswith(" ✓")


@pytest.mark.parametrize("value", ["[bogus]", "[batch,batch]"])
def test_bad_calibration_is_a_config_error(make_cfg, run_dir, monkeypatch, value):
    monkeypatch.setattr(promptlab.run.execute, "load_backbone", lambda *a, **k: pytest.fail("the model loaded"))
    with pytest.raises(ConfigError, match="calibration"):
        promptlab.run.run(make_cfg(f"calibration={value}"), run_dir)


def test_calibration_on_a_generation_task_is_refused(make_cfg, run_dir, monkeypatch):
    monkeypatch.setattr(promptlab.run.execute, "load_backbone", lambda *a, **k: pytest.fail("the model loaded"))
    cfg = make_cfg("calibration=[batch]")
    with open_dict(cfg):
        cfg.data = OmegaConf.create(GEN_TASK)
    with pytest.raises(ConfigError, match="needs a choice task"):
        promptlab.run.run(cfg, run_dir)


@pytest.mark.parametrize("value", ["5", "0", "true", "''"])
def test_calibration_that_is_not_a_list_of_names_is_refused(make_cfg, run_dir, monkeypatch, value):
    monkeypatch.setattr(promptlab.run.execute, "load_backbone", lambda *a, **k: pytest.fail("the model loaded"))
    with pytest.raises(ConfigError, match="calibration"):
        promptlab.run.run(make_cfg(f"calibration={value}"), run_dir)
