"""One writer per output directory: a lock file that a second run on the same `out` refuses at once.

Two runs writing the same stage directory would interleave shards, samples and checkpoints, so the
second run stops before any work with a one-line error that names the holder (its PID, host and
command). `out/.lock` is created with O_EXCL (atomic on local and NFS v3+ file systems) and removed
when the run ends, however it ends short of a kill -9. A lock left by a killed run is stale: on the
same host its PID no longer runs, and it is taken over with a warning; a lock from another host is
never taken over (its PID cannot be checked from here): the error says to delete it if that run
is gone.

    with output_lock(out):
        ...  # the stage's work
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user holds that PID: it runs
        return True
    return True


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    return (f"PID {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('started', '?')}: "
            f"{holder.get('command', '?')}")


def acquire(out: str | Path) -> Path:
    """Take out/.lock for this process; returns its path.

    Raises:
        InputError: another live run holds the lock (the message names it).
    """
    path = Path(out) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
          "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300]}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder.get("pid") == os.getpid() and holder.get("host") == me["host"]:
                return path  # this process already holds it (a stage inside the loop that locked it)
            if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) and not _alive(holder["pid"]):
                log.warning("%s: taking over a stale lock (%s is no longer running)", path, _describe(holder))
                path.unlink(missing_ok=True)
                continue
            where = "" if holder.get("host") == me["host"] else "; if that run is gone, delete the lock file"
            raise InputError(f"out: {Path(out)} is in use by another run ({_describe(holder)}){where}: {path}")
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        return path
    raise InputError(f"out: could not take the lock {path}")


def release(path: Path) -> None:
    """Remove a lock this process holds (a lock of another process is left alone)."""
    holder = _holder(path)
    if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


@contextmanager
def output_lock(out: str | Path, enabled: bool = True):
    """Hold out/.lock for the block (a no-op when not enabled, e.g. on the ranks other than 0)."""
    if not enabled:
        yield None
        return
    held_before = (Path(out) / LOCK_NAME).is_file() and _holder(Path(out) / LOCK_NAME).get("pid") == os.getpid()
    path = acquire(out)
    try:
        yield path
    finally:
        if not held_before:
            release(path)
