"""Full fine-tuning: every backbone weight is trained; the whole model is stored per task."""

from __future__ import annotations

from promptlab.methods import TrainedMethod, register


@register("full_finetune")
class FullFinetune(TrainedMethod):
    def prepare(self, backbone, task):
        return backbone.model.requires_grad_(True).train()  # from_pretrained returns eval mode

    def save(self, model, directory) -> None:
        model.save_pretrained(directory)

    def load(self, backbone, directory):
        return type(backbone.model).from_pretrained(directory, dtype=backbone.model.dtype).eval()  # its own class
