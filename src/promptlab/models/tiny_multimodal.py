"""Tiny random vision-language and CLIP models with their processors, built in code (no download): the Hub's real
ones (SmolVLM, CLIP) cannot be loaded offline, and tests need the whole image path to run. Same classes and
processors as the real models, a few layers of random weights, 32x32 images."""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPProcessor,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3Processor,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

from promptlab.models import tiny_tokenizer

# SmolVLM-256M-Instruct's chat template, verbatim: the tiny VLM renders prompts as the real one does.
SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}{% if message['content'][0]['type'] "
    "== 'image' %}{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == "
    "'text' %}{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
IMAGE_SIZE, PATCH = 32, 8


def idefics3(tok, text_config: dict, vision_config: dict, scale: int, seed: int = 0):
    """An Idefics3 (SmolVLM's architecture) with random weights around ``tok``, and its processor: images resized
    to the vision tower's size (no splitting), each (size / patch)² / scale² image tokens after pixel shuffle."""
    tok.add_special_tokens({"additional_special_tokens": ["<fake_token_around_image>", "<image>",
                                                          "<end_of_utterance>", "<global-img>"]})
    size, patch = vision_config["image_size"], vision_config["patch_size"]
    images = Idefics3ImageProcessorPil(do_image_splitting=False, size={"longest_edge": size},
                                       max_image_size={"longest_edge": size})
    processor = Idefics3Processor(images, tok, image_seq_len=(size // patch) ** 2 // scale**2,
                                  chat_template=SMOLVLM_TEMPLATE)
    config = Idefics3Config(vision_config=vision_config, text_config={**text_config, "vocab_size": len(tok)},
                            scale_factor=scale, image_token_id=processor.image_token_id, tie_word_embeddings=True,
                            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Idefics3ForConditionalGeneration(config), processor


def clip(tok, text_config: dict, vision_config: dict, projection_dim: int, seed: int = 0):
    """A CLIP with random weights around ``tok`` (transformers' defaults where the configs say nothing: ViT-B/32),
    and its processor; its text tower pools at the tokenizer's EOS."""
    size = vision_config.get("image_size", 224)
    config = CLIPConfig(
        text_config={"vocab_size": len(tok), **text_config, "pad_token_id": tok.pad_token_id,
                     "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id},
        vision_config=vision_config, projection_dim=projection_dim,
        logit_scale_init_value=4.6052)  # ln 100: a trained CLIP's scale (its cap); the init 2.66 barely separates
    images = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return CLIPModel(config), CLIPProcessor(image_processor=images, tokenizer=tok)


def clip_tokenizer():
    """The tiny tokenizer, ending texts with <|endoftext|> as CLIP's does: its <|im_end|> is id 2, which CLIP's text
    model takes for a legacy config and pools at the highest token id instead."""
    tok = tiny_tokenizer()
    tok.eos_token = "<|endoftext|>"
    return tok


def tiny_vlm(cfg: DictConfig) -> tuple[Idefics3ForConditionalGeneration, Idefics3Processor]:
    """A 1-layer SigLIP encoder, pixel shuffle and a 2-layer Llama; each 32x32 image is 4 image tokens."""
    heads = cfg.get("num_heads", 4)
    text = {"model_type": "llama", "hidden_size": cfg.get("hidden_size", 32), "intermediate_size":
            cfg.get("intermediate_size", 64), "num_hidden_layers": cfg.get("num_layers", 2), "num_attention_heads": heads,
            "num_key_value_heads": heads, "max_position_embeddings": 2048, "tie_word_embeddings": True}
    vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": IMAGE_SIZE, "patch_size": PATCH}
    tok = tiny_tokenizer()
    text.update(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return idefics3(tok, text, vision, scale=2, seed=cfg.get("init_seed", 0))


def tiny_clip(cfg: DictConfig) -> tuple[CLIPModel, CLIPProcessor]:
    """A CLIP with 2-layer text and vision towers and 32x32 images."""
    tower = {"hidden_size": cfg.get("hidden_size", 32), "intermediate_size": cfg.get("intermediate_size", 64),
             "num_hidden_layers": cfg.get("num_layers", 2), "num_attention_heads": cfg.get("num_heads", 4)}
    return clip(clip_tokenizer(), {**tower, "max_position_embeddings": 77},
                {**tower, "image_size": IMAGE_SIZE, "patch_size": PATCH}, cfg.get("projection_dim", 16),
                cfg.get("init_seed", 0))
