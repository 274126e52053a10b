"""One writer per output directory: a lock file that a second run on the same `out` refuses at once.

Two runs writing the same stage directory would interleave shards, samples and checkpoints, so the
second run stops before any work with a one-line error that names the holder (its PID, host and
command). `out/.lock` is written whole to a temporary file and then linked into place (atomic, and
it fails when the lock exists, on local and NFS v3+ file systems), so a lock is never seen half
written; it is removed when the run ends, however it ends short of a kill -9 (SIGINT and SIGTERM
included: the CLI turns both into an orderly stop). A lock is stale, and taken over with a warning,
when it is empty or unreadable (a full disk), when on this host its PID no longer runs, or when that
PID now belongs to another process (its start time differs from the one recorded; for a lock without
one, its command line does not mention csr). A lock from another host is never taken over (its PID
cannot be checked from here): the error says to delete it if that run is gone. Before taking the
lock, `outdir.claim` makes sure `out` is a directory the run may write in.

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
from .outdir import claim, mark

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


def process_start(pid: int) -> int | None:
    """When the process started, in clock ticks since boot (/proc/<pid>/stat field 22); None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _command_line(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None


def _holder(path: Path) -> dict:
    try:
        holder = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    return (f"PID {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('started', '?')}: "
            f"{holder.get('command', '?')}")


def _stale(holder: dict, host: str) -> str | None:
    """Why a lock is stale (a sentence), or None when its holder may still run."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or not isinstance(holder.get("host"), str):
        return "the lock file is empty or unreadable"
    if holder["host"] != host:
        return None
    if not _alive(pid):
        return f"{_describe(holder)} is no longer running"
    started = holder.get("pid_start")
    if started is not None:
        now = process_start(pid)
        return f"PID {pid} now belongs to another process" if now is not None and now != started else None
    command = _command_line(pid)
    return f"PID {pid} now runs something else ({command[:80]})" if command and "csr" not in command else None


def _write_lock(path: Path, me: dict) -> bool:
    """Put the lock in place whole (temporary file, then link); False when a lock is already there."""
    tmp = path.with_name(f"{LOCK_NAME}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(me))
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links: an exclusive create (a full disk may leave it empty)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def acquire(out: str | Path) -> Path:
    """Take out/.lock for this process (after outdir.claim accepts out); returns its path.

    Raises:
        InputError: out is not a directory this run may write in, or another live run holds the lock (the
            message names it).
    """
    claim(out)
    path = Path(out) / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
          "pid_start": process_start(os.getpid()), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300]}
    for _ in range(2):
        if _write_lock(path, me):
            mark(out)
            return path
        holder = _holder(path)
        if holder.get("pid") == os.getpid() and holder.get("host") == me["host"]:
            return path  # this process already holds it (a stage inside the loop that locked it)
        why = _stale(holder, me["host"])
        if why:
            log.warning("%s: taking over a stale lock (%s)", path, why)
            path.unlink(missing_ok=True)
            continue
        where = "" if holder.get("host") == me["host"] else "; if that run is gone, delete the lock file"
        raise InputError(f"out: {Path(out)} is in use by another run ({_describe(holder)}){where}: {path}")
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
