"""Files that stages exchange: prompt records, JSON/JSONL I/O that survives a kill and bad bytes, and images.

Every stage talks to the next through small JSONL records. Writers here are atomic (write to
`x.tmp`, then rename) or append-only with one complete line per record. There is one reader of
record files, `read_entries`: a JSON list or JSONL, read entry by entry, where a line that is not
UTF-8 or not JSON costs that line only (it comes back with its number and the reason), and a
half-written last line (a write cut off by a kill) is dropped. `read_jsonl` and `read_records` are
built on it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import InputError
from .yes_no import CAPTION, YES_NO, question_object

log = logging.getLogger(__name__)

DONE_MARKER = "DONE"


@dataclass(frozen=True)
class PromptRecord:
    """One (image, prompt) to search from, and its task: a caption, or a yes/no question about `asked_object`.

    `PromptRecord.of(id, image, prompt)` reads the task from the prompt (yes_no.py), once, when the record
    is made; every stage reads `task` and `asked_object` instead of looking at the prompt text again.
    """

    id: str
    image: str
    prompt: str
    task: str
    asked_object: str | None

    @classmethod
    def of(cls, id: str, image: str, prompt: str) -> PromptRecord:
        """The record of a prompt, its task read from the text (yes_no.task_of)."""
        asked = question_object(prompt)
        return cls(id, image, prompt, YES_NO if asked is not None else CAPTION, asked)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------- JSON / JSONL


def write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON atomically (a tmp file of this process + rename: two processes writing one file never collide)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    """Write JSONL atomically (a tmp file of this process + rename: two processes writing one file never collide)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
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


@dataclass(frozen=True)
class Entry:
    """One entry of a record file: its line (or list position), the parsed value, or why it is unusable."""

    line: int
    value: Any = None
    error: str | None = None


def read_json(path: str | Path, what: str = "file") -> Any:
    """The parsed content of a JSON file; InputError (one line) when it is missing or not JSON.

    Bytes that are not UTF-8 (a Latin-1 "café" in a caption) cannot be given back as they were: they
    become U+FFFD and a warning says where the first one was, so one bad byte does not cost the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found: {path}" if not path.is_dir() else f"{what} is a directory: {path}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        log.warning("%s: not UTF-8 text (byte %#04x at offset %d and maybe others); read with U+FFFD in their place",
                    path, exc.object[exc.start], exc.start)
        text = data.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def read_entries(path: str | Path, what: str = "file") -> Iterator[Entry]:
    """Every entry of a JSON-list or JSONL file, in order; one bad line never stops the others.

    A file whose first non-blank character is `[` is one JSON list (entry i at "line" i, 1-based);
    otherwise each non-blank line is one entry. A line that is not UTF-8 or not JSON (a write cut
    off by a kill included) yields an Entry with `error` set.

    Raises:
        InputError: the file is missing, a directory, or a JSON list that does not parse.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found: {path}" if not path.is_dir() else f"{what} is a directory: {path}")
    if _first_char(path) == b"[":
        for i, value in enumerate(read_json(path, what), 1):
            yield Entry(i, value)
        return
    with path.open("rb") as fh:  # one line in memory at a time: a 50 MB line costs its own size, not the file's
        yield from _line_entries(fh)


def _first_char(path: Path) -> bytes:
    """The first non-blank byte of a file (b"" when it is blank)."""
    with path.open("rb") as fh:
        while chunk := fh.read(65536):
            stripped = chunk.lstrip()
            if stripped:
                return stripped[:1]
    return b""


def _line_entries(fh) -> Iterator[Entry]:
    for lineno, raw in enumerate(fh, 1):
        if not raw or raw.isspace():  # (strip() would copy a long line)
            continue
        try:
            value = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            yield Entry(lineno, error=f"not UTF-8 text (byte {exc.object[exc.start]:#04x} at column {exc.start + 1})")
            continue
        except json.JSONDecodeError as exc:
            yield Entry(lineno, error=f"malformed JSON line ({exc.msg})")
            continue
        yield Entry(lineno, value)


