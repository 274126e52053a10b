"""What the terminal shows: one labelled line per stage, skip summaries, quiet training logs.

Every stage ends with one line that starts with its label (`[generate]`, `[csr round_1/train]` in the demo,
where two arms run side by side), and a stage that skipped inputs says how many, grouped by reason, with
the first resolved path of each kind, so "image not found" names the file that was looked for. The
numbers behind these lines are in the stage's files (stats.json, metrics.json, DONE, skipped.jsonl);
TRL's per-step log dicts go to train_metrics.jsonl and reach the terminal only with `--verbose`.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

VERBOSE_ENV = "CSR_VERBOSE"
"""Set (to 1) by `--verbose`: TRL's per-step log dicts are printed as well as written to train_metrics.jsonl."""
LABEL_ENV = "CSR_LABEL"
"""A prefix for every stage line of this process (the demo sets it to the arm's name)."""


def verbose() -> bool:
    """Whether `--verbose` asked for TRL's log dicts on the terminal."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def label(name: str) -> str:
    """`[name]`, or `[arm name]` when this process runs one arm of the demo."""
    arm = os.environ.get(LABEL_ENV, "")
    return f"[{arm} {name}]" if arm else f"[{name}]"


def reason_kind(reason: str) -> str:
    """The kind of a skip reason, without its details: 'image not found: x.jpg' -> 'image not found'."""
    return re.split(r"[:(]", reason, maxsplit=1)[0].strip()


def _where(skip: dict) -> str:
    """The place a skipped input names: its resolved image path (absolute), else its line, else its id."""
    if skip.get("image"):
        return os.path.abspath(str(skip["image"]))
    path = re.search(r": (/\S+|\S+\.(?:jpe?g|png|gif|bmp|webp))$", str(skip.get("reason", "")))
    if path:
        return os.path.abspath(path.group(1))
    if skip.get("line") is not None:
        return f"line {skip['line']}"
    if skip.get("entry"):
        return str(skip["entry"])
    return f"id {skip['id']}" if skip.get("id") is not None else ""


def skip_summary(stage: str, skipped: list[dict], total: int | None, listed_in: str | Path) -> str | None:
    """One line: how many (of `total`, when given) inputs a stage skipped, per kind of reason (most frequent first) with the
    first input of that kind, and the file that lists them all; None when nothing was skipped.

        [generate] skipped 5 of 12 inputs: image not found x5 (first: /data/imgs/a.jpg); all in out/skipped.jsonl
    """
    if not skipped:
        return None
    kinds = Counter(reason_kind(str(s.get("reason", ""))) for s in skipped)
    parts = []
    for kind, n in kinds.most_common():
        first = next(s for s in skipped if reason_kind(str(s.get("reason", ""))) == kind)
        where = _where(first)
        parts.append(f"{kind} x{n}" + (f" (first: {where})" if where else ""))
    of = f" of {total}" if total is not None else ""
    return f"{label(stage)} skipped {len(skipped)}{of} inputs: {'; '.join(parts)}; all in {listed_in}"
