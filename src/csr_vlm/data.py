"""Files that stages exchange: prompt records, JSONL/JSON I/O that survives a kill, and images.

Every stage talks to the next through small JSONL records. Writers here are atomic (write to
`x.tmp`, then rename) or append-only with one complete line per record, and readers drop a
half-written last line, so a killed run never leaves a file that resume would trust wrongly.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DONE_MARKER = "DONE"


class InputError(ValueError):
    """A problem with the user's input files; the CLI prints it as one line."""


@dataclass(frozen=True)
class PromptRecord:
    """One (image, prompt) to search from."""

    id: str
    image: str
    prompt: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------- JSON / JSONL


def write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON atomically (tmp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    """Write JSONL atomically (tmp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def append_jsonl(fh, record: dict[str, Any]) -> None:
    """Append one complete line and flush it to disk, so a kill loses at most this line."""
    fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    fh.flush()
    os.fsync(fh.fileno())


def read_jsonl(path: str | Path, *, strict: bool = False) -> Iterator[dict[str, Any]]:
    """Yield the records of a JSONL file; malformed lines are logged with their number and skipped.

    A final line without a newline is a write cut off by a kill: it is dropped silently when it
    does not parse. With strict=True a malformed line raises InputError instead.
    """
    path = Path(path)
    with path.open("rb") as fh:
        data = fh.read()
    lines = data.split(b"\n")
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
            if not isinstance(rec, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError) as exc:
            last = lineno == len(lines)
            if last:
                log.warning("%s:%d: dropping a half-written last line", path, lineno)
                continue
            if strict:
                raise InputError(f"{path}:{lineno}: malformed JSON line ({exc})") from None
            log.warning("%s:%d: skipping malformed line (%s)", path, lineno, exc)
            continue
        yield rec


def repair_jsonl(path: str | Path) -> None:
    """Truncate a JSONL file after its last complete line (a kill can leave half a line)."""
    path = Path(path)
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        log.warning("%s: dropping a half-written last line", path)
        with path.open("r+b") as fh:
            fh.truncate(cut)


def mark_done(directory: str | Path, info: dict[str, Any] | None = None) -> None:
    """Write the completion marker of a stage directory (always the last file written)."""
    write_json(Path(directory) / DONE_MARKER, info or {})


def is_done(directory: str | Path) -> bool:
    return (Path(directory) / DONE_MARKER).exists()


# ---------------------------------------------------------------------------- prompts


def read_prompts(path: str | Path, image_root: str = "", image_prefix: str = ""
                 ) -> tuple[list[PromptRecord], list[dict]]:
    """Read prompts from JSONL ({id, image, prompt}) or the official CSR JSON list ({id, image, input}).

    Returns (records, skipped) where skipped holds {"id", "line", "reason"} for every unusable
    entry: malformed line, missing field, empty prompt, duplicate id. Image files are checked
    later, when they are opened.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"prompts file not found: {path}")
    text = path.read_text()
    stripped = text.lstrip()
    entries: list[tuple[int, Any]] = []
    skipped: list[dict] = []
    if stripped.startswith("["):
        try:
            entries = list(enumerate(json.loads(text), 1))
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: not valid JSON ({exc})") from None
    else:
        for lineno, raw in enumerate(text.split("\n"), 1):
            if not raw.strip():
                continue
            try:
                entries.append((lineno, json.loads(raw)))
            except json.JSONDecodeError as exc:
                skipped.append({"id": None, "line": lineno, "reason": f"malformed JSON line ({exc.msg})"})
    records: list[PromptRecord] = []
    seen: set[str] = set()
    for lineno, entry in entries:
        if not isinstance(entry, dict):
            skipped.append({"id": None, "line": lineno, "reason": "entry is not an object"})
            continue
        pid = entry.get("id")
        prompt = entry.get("prompt", entry.get("input"))
        image = entry.get("image")
        if pid is None or image is None or prompt is None:
            missing = [k for k, v in (("id", pid), ("image", image), ("prompt", prompt)) if v is None]
            skipped.append({"id": pid, "line": lineno, "reason": f"missing field(s): {', '.join(missing)}"})
            continue
        pid = str(pid)
        prompt = str(prompt).replace("<image>", "").strip()
        if not prompt:
            skipped.append({"id": pid, "line": lineno, "reason": "empty prompt"})
            continue
        if pid in seen:
            skipped.append({"id": pid, "line": lineno, "reason": "duplicate id"})
            continue
        seen.add(pid)
        records.append(PromptRecord(id=pid, image=resolve_image(str(image), image_root, image_prefix), prompt=prompt))
    return records, skipped


def resolve_image(image: str, image_root: str = "", image_prefix: str = "") -> str:
    p = Path(image)
    if image_prefix and not p.name.startswith(image_prefix):
        p = p.with_name(image_prefix + p.name)
    if not p.is_absolute() and image_root:
        p = Path(image_root) / p
    return str(p)


# ---------------------------------------------------------------------------- images


def load_image(path: str | Path, max_pixels: int = 50_000_000):
    """Open an image as RGB. Raises InputError with the reason when it cannot be used.

    Grayscale, palette, CMYK and 16-bit images are converted; transparent images are composited
    on white (what a viewer shows). Missing, empty, corrupt and extreme-size files are refused.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"image not found: {path}")
    if path.stat().st_size == 0:
        raise InputError(f"image file is empty: {path}")
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise InputError(f"image too large ({w}x{h} > {max_pixels} pixels): {path}")
            if min(w, h) < 2 or max(w, h) / min(w, h) > 50:
                raise InputError(f"image has an extreme size ({w}x{h}): {path}")
            img.load()
            if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                bg = Image.new("RGB", rgba.size, (255, 255, 255))
                bg.paste(rgba, mask=rgba.getchannel("A"))
                return bg
            if img.mode == "I;16" or img.mode == "I":
                return img.point(lambda v: v / 256).convert("L").convert("RGB")
            return img.convert("RGB")
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"image cannot be read ({type(exc).__name__}): {path}") from None