def read_jsonl(path: str | Path, *, strict: bool = False) -> Iterator[dict[str, Any]]:
    """The JSON objects of a record file; bad lines are logged with their number and skipped.

    With strict=True a bad line (or one that is not an object) raises InputError instead.
    """
    for entry in read_entries(path):
        problem = entry.error or (None if isinstance(entry.value, dict) else "not a JSON object")
        if problem:
            if strict:
                raise InputError(f"{path}:{entry.line}: {problem}")
            log.warning("%s:%d: skipping a line: %s", path, entry.line, problem)
            continue
        yield entry.value


def read_records(path: str | Path, required: tuple[str, ...], what: str) -> list[dict]:
    """The objects of a record file that have every `required` field; the others are logged and skipped."""
    records = []
    for entry in read_entries(path, what):
        if entry.error or not isinstance(entry.value, dict) or any(k not in entry.value for k in required):
            log.warning("%s:%d: skipping a record: %s", path, entry.line,
                        entry.error or f"needs {' / '.join(required)}")
            continue
        records.append(entry.value)
    return records


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


def file_sha256(path: str | Path) -> str | None:
    """The sha256 of a file's bytes (read in 1 MiB chunks), or None when there is no such file."""
    path = Path(path)
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def mark_done(directory: str | Path, info: dict[str, Any] | None = None) -> None:
    """Write the completion marker of a stage directory (always the last file written)."""
    write_json(Path(directory) / DONE_MARKER, info or {})


def is_done(directory: str | Path) -> bool:
    """Whether a stage directory has its completion marker."""
    return (Path(directory) / DONE_MARKER).exists()


# ---------------------------------------------------------------------------- prompts


def read_prompts(path: str | Path, image_root: str = "", image_prefix: str = ""
                 ) -> tuple[list[PromptRecord], list[dict]]:
    """Read prompts from any of the formats users have them in (JSONL lines or one JSON list):

    - `{"id", "image", "prompt"}`, this project's own;
    - `{"id", "image", "input"}`, the official CSR prompt file;
    - `{"id", "image", "question"}`, VQA- and POPE-style question files;
    - LLaVA-Instruct `{"id", "image", "conversations": [{"from": "human", "value": "<image>\n..."}, ...]}`:
      the first human (or user) turn is the prompt.

    `<image>` markers are removed from the prompt. A relative image path resolves against image_root, or, when
    that is empty, against the prompts file's own folder, made absolute (so a file kept beside its images works
    from any directory, and so do the pairs written from it); image_prefix is added to its name.

    Returns (records, skipped) where skipped holds {"id", "line", "reason"} for every unusable
    entry: a line that is not UTF-8 or not JSON, an entry that is not an object, a missing or
    wrongly typed field (id: string or integer; image, prompt: strings), an empty prompt, a
    duplicate id. Image files are checked later, when they are opened.
    """
    root = image_root or str(Path(path).resolve().parent)
    records: list[PromptRecord] = []
    unreadable: list[dict] = []  # reported first: a line that is no JSON, then every other skip in file order
    skipped: list[dict] = []
    seen: set[str] = set()
    for entry in read_entries(path, "prompts file"):
        fields, skip = _prompt_fields(entry)
        if fields is not None and fields[0] in seen:
            fields, skip = None, {"id": fields[0], "line": entry.line, "reason": "duplicate id"}
        if fields is None:
            (unreadable if entry.error else skipped).append(skip)
            continue
        pid, image, prompt = fields
        seen.add(pid)
        records.append(PromptRecord.of(pid, resolve_image(image, root, image_prefix), prompt))
    return records, unreadable + skipped


