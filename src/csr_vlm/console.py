"""What the terminal shows: one labelled line per stage, skip summaries, quiet training logs.

Every stage ends with one line that starts with its label (`[generate]`, `[csr round_1/train]` in the demo,
where two arms run side by side), and a stage that skipped inputs says how many, grouped by reason, with
the first resolved path of each kind, so "image not found" names the file that was looked for. The
numbers behind these lines are in the stage's files (stats.json, metrics.json, DONE, skipped.jsonl);
TRL's per-step log dicts go to train_metrics.jsonl and reach the terminal only with `--verbose`.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections import Counter
from pathlib import Path

VERBOSE_ENV = "CSR_VERBOSE"
"""Set (to 1) by `--verbose`: TRL's per-step log dicts are printed as well as written to train_metrics.jsonl."""
LABEL_ENV = "CSR_LABEL"
"""A prefix for every stage line of this process (the demo sets it to the arm's name)."""
NO_BARS_ENV = "CSR_NO_PROGRESS_BARS"
"""Set (to 1) where progress bars would garble the terminal: the demo's arms running side by side."""


def verbose() -> bool:
    """Whether `--verbose` asked for TRL's log dicts on the terminal."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def bars_off() -> bool:
    """Whether csr's progress bars are off in this process (NO_BARS_ENV)."""
    return os.environ.get(NO_BARS_ENV, "") not in ("", "0")


def bar_name(name: str) -> str:
    """A progress bar's description: the stage's name, after the arm's in the demo."""
    arm = os.environ.get(LABEL_ENV, "")
    return f"{arm} {name}" if arm else name


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


def skip_summary(stage: str, skipped: list[dict], total: int | None, listed_in: str | Path | None) -> str | None:
    """One line: how many (of `total`, when given) inputs a stage skipped, per kind of reason (most frequent
    first) with the first input of that kind, and the file that lists them all (if any); None if none was.

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
    listed = f"; all in {listed_in}" if listed_in else ""
    return f"{label(stage)} skipped {len(skipped)}{of} inputs: {'; '.join(parts)}{listed}"


def block(text: str) -> str:
    """A multi-line text with every line labelled like the stage lines when this process runs one arm of the demo
    (two arms print at the same time), else as it is."""
    arm = os.environ.get(LABEL_ENV, "")
    return "\n".join(f"[{arm}] {line}" for line in text.splitlines()) if arm else text


def quiet_libraries() -> None:
    """Keep library chatter off the terminal unless --verbose: the hub's, transformers' and datasets' own progress
    bars (loading weights, writing shards, casting columns), transformers' info messages and FutureWarnings.
    csr's own progress bars (generate, train, eval) stay. Takes effect for the libraries imported after it (the
    stages import them lazily), and is inherited by the demo's arm processes."""
    if verbose():
        return
    for name in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        os.environ.setdefault(name, "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecations inside the libraries, not ours to fix


class _Formatter(logging.Formatter):
    """csr's own info lines as `HH:MM:SS message` (each message starts with its stage's name); warnings and errors,
    and anything from another library, with their level and logger."""

    def format(self, record: logging.LogRecord) -> str:
        own = record.levelno == logging.INFO and record.name.startswith("csr_vlm")
        self._style._fmt = "%(asctime)s %(message)s" if own else "%(asctime)s %(levelname)s %(name)s: %(message)s"
        return super().format(record)


def setup_logging() -> None:
    """csr's info lines and every library's warnings on stderr (with --verbose every library's info lines too).
    Leaves logging alone where a handler is already installed (a test runner, an embedding program)."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(_Formatter(datefmt="%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose() else logging.WARNING)
    logging.getLogger("csr_vlm").setLevel(logging.INFO)


def quiet_trainer(trainer) -> None:
    """TRL's per-step log dicts go to train_metrics.jsonl only (the metrics callback writes them); the terminal keeps
    a labelled progress bar. With --verbose the Trainer prints them as usual."""
    if verbose():
        return
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class QuietProgress(ProgressCallback):
        """The Trainer's progress bar, labelled, without the log dicts it would write under it."""

        def on_train_begin(self, args, state, control, **kwargs):
            super().on_train_begin(args, state, control, **kwargs)
            if self.training_bar is not None:
                self.training_bar.set_description(bar_name("train"))

        def on_log(self, args, state, control, logs=None, **kwargs):
            return

    trainer.remove_callback(PrinterCallback)  # the Trainer's choice when transformers' logging is quiet
    trainer.remove_callback(ProgressCallback)
    if not bars_off():
        trainer.add_callback(QuietProgress)
