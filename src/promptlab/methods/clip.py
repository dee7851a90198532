"""CLIP methods for image classification: an image's score for an answer word is CLIP's scaled cosine similarity
between the image and that word's text prompt, normalised over the answers (a choice readout, like any other).

- ``clip_zero_shot`` (Radford et al. 2021): the task's hand-written ``clip_templates`` ("a photo of a {label}."),
  their text features averaged over templates (CLIP's prompt ensembling). Nothing trains.
- ``coop`` (Zhou et al. 2022, context optimisation): the prompt's context words become ``n_ctx`` learned vectors
  shared by every class, "[V1]...[Vn] {label}."; both encoders stay frozen; only the vectors are stored.
- ``linear_probe`` (Radford et al. 2021): a linear classifier on the frozen, normalised image features, trained
  with the same Lightning loop and AdamW as every method (CLIP's paper fits it with L-BFGS), so costs compare.

Written here because neither PEFT nor transformers has CoOp (its reference code is built on OpenAI's ``clip``
package, not transformers' CLIP); the context vectors replace the token embeddings of the context words through
a hook on CLIP's own text embedding, so CLIP's positional embeddings, encoder and pooling are its own.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field
from safetensors.torch import load_file, save_file
from torch import nn

from promptlab.errors import ConfigError
from promptlab.methods import Method, TrainedConfig, TrainedMethod, register
from promptlab.readout.model import pad
from promptlab.tasks import TaskSpec
from promptlab.vision import open_image

META = "clip_prompts.json"  # what the classifier was built from (answer words, templates), beside its weights
WEIGHTS = "clip_prompts.safetensors"
MAX_CONTEXT = 64  # CoOp's largest (16 in its paper); CLIP's text tower takes 77 positions in all


def clip_ids(tokenizer, text: str) -> list[int]:
    """A CLIP text's token ids between BOS and EOS (CLIP's tokenizer adds them; a tokenizer that does not gets
    them here: CLIP pools the text at EOS)."""
    ids = tokenizer(text)["input_ids"]
    if tokenizer.bos_token_id is not None and ids[:1] != [tokenizer.bos_token_id]:
        ids = [tokenizer.bos_token_id, *ids]
    return ids if ids[-1:] == [tokenizer.eos_token_id] else [*ids, tokenizer.eos_token_id]


def normalized(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)


class ClipPrompts(nn.Module):
    """CLIP scoring images against one text prompt per (template, answer word); with ``context``, the first
    ``n_ctx`` words after BOS are learned vectors (CoOp)."""

    def __init__(self, clip: nn.Module, tokenizer, answers: list[str], templates: list[str], context: str = "",
                 n_ctx: int = 0):
        super().__init__()
        self.clip, self.answers, self.templates = clip.requires_grad_(False), list(answers), list(templates)
        self.n_ctx, self.context_text = 0, context
        if n_ctx or context:  # CoOp: "[ctx] {label}." with the context words (or n_ctx X's) as placeholders
            words = context or " ".join(["X"] * n_ctx)
            ctx_ids = tokenizer(words, add_special_tokens=False)["input_ids"]
            self.templates = [f"{words} {{label}}."]
            self.n_ctx = len(ctx_ids)
            texts = [clip_ids(tokenizer, f"{words} {a}.") for a in answers]
            if any(t[1:1 + self.n_ctx] != ctx_ids for t in texts):
                raise ConfigError(f"the context {words!r} does not stay whole before every answer word once tokenised",
                                  "end method.context with a complete word, or set method.context='' (random init)")
            embed = clip.text_model.embeddings.token_embedding.weight
            with torch.no_grad():
                init = embed[ctx_ids].clone() if context else torch.randn(self.n_ctx, embed.shape[1]) * 0.02
            self.ctx = nn.Parameter(init)  # CoOp's init: the words' embeddings, or N(0, 0.02)
        else:
            texts = [clip_ids(tokenizer, t.format(label=a)) for t in templates for a in answers]
        ids, mask = pad(texts, tokenizer.pad_token_id, torch.device("cpu"))
        self.register_buffer("ids", ids, persistent=False)
        self.register_buffer("mask", mask, persistent=False)
        self._frozen_text: tuple[tuple, torch.Tensor] | None = None

    def _put_context(self, module, args, out: torch.Tensor) -> torch.Tensor:
        ctx = self.ctx.to(out.dtype).expand(out.shape[0], -1, -1)
        return torch.cat([out[:, :1], ctx, out[:, 1 + self.n_ctx:]], dim=1)

    def train(self, mode: bool = True) -> ClipPrompts:
        self._frozen_text = None  # training (or having trained) changes the text features
        return super().train(mode)

    def text_features(self) -> torch.Tensor:
        """(answers, dim) normalised text features, averaged over templates. In evaluation (eval mode, no grad)
        they are the same for every batch: computed once, until the module is put in train mode again."""
        key = (torch.is_autocast_enabled(self.ids.device.type), torch.get_autocast_dtype(self.ids.device.type))
        reuse = not self.training and not torch.is_grad_enabled()
        if reuse and self._frozen_text is not None and self._frozen_text[0] == key:
            return self._frozen_text[1]
        features = self._text_features()
        self._frozen_text = (key, features) if reuse else None
        return features

    def _text_features(self) -> torch.Tensor:
        hook = (self.clip.text_model.embeddings.token_embedding.register_forward_hook(self._put_context)
                if self.n_ctx else None)
        try:
            out = self.clip.get_text_features(input_ids=self.ids, attention_mask=self.mask).pooler_output
        finally:
            if hook:
                hook.remove()
        per_template = normalized(out).view(len(self.templates), len(self.answers), -1)
        return normalized(per_template.mean(0))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        image = normalized(self.clip.get_image_features(pixel_values=pixel_values).pooler_output)
        return self.clip.logit_scale.exp().float() * image @ self.text_features().T


class LinearProbe(nn.Module):
    """A linear classifier on CLIP's frozen, normalised image features."""

    def __init__(self, clip: nn.Module, num_classes: int):
        super().__init__()
        self.clip = clip.requires_grad_(False)
        self.linear = nn.Linear(clip.config.projection_dim, num_classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.linear(normalized(self.clip.get_image_features(pixel_values=pixel_values).pooler_output))


class ClipEncoder:
    """Task rows to CLIP inputs: each row's image through the model's image processor, and its label."""

    truncated = 0  # nothing is cut: a CLIP input is an image

    def __init__(self, backbone, task: TaskSpec):
        self.tokenizer, self.task, self.processor = backbone.tokenizer, task, backbone.processor.image_processor

    def item(self, row: dict, train: bool) -> dict:
        image = open_image(row[self.task.image_column])
        pixels = self.processor(images=[image], return_tensors="pt")["pixel_values"][0]
        return {"idx": row["idx"], "task_id": 0, "pixel_values": pixels, "label": row[self.task.label_column]}


class ClipReadout:
    """Cross-entropy over the answers for training, argmax for predictions, from the model's (images, answers)
    logits."""

    def new_pass(self) -> None:
        """Nothing is kept between evaluation passes."""

    def scores(self, model: nn.Module, batch: dict) -> torch.Tensor:
        device = next(model.parameters()).device
        return model(torch.stack(batch["pixel_values"]).to(device)).float().log_softmax(-1)

    def loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return F.nll_loss(self.scores(model, batch), batch["labels"])

    def predict(self, model: nn.Module, batch: dict) -> list[dict]:
        logp = self.scores(model, batch).cpu()
        return [{"idx": int(i), "label": int(y), "pred": int(s.argmax()), "log_probs": [round(float(v), 5) for v in s]}
                for i, y, s in zip(batch["idx"], batch["labels"], logp, strict=True)]


class ClipMethod(Method):
    """Base of the CLIP methods: a CLIP model, an image classification task with fixed answer words."""

    model_kinds = ("clip",)

    def check_model(self, kind: str, task: TaskSpec) -> None:
        super().check_model(kind, task)
        if not task.image_column or task.output_type != "choice" or task.choices is None:
            raise ConfigError(f"method {self.cfg.name} classifies images: task {task.name} needs data.image_column, "
                              "output_type: choice and fixed answer words (data.choices)",
                              "use an image classification task, e.g. data=colours")

    def validate(self, task: TaskSpec) -> None:
        super().validate(task)
        if self.num_demos:
            raise ConfigError(f"{self.cfg.name} shows no demonstrations", "set method.num_demos=0")

    def encoder(self, backbone, task: TaskSpec, demos) -> ClipEncoder:
        return ClipEncoder(backbone, task)

    def readout(self, tokenizer, task: TaskSpec, seed: int = 0) -> ClipReadout:
        return ClipReadout()

    def checkpoint_activations(self, model: nn.Module) -> None:
        if self.cfg.get("gradient_checkpointing", False):
            model.clip.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


@register("clip_zero_shot")
class ClipZeroShot(ClipMethod):
    def prepare(self, backbone, task: TaskSpec) -> nn.Module:
        return ClipPrompts(backbone.model, backbone.tokenizer, list(task.choices), list(task.clip_templates)).eval()


class TrainedClip(ClipMethod, TrainedMethod):
    """A trained CLIP method: stores its trained weights and what they were built from."""

    def save(self, model: nn.Module, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        trained = {k: v.detach().contiguous() for k, v in model.named_parameters() if v.requires_grad}
        save_file(trained, directory / WEIGHTS)
        meta = {"answers": getattr(model, "answers", None), "templates": getattr(model, "templates", None),
                "context": getattr(model, "context_text", ""), "n_ctx": getattr(model, "n_ctx", 0),
                "num_classes": getattr(getattr(model, "linear", None), "out_features", None)}
        (directory / META).write_text(json.dumps(meta))

    def load(self, backbone, directory: Path) -> nn.Module:
        meta = json.loads((Path(directory) / META).read_text())
        model = self.build(backbone, meta)
        missing = model.load_state_dict(load_file(Path(directory) / WEIGHTS), strict=False).unexpected_keys
        if missing:
            raise RuntimeError(f"{directory} holds weights {missing} this method does not have")
        return model.eval()

    def build(self, backbone, meta: dict) -> nn.Module:
        """The method's model from what ``save`` wrote (or what ``prepare`` knows)."""
        raise NotImplementedError


class CoOpConfig(TrainedConfig):
    context: str = Field("", examples=["a photo of a"])  # initialised from these words' embeddings; '' for random
    n_ctx: int = Field(0, ge=0, le=MAX_CONTEXT, examples=[16])  # with context '': this many random vectors


@register("coop")
class CoOp(TrainedClip):
    Config = CoOpConfig

    def validate(self, task: TaskSpec) -> None:
        super().validate(task)
        context, n_ctx = self.cfg.get("context", ""), self.cfg.get("n_ctx", 0)
        fix = "set method.context='a photo of a' (initialised from those words) or method.context='' method.n_ctx=16"
        if bool(context) == bool(n_ctx):  # the words set the count; without words, the count is needed
            raise ConfigError(f"coop takes its context from words or a count, one of them: method.context={context!r}, "
                              f"method.n_ctx={n_ctx}", fix)

    def prepare(self, backbone, task: TaskSpec) -> nn.Module:
        return self.build(backbone, {"answers": list(task.choices), "templates": [],
                                     "context": self.cfg.get("context", ""), "n_ctx": self.cfg.get("n_ctx", 0)}).train()

    def build(self, backbone, meta: dict) -> nn.Module:
        return ClipPrompts(backbone.model, backbone.tokenizer, meta["answers"], meta["templates"], meta["context"],
                           meta["n_ctx"])


@register("linear_probe")
class ClipLinearProbe(TrainedClip):
    def prepare(self, backbone, task: TaskSpec) -> nn.Module:
        return self.build(backbone, {"num_classes": len(task.choices)}).train()

    def build(self, backbone, meta: dict) -> nn.Module:
        return LinearProbe(backbone.model, meta["num_classes"])
