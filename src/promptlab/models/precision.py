"""Numeric precision: ``trainer.precision=auto`` picks bf16 autocast where the hardware computes bf16 natively
and fp32 elsewhere; any Lightning precision string can also be given.

bf16 without hardware support is many times *slower* than fp32 on CPU (pytorch #86270, #146508: the
matmuls fall back to emulation), so ``auto`` looks at the CPU's flags rather than trusting that bf16 is
always faster. Lightning's ``bf16-mixed`` is ``torch.autocast``: weights and optimiser state stay fp32,
matmuls run in bf16, and the readouts project onto answer tokens in fp32 (``readout.model.project``).
"""

from __future__ import annotations

import contextlib
import logging
import platform
from collections.abc import Iterator
from pathlib import Path

import torch

from promptlab.errors import ConfigError

log = logging.getLogger("promptlab")

AUTO = "auto"
# Lightning's own names (lightning.fabric.utilities.types._PRECISION_INPUT_STR); the rest are not for CPU.
KNOWN = ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")
ALIASES = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true"}  # Lightning's short forms
# x86: AVX512-BF16 (Cooper Lake, Zen 4 and later) or AMX; Arm: the BF16 extension (Neoverse V1/N2, Graviton3).
BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags (x86 ``flags``, Arm ``Features``); empty where /proc/cpuinfo does not exist."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_has_bf16(flags: set[str] | None = None) -> bool:
    return bool(BF16_CPU_FLAGS & (cpu_flags() if flags is None else flags))


def uses_gpu(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def resolve(requested: object, accelerator: str = "cpu", flags: set[str] | None = None) -> str:
    """The Lightning precision string for ``trainer.precision`` on this machine; ConfigError if unknown."""
    value = ALIASES.get(str(requested), str(requested))
    if value not in (AUTO, *KNOWN):
        raise ConfigError(f"trainer.precision={requested!r} is not a precision promptlab knows",
                          f"use trainer.precision=auto (bf16 where the hardware has it, else fp32) or one of "
                          f"{', '.join(KNOWN)}")
    gpu = uses_gpu(accelerator)
    native = (torch.cuda.is_available() and torch.cuda.is_bf16_supported()) if gpu else cpu_has_bf16(flags)
    if value == AUTO:
        return "bf16-mixed" if native else "32-true"
    if value.startswith("bf16") and not native:
        where = "GPU" if gpu else f"CPU ({platform.processor() or platform.machine()})"
        log.warning("trainer.precision=%s on a %s without native bf16: expect it to be several times slower "
                    "than fp32 (trainer.precision=auto picks fp32 here)", value, where)
    return value


@contextlib.contextmanager
def bf16_linear_weights(model: torch.nn.Module, frozen_only: bool = False) -> Iterator[None]:
    """Under bf16 autocast: the linear layers' weights (``frozen_only``: those that do not train) cast to bf16
    once for the whole block, the fp32 weights put back after it. Autocast caches its casts only for weights
    that require grad, so a frozen weight is cast again on every forward: 135M weights per decoded token, which
    left bf16 decoding no faster than fp32 (scripts/bench/generation.py), and a frozen backbone's weights on
    every training step. The numbers are the same: autocast rounds the same weights to bf16. The output
    embedding (tied to the input one) stays fp32: the readouts project with it in fp32 (a CLIP method has none)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    saved = [(m, m.weight.data) for m in model.modules()
             if isinstance(m, torch.nn.Linear) and m is not head and m.weight.dtype == torch.float32
             and not (frozen_only and m.weight.requires_grad)]
    try:
        for m, weight in saved:
            m.weight.data = weight.to(torch.bfloat16)
        yield
    finally:
        for m, weight in saved:
            m.weight.data = weight
