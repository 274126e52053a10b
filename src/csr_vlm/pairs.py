"""The preference pairs `csr train` reads: each checked before the Trainer starts, a bad one skipped with its reason.

A pair the Trainer cannot use fails mid-run, and, since a resumed run meets it at the same step,
on every re-run, so the stage could never finish. Each pair is therefore checked first, and one
that fails is a line of `<out>/skipped.jsonl` (`{"id", "line", "reason"}`), counted in DONE:

- the record's shape (docs/formats.md): `images` a non-empty list of paths; `prompt` a list of
  messages (`{"role", "content"}`, content a string or a list of `{"type": "text", "text"}` and
  `{"type": "image"}` parts); `chosen` and `rejected` lists of assistant messages with text only;
- one image slot (`{"type": "image"}`) in the prompt per image;
- every image file exists and opens with `data.load_image`;
- (once the model's processor is loaded) no text holds one of the model's control tokens
  (special_tokens.py: a placeholder would ask for a second image, an end-of-turn token would
  rewrite the conversation).

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

from .data import commonest_skip, load_image, read_entries
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
            rows.append({"id": pid, "line": entry.line, **_check_pair(rec, path.parent, max_pixels, opened)})
        except InputError as exc:
            skipped.append({"id": pid, "line": entry.line, "reason": str(exc)})
    if not rows:
        raise InputError(f"train.pairs: no usable pairs in {path} ({commonest_skip(skipped)})")
    if skipped:
        log.warning("%s: skipped %d pair(s) (%s; reasons in skipped.jsonl)", path, len(skipped),
                    commonest_skip(skipped))
    return rows, skipped


def drop_control_tokens(rows: list[dict], skipped: list[dict], tokens: ControlTokens
                        ) -> tuple[list[dict], list[dict]]:
    """The rows whose texts hold none of the model's control tokens; the others join skipped with the reason."""
    keep, skipped = [], list(skipped)
    for row in rows:
        try:
            for column in COLUMNS[1:]:
                for text in _texts(row[column]):
                    tokens.check_text(text, column)
            keep.append(row)
        except InputError as exc:
            skipped.append({"id": row["id"], "line": row["line"], "reason": str(exc)})
    if not keep:
        raise InputError(f"train.pairs: no usable pairs ({commonest_skip(skipped)})")
    return keep, skipped


def to_dataset(rows: list[dict], max_pixels: int = 50_000_000):
    """A datasets.Dataset of the rows (TRL's columns) whose images are decoded by data.load_image on access."""
    import datasets

    ds = datasets.Dataset.from_list([{c: row[c] for c in COLUMNS} for row in rows])

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
