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


def tiny_vlm(cfg: DictConfig) -> tuple[Idefics3ForConditionalGeneration, Idefics3Processor]:
    """An Idefics3 (SmolVLM's architecture): a 1-layer SigLIP encoder, pixel shuffle, a 2-layer Llama; each image
    is 4 image tokens (no image splitting)."""
    tok = tiny_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<fake_token_around_image>", "<image>",
                                                          "<end_of_utterance>", "<global-img>"]})
    scale = 2
    seq_len = (IMAGE_SIZE // PATCH) ** 2 // scale**2
    images = Idefics3ImageProcessorPil(do_image_splitting=False, size={"longest_edge": IMAGE_SIZE},
                                       max_image_size={"longest_edge": IMAGE_SIZE})
    processor = Idefics3Processor(images, tok, image_seq_len=seq_len, chat_template=SMOLVLM_TEMPLATE)
    hidden = cfg.get("hidden_size", 32)
    config = Idefics3Config(
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": IMAGE_SIZE, "patch_size": PATCH},
        text_config={"model_type": "llama", "vocab_size": len(tok), "hidden_size": hidden,
                     "intermediate_size": cfg.get("intermediate_size", 64), "num_hidden_layers": cfg.get("num_layers", 2),
                     "num_attention_heads": cfg.get("num_heads", 4), "num_key_value_heads": cfg.get("num_heads", 4),
                     "max_position_embeddings": 2048, "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id,
                     "tie_word_embeddings": True},
        scale_factor=scale, image_token_id=processor.image_token_id, tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.get("init_seed", 0))
        return Idefics3ForConditionalGeneration(config), processor


def tiny_clip(cfg: DictConfig) -> tuple[CLIPModel, CLIPProcessor]:
    """A CLIP with 2-layer text and vision towers; its text tower pools at the tokenizer's EOS."""
    tok = tiny_tokenizer()
    # <|endoftext|> ends a text, as in CLIP's tokenizer; <|im_end|> is id 2, which CLIP's text model takes for a
    # legacy config and pools at the highest token id instead
    tok.eos_token = "<|endoftext|>"
    hidden = cfg.get("hidden_size", 32)
    tower = {"hidden_size": hidden, "intermediate_size": cfg.get("intermediate_size", 64),
             "num_hidden_layers": cfg.get("num_layers", 2), "num_attention_heads": cfg.get("num_heads", 4)}
    config = CLIPConfig(
        text_config={**tower, "vocab_size": len(tok), "max_position_embeddings": 77, "pad_token_id": tok.pad_token_id,
                     "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id},
        vision_config={**tower, "image_size": IMAGE_SIZE, "patch_size": PATCH},
        projection_dim=cfg.get("projection_dim", 16),
        logit_scale_init_value=4.6052)  # ln 100: a trained CLIP's scale (its cap); the init 2.66 barely separates
    images = CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                   crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    with torch.random.fork_rng():
        torch.manual_seed(cfg.get("init_seed", 0))
        return CLIPModel(config), CLIPProcessor(image_processor=images, tokenizer=tok)
