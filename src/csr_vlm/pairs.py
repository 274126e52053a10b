"""The preference pairs `csr train` reads: each checked before the Trainer starts, a bad one skipped with its reason.

A pair the Trainer cannot use fails mid-run, and, since a resumed run meets it at the same step,
on every re-run, so the stage could never finish. Each pair is therefore checked first, and one
that fails is a line of `<out>/skipped.jsonl` (`{"id", "line", "reason"}`), counted in DONE:

- the record's shape (docs/formats.md), in one of TRL's two formats, one per file (the first usable
  pair's): conversational, `prompt` a list of messages (`{"role", "content"}`, content a string or a
  list of `{"type": "text", "text"}` and `{"type": "image"}` parts) and `chosen` / `rejected` lists of
  assistant messages with text only; or standard (`curate.pair_level: sentence | both`), `prompt`,
  `chosen` and `rejected` strings, the prompt the model's own chat-template text. `images` is a
  non-empty list of paths;
- one image slot per image: `{"type": "image"}` parts, or (standard, once the processor is loaded)
  the model's image token in the prompt text;
- every image file exists and opens with `data.load_image`;
- (once the model's processor is loaded) no user-written text holds one of the model's control tokens
  (special_tokens.py: a placeholder would ask for a second image, an end-of-turn token would
  rewrite the conversation). A standard row's texts were rendered by the chat template and hold its
  control tokens by design: there only an image placeholder in `chosen` / `rejected` is refused.

The dataset keeps the image paths and decodes them with `data.load_image` when the collator asks
(a dataset transform), so training sees the pixels the search and the evaluation saw (EXIF
orientation applied, transparency on white; `datasets.Image` would differ).

    rows, skipped = read_pairs(path, max_pixels)       # shape and images, before any model loads
    rows, skipped = drop_control_tokens(rows, skipped, ControlTokens.of(processor))
    dataset = to_dataset(rows, max_pixels)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from .console import commonest_skip
from .data import load_image, read_entries
from .errors import InputError
from .special_tokens import ControlTokens

log = logging.getLogger(__name__)

COLUMNS = ("images", "prompt", "chosen", "rejected")


def read_pairs(path: Path, max_pixels: int = 50_000_000) -> tuple[list[dict], list[dict]]:
    """(usable rows {"id", "line", "images", "prompt", "chosen", "rejected"}, skips {"id", "line", "reason"}).

    Raises:
        InputError: the file is missing, or no pair is usable (the commonest reason and its count named).
    """
    if not path.is_file():
        raise InputError(f"train.pairs: pairs file not found: {path}")
    from tqdm import tqdm

    rows, skipped = [], []
    opened: dict[str, str | None] = {}  # image path -> why it cannot be used (None: it opens)
    quiet = os.environ.get("RANK", "0") != "0"
    for entry in tqdm(read_entries(path, "pairs file"), desc="check pairs", unit="pair", disable=quiet):
        rec = entry.value
        pid = rec.get("id") if isinstance(rec, dict) and isinstance(rec.get("id"), (str, int)) else None
        try:
            if entry.error:
                raise InputError(entry.error)
            row = {"id": pid, "line": entry.line, **_check_pair(rec, path.parent, max_pixels, opened)}
            if rows and _standard(row) != _standard(rows[0]):
                raise InputError(f"{_format(row)} pair in a file of {_format(rows[0])} pairs (one format per file)")
            rows.append(row)
        except InputError as exc:
            skipped.append({"id": pid, "line": entry.line, "reason": str(exc)})
    if not rows:
        raise InputError(f"train.pairs: no usable pairs in {path} ({commonest_skip(skipped)})")
    if skipped:
        log.warning("%s: skipped %d pair(s) (%s; reasons in skipped.jsonl)", path, len(skipped),
                    commonest_skip(skipped))
    return rows, skipped


def drop_control_tokens(rows: list[dict], skipped: list[dict], tokens: ControlTokens, image_token: str | None = None
                        ) -> tuple[list[dict], list[dict]]:
    """The rows whose user-written texts hold none of the model's control tokens (and, in a standard row, whose
    prompt has one `image_token` per image); the others join skipped with the reason."""
    keep, skipped = [], list(skipped)
    for row in rows:
        try:
            if _standard(row):
                slots = row["prompt"].count(image_token) if image_token else len(row["images"])
                if slots != len(row["images"]):
                    raise InputError(f"prompt has {slots} image slot(s) for {len(row['images'])} image(s)")
                for column in COLUMNS[2:]:
                    bad = tokens.found(row[column], tokens.placeholders)
                    if bad:
                        raise InputError(f"{column} holds the model's image placeholder {bad!r}")
            else:
                for column in COLUMNS[1:]:
                    for text in _texts(row[column]):
                        tokens.check_text(text, column)
            keep.append(row)
        except InputError as exc:
            skipped.append({"id": row["id"], "line": row["line"], "reason": str(exc)})
    if not keep:
        raise InputError(f"train.pairs: no usable pairs ({commonest_skip(skipped)})")
    return keep, skipped


def to_dataset(rows: list[dict], max_pixels: int = 50_000_000, extra: tuple[str, ...] = ()):
    """A datasets.Dataset of the rows (TRL's columns, and `extra` ones) whose images are decoded by
    data.load_image on access."""
    import datasets

    ds = datasets.Dataset.from_list([{c: row[c] for c in COLUMNS + extra} for row in rows])

    def decode(batch: dict[str, list]) -> dict[str, list]:
        batch["images"] = [[load_image(p, max_pixels) for p in paths] for paths in batch["images"]]
        return batch

    return ds.with_transform(decode)


# ---------------------------------------------------------------------------- checks


def _check_pair(rec: Any, base: Path, max_pixels: int, opened: dict[str, str | None]) -> dict:
    """TRL's columns of a usable pair (image paths resolved); InputError with the reason otherwise."""
    if not isinstance(rec, dict):
        raise InputError(f"not a JSON object ({type(rec).__name__})")
    missing = [c for c in COLUMNS if c not in rec]
    if missing:
        raise InputError(f"missing field(s): {', '.join(missing)} (see docs/formats.md)")
    images = rec["images"]
    if not isinstance(images, list) or not images or not all(isinstance(p, str) for p in images):
        raise InputError("images is not a non-empty list of paths")
    if isinstance(rec["prompt"], str):  # TRL's standard format: the image slots are counted once the model is known
        for side in ("chosen", "rejected"):
            if not isinstance(rec[side], str):
                raise InputError(f"{side} is {type(rec[side]).__name__}, but the prompt is text (TRL's standard "
                                 "format): chosen and rejected must be text too (see docs/formats.md)")
        texts = {c: rec[c] for c in COLUMNS[1:]}
    else:
        texts = {"prompt": _messages(rec["prompt"], "prompt", roles=("system", "user", "assistant"), images=True)}
        for side in ("chosen", "rejected"):
            texts[side] = _messages(rec[side], side, roles=("assistant",), images=False)
        slots = sum(1 for m in texts["prompt"] for part in m["content"] if part["type"] == "image")
        if slots != len(images):
            raise InputError(f"prompt has {slots} image slot(s) for {len(images)} image(s)")
    paths = []
    for image in images:
        found = _image_path(image, base)
        key = str(found or image)
        if key not in opened:
            try:
                if found is None:
                    raise InputError(f"image not found: {image}")
                load_image(found, max_pixels)
                opened[key] = None
            except InputError as exc:
                opened[key] = str(exc)
        if opened[key]:
            raise InputError(opened[key])
        paths.append(str(found))
    return {"images": paths, **texts}


def _messages(messages: Any, name: str, roles: tuple[str, ...], images: bool) -> list[dict]:
    """The messages in one form (content a list of {"type", "text"} parts, so every row has the columns' types);
    InputError unless they are a non-empty list of {"role", "content"} with the allowed roles and parts."""
    if not isinstance(messages, list) or not messages:
        kind = "a string" if isinstance(messages, str) else type(messages).__name__
        raise InputError(f"{name} is {kind}, not a list of messages (see docs/formats.md)")
    out = []
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in roles or "content" not in m:
            raise InputError(f"{name} has a message that is not {{role: {'|'.join(roles)}, content}}")
        content = m["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if not isinstance(content, list):
            raise InputError(f"{name} has content that is neither text nor a list of parts")
        parts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                parts.append({"type": "text", "text": part["text"]})
            elif kind == "image" and images:
                parts.append({"type": "image", "text": None})
            else:
                raise InputError(f"{name} has a part that is not " + ("text or an image slot" if images else "text"))
        out.append({"role": m["role"], "content": parts})
    return out


def _standard(row: dict) -> bool:
    """Whether a row is in TRL's standard format (text prompt), not the conversational one."""
    return isinstance(row["prompt"], str)


def _format(row: dict) -> str:
    return "a standard-format (text)" if _standard(row) else "a conversational"


def _texts(messages: list[dict]) -> list[str]:
    """Every text of a message list."""
    out = []
    for m in messages:
        out += [p["text"] for p in m["content"] if p["type"] == "text"]
    return out


def _image_path(path: str, base: Path) -> Path | None:
    """The image file, as given or relative to the pairs file's directory; None when missing."""
    for p in (Path(path), base / path):
        if p.is_file():
            return p
    return None