def _prompt_fields(entry: Entry) -> tuple[tuple[str, str, str] | None, dict | None]:
    """((id, image, prompt), None) for a usable prompts-file entry, else (None, its skip record {id, line, reason})."""
    lineno, value = entry.line, entry.value
    if entry.error:
        return None, {"id": None, "line": lineno, "reason": entry.error}
    if not isinstance(value, dict):
        return None, {"id": None, "line": lineno, "reason": f"entry is not an object ({_json_type(value)})"}
    pid, prompt, image = value.get("id"), prompt_text(value), value.get("image")
    readable_id = pid if isinstance(pid, (str, int)) and not isinstance(pid, bool) else None
    if pid is None or image is None or prompt is None:
        missing = [k for k, v in (("id", pid), ("image", image), ("prompt", prompt)) if v is None]
        return None, {"id": readable_id, "line": lineno, "reason": f"missing field(s): {', '.join(missing)}"
                      + (" (looked for prompt, input, question or a human turn in conversations)"
                         if prompt is None else "")}
    wrong = [f"{k} is {_json_type(v)}, not {want}" for k, v, want in (
        ("id", pid, "a string or an integer"), ("image", image, "a string"), ("prompt", prompt, "a string"))
        if not (isinstance(v, str) or (k == "id" and isinstance(v, int) and not isinstance(v, bool)))]
    if wrong:
        return None, {"id": readable_id, "line": lineno, "reason": f"wrong field type(s): {'; '.join(wrong)}"}
    prompt = (prompt.replace("<image>", "") if "<image>" in prompt else prompt).strip()
    if not prompt:
        return None, {"id": str(pid), "line": lineno, "reason": "empty prompt"}
    return (str(pid), str(image), prompt), None


PROMPT_FIELDS = ("prompt", "input", "question")
"""The fields a prompt may sit in, first found wins (this project's, the official CSR file's, question files')."""


def prompt_text(entry: dict) -> Any:
    """The prompt of a prompts-file entry (see read_prompts), or None when it has none; not yet type-checked."""
    for key in PROMPT_FIELDS:
        if key in entry and entry[key] is not None:
            return entry[key]
    turns = entry.get("conversations")
    if isinstance(turns, list):
        for turn in turns:
            if isinstance(turn, dict) and str(turn.get("from", turn.get("role", ""))).lower() in ("human", "user"):
                return turn.get("value", turn.get("content"))
    return None


def _json_type(value: Any) -> str:
    """How JSON would name a value's type: 'a list', 'a number', 'null', ..."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def resolve_image(image: str, image_root: str = "", image_prefix: str = "") -> str:
    """An image path with image_prefix added to its name; a relative one is joined to image_root (if set)."""
    p = Path(image)
    if image_prefix and not p.name.startswith(image_prefix):
        p = p.with_name(image_prefix + p.name)
    if not p.is_absolute() and image_root:
        p = Path(image_root) / p
    return str(p)


# ---------------------------------------------------------------------------- images


def load_image(path: str | Path, max_pixels: int = 50_000_000):
    """Open an image as RGB: the one loader of every stage (generate, eval, the tau calibration, and the data
    collator of `csr train`), so each sees the same pixels. Raises InputError with the reason when it cannot be used.

    The pixels are what a viewer shows: the EXIF orientation is applied (a photo stored sideways comes out
    upright), transparent images are composited on white, grayscale, palette and CMYK are converted, 16-bit
    images are scaled from their full range (65535 -> 255), and float images (TIFF mode F) from 0-1 (or taken as
    0-255 when a value passes 1). A float image with values outside 0-255 or not finite, or a 32-bit integer
    image past 16 bits, is refused with the reason, never made black or white. Missing, empty, corrupt and
    extreme-size files are refused.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if path.is_dir():
        raise InputError(f"image is a directory, not a file: {path}")
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
            return _to_rgb(ImageOps.exif_transpose(img), path)
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InputError(f"image cannot be read ({type(exc).__name__}): {path}") from None


def _to_rgb(img, path: Path):
    """An opened image as 8-bit RGB (see load_image)."""
    import numpy as np
    from PIL import Image

    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    if img.mode.startswith("I"):  # I;16, I;16B, I;16L (16-bit PNG / TIFF) and I (32-bit)
        values = np.asarray(img).astype(np.int64)
        if values.min() < 0 or values.max() > 65535:
            raise InputError(f"image has 32-bit values outside 0-65535 ({values.min()} to {values.max()}): {path}")
        return Image.fromarray(np.rint(values / 257).astype(np.uint8), "L").convert("RGB")
    if img.mode == "F":
        values = np.asarray(img, dtype=np.float64)
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 255:
            raise InputError(f"float image has values outside 0-255 or not finite ({np.nanmin(values):g} to "
                             f"{np.nanmax(values):g}): {path}")
        scale = 255.0 if values.max() <= 1.0 else 1.0
        return Image.fromarray(np.rint(values * scale).astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")
