"""Run records and costs: the run directory's files (atomic writes, the lock), provenance, meters, the record,
and the loggers (wandb, csv)."""

from promptlab.tracking.files import (
    FILE_MODE,
    run_lock,
    strict,
    to_json,
    write_json_atomic,
    write_jsonl_atomic,
)
from promptlab.tracking.loggers import (
    effective_wandb_mode,
    finish_wandb,
    make_loggers,
    wandb_mode,
    wandb_reachable,
    wandb_server,
)
from promptlab.tracking.meters import PeakMemory, dir_bytes, proc_status_mb, stored_parameters
from promptlab.tracking.provenance import (
    config_hash,
    git_commit,
    git_dirty,
    load_average,
    machine_info,
    new_run_id,
    versions,
)
from promptlab.tracking.record import RunRecord, read_record

__all__ = [
    "FILE_MODE", "PeakMemory", "RunRecord", "config_hash", "dir_bytes", "effective_wandb_mode", "finish_wandb",
    "git_commit", "git_dirty", "load_average", "machine_info", "make_loggers", "new_run_id", "proc_status_mb",
    "read_record", "run_lock", "stored_parameters", "strict", "to_json", "versions", "wandb_mode",
    "wandb_reachable", "wandb_server", "write_json_atomic", "write_jsonl_atomic",
]
