"""Zero- and few-shot prompting: the frozen model reads a manual template (plus k demonstrations).

Nothing is trained and nothing is stored per task beyond the prompt text; demonstrations are chosen
by the data module (``method.num_demos``) from the run's training sample.
"""

from __future__ import annotations

from omegaconf import DictConfig

from promptlab.errors import ConfigError


def validate(cfg: DictConfig) -> None:
    if cfg.name == "few_shot" and cfg.num_demos < 1:
        raise ConfigError(f"few_shot needs method.num_demos >= 1 (got {cfg.num_demos})", "set method.num_demos=4")
    if cfg.name == "zero_shot" and cfg.num_demos != 0:
        raise ConfigError("zero_shot takes no demonstrations", "use method=few_shot for method.num_demos > 0")


def prepare(backbone, cfg: DictConfig, task):
    model = backbone.model
    model.requires_grad_(False)
    return model.eval()


def save(model, directory) -> None:
    """Nothing to store: the method's state is the prompt itself, kept in the run's config."""


def load(backbone, directory):
    return backbone.model
