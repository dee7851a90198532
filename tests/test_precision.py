"""trainer.precision=auto: bf16 autocast only where the hardware computes bf16 natively."""

from __future__ import annotations

import logging

import pytest
import torch

from promptlab.errors import ConfigError
from promptlab.models import precision
from promptlab.models.precision import cpu_flags  # the real one: conftest makes the module's say "no bf16"

ZEN3 = {"fpu", "avx2", "avx512f"}  # AVX-512 without the BF16 extension
ZEN4 = ZEN3 | {"avx512_bf16"}


def test_cpu_flags_read_x86_and_arm_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512_bf16\n\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    assert cpu_flags(x86) == {"fpu", "avx2", "avx512_bf16"}
    assert precision.cpu_has_bf16(cpu_flags(arm))
    assert cpu_flags(tmp_path / "missing") == set()


def test_auto_is_fp32_on_a_cpu_without_bf16_and_bf16_mixed_with_it():
    assert precision.resolve("auto", "cpu", flags=ZEN3) == "32-true"
    assert precision.resolve("auto", "cpu", flags=ZEN4) == "bf16-mixed"
    assert precision.resolve("auto", "cpu", flags=ZEN3 | {"amx_bf16"}) == "bf16-mixed"


def test_auto_reads_this_machines_flags(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: set(ZEN3))
    assert precision.resolve("auto") == "32-true"
    monkeypatch.setattr(precision, "cpu_flags", lambda: set(ZEN4))
    assert precision.resolve("auto") == "bf16-mixed"


def test_auto_on_a_gpu_asks_torch(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)  # e.g. a V100
    assert precision.resolve("auto", "gpu", flags=ZEN4) == "32-true"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert precision.resolve("auto", "gpu", flags=ZEN3) == "bf16-mixed"


def test_explicit_values_pass_and_bf16_without_hardware_warns(caplog):
    assert precision.resolve("32-true", "cpu", flags=ZEN4) == "32-true"
    with caplog.at_level(logging.WARNING, logger="promptlab"):
        assert precision.resolve("bf16-mixed", "cpu", flags=ZEN3) == "bf16-mixed"
    assert "without native bf16" in caplog.text


def test_lightnings_short_forms_are_accepted():
    assert precision.resolve(32, "cpu", flags=ZEN4) == "32-true"
    assert precision.resolve("bf16", "cpu", flags=ZEN4) == "bf16-mixed"


@pytest.mark.parametrize("bad", ["fp32", "half", 8, None])
def test_unknown_precision_is_one_config_error(bad):
    with pytest.raises(ConfigError, match="trainer.precision") as err:
        precision.resolve(bad)
    assert "auto" in err.value.fix


@pytest.mark.parametrize("method", ["prompt_tuning", "lora", "dora", "full_finetune"])
def test_a_bf16_run_trains_and_scores_like_fp32_within_bf16_rounding(make_cfg, tmp_path, method):
    from conftest import read_predictions, read_result

    import promptlab.run

    records = {}
    for p in ("32-true", "bf16-mixed"):
        cfg = make_cfg(f"trainer.precision={p}", method=method)
        promptlab.run.run(cfg, tmp_path / p)
        records[p] = read_result(tmp_path / p)
        assert records[p]["status"] == "completed" and records[p]["provenance"]["precision"] == p
    fp32, bf16 = (torch.tensor([r["log_probs"] for r in read_predictions(tmp_path / p)]) for p in records)
    assert not torch.equal(fp32, bf16)  # it did run in bf16
    torch.testing.assert_close(bf16, fp32, atol=0.05, rtol=0)  # bf16 keeps 8 bits of mantissa


def test_bf16_weights_cast_once_score_as_autocast_does_and_are_put_back(tiny_backbone):
    from test_scoring import MULTI, make_prompts, shared

    from promptlab.readout import ChoiceReadout

    model, tok = tiny_backbone.model.eval(), tiny_backbone.tokenizer
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    prompts, choices = make_prompts(tok), shared(tok, MULTI)
    readout = ChoiceReadout(tok.pad_token_id)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        per_forward = readout.scores(model, prompts, choices)
        with precision.bf16_linear_weights(model):
            assert model.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
            assert model.get_output_embeddings().weight.dtype == torch.float32  # tied to the input embedding
            once = readout.scores(model, prompts, choices)
    torch.testing.assert_close(once, per_forward, atol=0, rtol=0)
    for n, p in model.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(p, before[n]), n


def test_fitting_casts_only_the_frozen_weights(tiny_backbone):
    model = tiny_backbone.model.requires_grad_(False)
    trained = model.model.layers[0].self_attn.q_proj.weight.requires_grad_(True)
    with precision.bf16_linear_weights(model, frozen_only=True):
        assert trained.dtype == torch.float32
        assert model.model.layers[0].self_attn.k_proj.weight.dtype == torch.bfloat16
    assert model.model.layers[0].self_attn.k_proj.weight.dtype == torch.float32
