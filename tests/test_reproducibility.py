"""Results do not depend on how evaluation is batched, nor on anything but the config and seed."""

from __future__ import annotations

import pytest
from conftest import read_predictions, write_jsonl
from omegaconf import OmegaConf, open_dict
from test_generation import GEN_TASK, qa_rows
from test_tasks import COPA_LIKE, copa_rows

import promptlab.run


def runs_with_batch_sizes(cfg, tmp_path, sizes=(1, 3, 16)) -> list[list[dict]]:
    out = []
    for size in sizes:
        with open_dict(cfg):
            cfg.eval_batch_size = size
        promptlab.run.run(cfg, tmp_path / f"b{size}")
        out.append(read_predictions(tmp_path / f"b{size}"))
    return out


def assert_same(a: list[dict], b: list[dict], tol: float = 1e-5) -> None:
    assert [r["idx"] for r in a] == [r["idx"] for r in b]
    for x, y in zip(a, b, strict=True):
        assert x.get("pred") == y.get("pred") and x.get("generation") == y.get("generation")
        assert x["score"] == y["score"]
        for p, q in zip(x.get("log_probs", []), y.get("log_probs", []), strict=True):
            assert p == pytest.approx(q, abs=tol)


# (method, task config or None for the default SST-2 fixture, its folder, rows for (train, eval))
CASES = {
    "choice": ("few_shot", None, None, None),
    "per-example multi-token choices": ("zero_shot", COPA_LIKE, "tinycopa", (copa_rows(14), copa_rows(7, 500))),
    "generation": ("zero_shot_cot", GEN_TASK, "tinyqa", (qa_rows(22)[7:], qa_rows(7))),
}


@pytest.mark.parametrize("case", CASES)
def test_predictions_do_not_depend_on_the_eval_batch(make_cfg, data_root, tmp_path, case):
    method, task, folder, rows = CASES[case]
    cfg = make_cfg(method=method)
    if task:
        write_jsonl(data_root / folder / "train.jsonl", rows[0])
        write_jsonl(data_root / folder / f"{task['eval_split']}.jsonl", rows[1])
        with open_dict(cfg):
            cfg.data = OmegaConf.create(task)
    first, *rest = runs_with_batch_sizes(cfg, tmp_path)
    for other in rest:
        assert_same(first, other)


def test_record_holds_what_reproducing_the_run_needs(make_cfg, data_root, run_dir):
    import hashlib
    import json

    promptlab.run.run(make_cfg(method="few_shot"), run_dir)
    rec = json.loads((run_dir / "result.json").read_text())
    prov = rec["provenance"]
    assert prov["seeds"] == {"run": 0, "budget": 0, "demos": 1, "train_order": 0, "dev_split": [1234, 0],
                              "eval_subset": 0}
    for split, file in (("train", "train.jsonl"), ("validation", "validation.jsonl")):
        digest = hashlib.sha256((data_root / "sst2" / file).read_bytes()).hexdigest()[:16]
        assert prov["data"][split] == f"{file} sha256:{digest}"
    assert prov["model"] == {"source": "tiny_random", "path": prov["model"]["path"], "init_seed": 0,
                             "quantization": "none"}
    assert rec["git_dirty"] in (True, False, None) and "git_commit" in rec


def test_local_model_weights_are_hashed_once(tmp_path):
    from omegaconf import OmegaConf

    from promptlab.models import Backbone, fingerprint

    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights")
    backbone = Backbone(model=type("M", (), {"config": object()})(), tokenizer=None, path=str(tmp_path),
                        load_seconds=0.0, from_cache=True)
    cfg = OmegaConf.create({"source": "bundled_gguf"})
    (tmp_path / "quantization.txt").write_text("GGUF MOSTLY_Q4_1 (Q4_1 x210)\n")  # read from the GGUF once
    assert fingerprint(cfg, backbone)["quantization"] == "GGUF MOSTLY_Q4_1 (Q4_1 x210), dequantised to float32"
    first = fingerprint(cfg, backbone)["weights_sha256"]
    assert first == __import__("hashlib").sha256(b"weights").hexdigest()[:16]
    assert (tmp_path / ".model.safetensors.sha256").exists()
    assert fingerprint(cfg, backbone)["weights_sha256"] == first
