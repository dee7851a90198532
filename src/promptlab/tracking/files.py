"""A run directory's files: atomic JSON writes (readers never see a torn file, the group can read them) and
the lock that keeps two processes out of one run directory."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout


def _file_mode() -> int:
    """What ``open()`` would give a new file (0644 under the usual umask 022). mkstemp's 0600 would hide
    records from the rest of a group sharing a runs dir."""
    umask = os.umask(0o022)  # reading the umask means setting it: done once, at import, not per write
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


def _write_atomic(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never a torn one: write a temp file, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def strict(obj: Any, _open: set[int] | None = None) -> Any:
    """``obj`` with every non-finite float (NaN, ±inf) as None: what promptlab writes is strict JSON, which has
    no NaN (Python's ``json`` would write the bare ``NaN`` that other readers reject)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if not isinstance(obj, dict | list | tuple):
        return obj
    opened = set() if _open is None else _open  # the containers being copied: one seen again is a cycle
    if id(obj) in opened:
        raise ValueError("Circular reference detected")
    opened.add(id(obj))
    try:
        if isinstance(obj, dict):
            return {k: strict(v, opened) for k, v in obj.items()}
        return [strict(v, opened) for v in obj]
    finally:
        opened.discard(id(obj))


def to_json(obj: Any, **kwargs: Any) -> str:
    """Strict JSON text of ``obj`` (``strict``; other types as ``str``)."""
    return json.dumps(strict(obj), allow_nan=False, default=str, **kwargs)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    _write_atomic(Path(path), to_json(obj, indent=2))


def write_jsonl_atomic(path: str | os.PathLike, rows: list[dict]) -> None:
    """JSON Lines, atomically (see ``write_json_atomic``)."""
    _write_atomic(Path(path), "".join(to_json(r) + "\n" for r in rows))


@contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[bool]:
    """Hold an exclusive lock on ``<run_dir>/.lock`` for the block; yields False when another live process
    holds it (two sweeps in one directory must not both run a member). filelock's OS lock (flock; msvcrt on
    Windows): the OS drops it when its holder dies, so a crashed run never leaves the directory locked; never
    its soft (file-exists) fallback, which a crash would leave behind. The file stays (removing it would race
    with a new holder)."""
    path = Path(run_dir) / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, mode=FILE_MODE, fallback_to_soft=False, preserve_lock_file=True)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()
