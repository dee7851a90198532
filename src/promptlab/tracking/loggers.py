"""Lightning loggers (wandb, csv) and the wandb run's lifecycle: a mode that never prompts or hangs, the
record's summary and the trained checkpoint as an artifact at the end."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("promptlab")


def wandb_mode(requested: str) -> str:
    """``auto`` means online when credentials exist, offline otherwise: wandb never prompts or hangs."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        import netrc

        return "online" if netrc.netrc().authenticators("api.wandb.ai") else "offline"
    except (OSError, netrc.NetrcParseError):
        return "offline"


def wandb_server() -> tuple[str, int]:
    """The wandb API's host and port (``WANDB_BASE_URL`` for a self-hosted server)."""
    url = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    return url.hostname or "api.wandb.ai", url.port or (80 if url.scheme == "http" else 443)


def wandb_reachable(timeout: float = 3.0) -> bool:
    """True when the wandb API accepts a connection; fast (at most ``timeout``) when there is no network."""
    try:
        socket.create_connection(wandb_server(), timeout=timeout).close()
        return True
    except OSError:
        return False


def effective_wandb_mode(requested: str) -> str:
    """``wandb_mode``, made safe before anything loads: ``disabled`` when wandb cannot be imported, ``offline``
    when online is asked but the server cannot be reached (wandb.init would wait 90 s). One warning each."""
    mode = wandb_mode(requested)
    if mode == "disabled":
        return mode
    try:
        import wandb  # noqa: F401
    except Exception as err:  # not installed, or broken: neither is a reason to lose the run
        log.warning("wandb cannot be imported (%s): this run is not logged to wandb "
                    "(fix: pip install wandb, or logger=csv)", err)
        return "disabled"
    if mode == "online" and not wandb_reachable():
        host, port = wandb_server()
        log.warning("wandb: %s:%d cannot be reached; logging offline under the run directory "
                    "(`wandb sync` uploads it later)", host, port)
        if os.environ.get("WANDB_MODE"):  # the environment would otherwise win over the logger's mode
            os.environ["WANDB_MODE"] = "offline"
        return "offline"
    return mode


def wandb_tag(value: object) -> str:
    """A wandb tag (1-64 characters, or wandb.init fails): a model given as a local folder (model=hub
    model.hub_id=/path/to/folder names the model by its path) is tagged with the folder's name."""
    tag = str(value)
    return tag if len(tag) <= 64 else (Path(tag).name or tag)[-64:]


def make_loggers(cfg: DictConfig, run_dir: Path, run_id: str, mode: str | None = None) -> list:
    """Lightning loggers from the ``logger/`` config: wandb, csv, both or none. ``mode``: the wandb mode
    already resolved by ``effective_wandb_mode`` (resolved here when None)."""
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    loggers = []
    if cfg.logger.get("csv"):
        loggers.append(CSVLogger(save_dir=run_dir, name="csv", version=""))
    wb = cfg.logger.get("wandb")
    mode = (mode or effective_wandb_mode(wb.mode)) if wb else "disabled"
    if mode != "disabled":
        os.environ.setdefault("WANDB_SILENT", "true")
        os.environ.setdefault("WANDB_CONSOLE", "off")
        wandb_logger = WandbLogger(
            name=run_id, id=run_id, project=wb.project, entity=wb.get("entity"), group=wb.get("group"),
            job_type=cfg.method.name,
            tags=[wandb_tag(t) for t in (cfg.method.name, cfg.data.name, cfg.model.name, *wb.get("tags", []))],
            save_dir=str(run_dir), mode=mode, config=OmegaConf.to_container(cfg, resolve=True),
            add_file_policy="immutable",
            resume="allow",  # a resumed run (same id) continues its wandb run instead of starting another
        )
        # Lightning passes wandb.init(anonymous=None) whatever we ask; wandb >= 0.19 deprecated the argument
        # and warns "The anonymous setting has no effect" on every run: leave it to wandb's default
        getattr(wandb_logger, "_wandb_init", {}).pop("anonymous", None)
        loggers.append(wandb_logger)
    return loggers


def finish_wandb(loggers: list, record: dict, checkpoint_dir: Path | None) -> None:
    """Summary figures, the record's description, the trained checkpoint as an artifact, then close the run."""
    from lightning.pytorch.loggers import WandbLogger

    status, costs = record["status"], record.get("costs") or {}
    for lg in loggers:
        if not isinstance(lg, WandbLogger):
            continue
        import wandb

        run = lg.experiment
        keys = ("kind", "method_info", "output_type", "primary_metric", "higher_is_better", "chance", "eval_split",
                "num_demos", "num_train_examples", "machine")
        run.config.update({"record": {k: record.get(k) for k in keys}}, allow_val_change=True)
        run.summary.update({**{f"eval/{k}": v for k, v in (record.get("metrics") or {}).items()},
                            **{f"cost/{k}": v for k, v in costs.items()}, "status": status})
        if checkpoint_dir is not None and checkpoint_dir.exists() and any(checkpoint_dir.iterdir()):
            art = wandb.Artifact(f"{run.id}-trained", type="model", metadata=costs)
            art.add_dir(str(checkpoint_dir), policy="immutable")  # immutable: no staging copy of the weights
            run.log_artifact(art)
        run.finish(exit_code=0 if status == "completed" else 1)
