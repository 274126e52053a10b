"""The output directory a run owns: `out` is refused unless it is new, empty or made by csr, and then marked.

A stage writes, renames and deletes files under `out` (shards, Trainer checkpoints, an overwritten
result), so `out` must never be a directory that holds anything else: the current directory
(`out=` left empty, `~`, `null`), a home directory, or a folder of the user's own files. The config
refuses an empty or non-path `out` when it loads (schema); `claim`, called when a stage takes its
lock, refuses an existing directory that holds files no csr stage made and writes the marker
`out/.csr` into the directory it keeps, so later runs know it as one of theirs.

    claim(out)   # before the first write; output_lock calls it, and mark(out) once it holds the lock
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .errors import ConfigError, InputError

MARKER = ".csr"
"""The file that says a directory was made by csr (a directory that has it is reused without question)."""

_OURS = re.compile(r"DONE|config\.yaml|\.lock(\..*)?|\.csr|shards|candidates\.jsonl|pairs\.jsonl|skipped\.jsonl"
                   r"|stats\.json|trainer|checkpoint(\.tmp|\.old)?|train_metrics\.jsonl|train_fingerprint\.json"
                   r"|samples\.jsonl|metrics\.json|chair_captions\.jsonl|pope_questions\.jsonl|lmms|manifest\.json"
                   r"|best\.json|round_\d+|\.?report[\w.-]*|.*\.tmp")
"""Names a csr stage writes directly under its out (a directory made by an older csr, without the marker,
holds only these)."""


def check_out(out: str) -> None:
    """Refuse an `out` that names no directory of its own: empty, a home directory, or the file system root.

    Raises:
        ConfigError: with the reason (YAML reads `~` and `null` as nothing, and `#` starts a comment).
    """
    if not str(out).strip():
        raise ConfigError("out is empty (YAML reads ~ and null as nothing and # starts a comment): name a new "
                         "directory for the run")
    path = Path(out).expanduser()
    if path.resolve() in (Path.home().resolve(), Path("/")):
        raise ConfigError(f"out: {out} is {'your home directory' if path.resolve() != Path('/') else 'the root'}; "
                         "name a new directory for the run")


def claim(out: str | Path) -> Path:
    """Make `out` the run's directory: create it, or accept it when it is empty or made by csr (`mark` follows
    once the run holds the lock).

    Raises:
        InputError: out is a file, or a directory that holds files no csr stage made (they are named).
    """
    check_out(str(out))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"out: {out} is a file, not a directory")
    if out.is_dir() and not (out / MARKER).is_file():
        foreign = sorted(p.name for p in out.iterdir() if not _OURS.fullmatch(p.name))
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise InputError(f"out: {out} already holds files that csr did not make ({shown}); a run writes and "
                             "deletes files in its out, so name a new or empty directory")
    out.mkdir(parents=True, exist_ok=True)
    return out


def mark(out: str | Path) -> None:
    """Write out/.csr (once): the directory is csr's."""
    marker = Path(out) / MARKER
    if not marker.is_file():
        tmp = marker.with_name(MARKER + ".tmp")
        tmp.write_text(json.dumps({"made_by": "csr"}) + "\n")
        tmp.replace(marker)
