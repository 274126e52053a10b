"""CHAIR (Rohrbach et al., EMNLP'18): how many objects a caption names that are not in the image.

This follows the `utils/chair.py` / Python 3 port version of the metric (LisaAnne/Hallucination,
Maxlinn's CHAIR-metric-standalone): every mention counts, duplicates included.

- Ground truth per image = the objects of its instance annotations (category ids looked up in the
  file's own `categories`) + the objects found in its reference captions.
- `caption_to_words`: sentence split, word tokenise, lower case, singularise, merge two-word names
  ("hot dog" is no dog, "teddy bear" no bear, "baby elephant" an elephant, "toilet seat" a toilet),
  drop "seat" when "toilet" is present, keep words of the synonym table, map them to canonical names.
- CHAIR_s = captions with >= 1 hallucinated mention / captions; CHAIR_i = hallucinated mentions /
  mentions; recall = sum |GT & mentioned| / sum |GT|; dup_rate = repeated mentions of an object the
  same caption already named / mentions.

Differences from the original, all offline (the tokeniser and singulariser are words.py's):
- A token that is already a word of the synonym table is kept as is ("skis", "scissors", "people"); a plural
  whose stem without s / es is a table word becomes that word ("taxis", "corgis", "broccolis", "tvs", "zebus",
  "magpies", which the rules alone miss); other words take the rule-based singular;
  the `wine glas` rule is kept for text that already has the pattern.en spelling.
- Every multi-word entry of the synonym table is matched as a phrase too (longest match first; the
  fixed double-word table wins on ties), so other tables (e.g. the toy world's) work. On the COCO
  table this changes only "stove top oven" (one oven instead of two mentions).
- Table entries are stripped and lower-cased (the original keeps " motor bike" with its leading space
  and "iPhone", which therefore never match).
- Captions of images absent from the ground truth are counted and reported, not scored (the port
  scores them against an empty set; the old script crashes).
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..data import read_entries, read_json, resolve_image, write_jsonl
from ..errors import InputError
from .task import Metric, Plan, Task, job_key
from .words import singularize, token_spans, tokenize

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------- vocabulary

COCO_DOUBLE_WORDS = [
    "motor bike", "motor cycle", "air plane", "traffic light", "street light", "traffic signal", "stop light",
    "fire hydrant", "stop sign", "parking meter", "suit case", "sports ball", "baseball bat", "baseball glove",
    "tennis racket", "wine glass", "hot dog", "cell phone", "mobile phone", "teddy bear", "hair drier",
    "potted plant", "bow tie", "laptop computer", "stove top oven", "home plate", "train track",
]
ANIMAL_WORDS = ["bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub"]


def double_word_dict() -> dict[str, str]:
    """The original's two-word merge table (input pair -> word emitted)."""
    table = {w: w for w in COCO_DOUBLE_WORDS}
    for animal in ANIMAL_WORDS:
        table[f"baby {animal}"] = animal
        table[f"adult {animal}"] = animal
    for vehicle in ("jet", "train"):
        table[f"passenger {vehicle}"] = vehicle
    table["bow tie"] = "tie"
    table["toilet seat"] = "toilet"
    table["wine glas"] = "wine glass"
    return table


@dataclass
class Vocabulary:
    """The synonym table: surface word -> canonical object, and the phrases merged into one token."""

    canonical: dict[str, str]
    phrases: dict[tuple[str, ...], str] = field(default_factory=dict)
    max_phrase: int = 2

    def canonical_of(self, name: str) -> str:
        """The canonical object of a category or surface name (singularised, phrases merged); the name if none."""
        name = name.strip().lower()
        if name in self.canonical:
            return self.canonical[name]
        merged = merge_phrases([singularize(w) for w in name.split()], self)
        return self.canonical.get(merged[0], name) if len(merged) == 1 else name


def default_synonyms_path() -> Path:
    """The COCO synonym table shipped in the package (csr_vlm/data/coco_synonyms.txt)."""
    return Path(str(resources.files("csr_vlm").joinpath("data/coco_synonyms.txt")))


def load_vocabulary(path: str | Path | None = None) -> Vocabulary:
    """Read a synonym table (`canonical, synonym, ...` per line); None or "" = the shipped COCO table."""
    path = Path(path) if path else default_synonyms_path()
    if not path.is_file():
        raise InputError(f"synonym table not found: {path}")
    canonical: dict[str, str] = {}
    for line in path.read_text().splitlines():
        entries = [e.strip().lower() for e in line.split(",") if e.strip()]
        for entry in entries:
            canonical[entry] = entries[0]  # later lines win, as in the original
    if not canonical:
        raise InputError(f"synonym table is empty: {path}")
    phrases: dict[tuple[str, ...], str] = {}
    for entry in canonical:
        if " " in entry:
            phrases[tuple(singularize(w) for w in entry.split())] = entry
    for pair, mapped in double_word_dict().items():  # the fixed table wins over table phrases
        phrases[tuple(pair.split())] = mapped
        phrases[tuple(singularize(w) for w in pair.split())] = mapped
    return Vocabulary(canonical, phrases, max(len(k) for k in phrases))


def merge_phrases(words: list[str], vocab: Vocabulary) -> list[str]:
    """Left-to-right longest-match merge of multi-word names into one token each."""
    return [word for word, _, _ in merged_runs(words, vocab)]


def merged_runs(words: list[str], vocab: Vocabulary) -> list[tuple[str, int, int]]:
    """`merge_phrases` with the input words each output word covers: (word, first index, end index)."""
    out: list[tuple[str, int, int]] = []
    i = 0
    while i < len(words):
        for n in range(min(vocab.max_phrase, len(words) - i), 1, -1):
            mapped = vocab.phrases.get(tuple(words[i : i + n]))
            if mapped is not None:
                out.append((mapped, i, i + n))
                i += n
                break
        else:
            out.append((words[i], i, i + 1))
            i += 1
    return out


def table_singular(token: str, vocab: Vocabulary) -> str:
    """The token's singular as the synonym table knows it: the token itself if the table has it, else the token
    without its final s or es if the table has that ("taxis", "tvs", "zebus", "magpies", "buses"), else the
    rule-based singular (which keeps words in -is / -us, as "this", "glass", "bus" need)."""
    if token in vocab.canonical:
        return token
    for cut in (1, 2):
        if token.endswith("s") and token[:-cut] in vocab.canonical:
            return token[:-cut]
    return singularize(token)


@dataclass(frozen=True)
class Mention:
    """One object a caption names: the synonym-table word that matched, its canonical object, and where."""

    word: str
    """The table's word (singular, a phrase merged into one), e.g. "puppy" or "hot dog"."""
    object: str
    """Its canonical object, e.g. "dog"."""
    start: int
    """Character span of the mention in the caption: caption[start:end] is what the caption wrote ("puppies")."""
    end: int


def caption_mentions(caption: str, vocab: Vocabulary) -> list[Mention]:
    """Every object mention of a caption, in order, duplicates kept: CHAIR's matching (`caption_to_words` is
    this without the spans)."""
    spans = token_spans(caption or "")
    runs = merged_runs([table_singular(t, vocab) for t, _, _ in spans], vocab)
    drop_seat = any(w == "toilet" for w, _, _ in runs) and any(w == "seat" for w, _, _ in runs)
    return [Mention(w, vocab.canonical[w], spans[i][1], spans[j - 1][2]) for w, i, j in runs
            if w in vocab.canonical and not (drop_seat and w == "seat")]


def caption_to_words(caption: str, vocab: Vocabulary) -> tuple[list[str], list[str]]:
    """(surface object words, canonical object words) of a caption, in order, duplicates kept."""
    mentions = caption_mentions(caption, vocab)
    return [m.word for m in mentions], [m.object for m in mentions]


def count_words(caption: str) -> int:
    """Word tokens of a caption (punctuation not counted)."""
    return sum(1 for t in tokenize(caption or "") if t[0].isalnum())


# ---------------------------------------------------------------------------- ground truth


def norm_image_id(value: Any) -> Any:
    """COCO ids as ints: 42, "42" and "COCO_val2014_000000000042.jpg" are the same image."""
    if isinstance(value, int):
        return value
    text = str(value)
    if text.isdigit():
        return int(text)
    digits = re.findall(r"\d+", Path(text).stem)
    return int(digits[-1]) if digits and Path(text).stem.endswith(digits[-1]) else text


_ID = (int, str)
_INSTANCE_FIELDS = {"images": {"id": _ID, "file_name": str}, "annotations": {"image_id": _ID, "category_id": _ID},
                    "categories": {"id": _ID, "name": str}}
_REQUIRED = {"images": ("id",), "annotations": ("image_id", "category_id"), "categories": ("id", "name")}


def load_instances(path: str | Path, skipped: list[dict] | None = None) -> dict:
    """A COCO instances file with its unusable entries left out.

    An entry of images / annotations / categories that is not an object, lacks a required field
    (images: id; annotations: image_id, category_id; categories: id, name) or has one of the wrong
    type is dropped with a warning, and {"source", "entry", "reason"} is appended to `skipped`.

    Raises:
        InputError: the file is missing, not JSON, or not an instances file at all.
    """
    data = read_json(path, "annotations file")
    if not isinstance(data, dict) or not {"annotations", "categories"} <= set(data):
        raise InputError(f"{path}: not a COCO instances file (needs 'annotations' and 'categories')")
    clean = dict(data)
    for key, fields in _INSTANCE_FIELDS.items():
        entries = data.get(key, [])
        if not isinstance(entries, list):
            raise InputError(f"{path}: '{key}' must be a list")
        kept = []
        for n, entry in enumerate(entries):
            reason = _entry_problem(entry, _REQUIRED[key], fields)
            if reason is None:
                kept.append(entry)
                continue
            log.warning("%s: %s[%d] skipped: %s", path, key, n, reason)
            if skipped is not None:
                skipped.append({"source": str(path), "entry": f"{key}[{n}]", "reason": reason})
        clean[key] = kept
    return clean


def _entry_problem(entry: Any, required: tuple[str, ...], fields: dict[str, type | tuple]) -> str | None:
    if not isinstance(entry, dict):
        return "not an object"
    lacking = [k for k in required if k not in entry]
    if lacking:
        return f"has no {' / '.join(lacking)}"
    wrong = [k for k, tp in fields.items() if k in entry and (not isinstance(entry[k], tp) or isinstance(entry[k],
                                                                                                         bool))]
    return f"wrong type of {', '.join(wrong)}" if wrong else None


def ground_truth(instances: dict, vocab: Vocabulary, gt_captions: dict | None = None) -> dict[Any, set[str]]:
    """Canonical objects per image id: instance categories + objects named in the reference captions."""
    names = {c["id"]: c["name"] for c in instances.get("categories", [])}
    gt: dict[Any, set[str]] = {norm_image_id(im["id"]): set() for im in instances.get("images", [])}
    for ann in instances.get("annotations", []):
        cat = ann.get("category_id")
        if cat not in names:
            log.warning("annotation %s: category id %s is not in 'categories'; ignored", ann.get("id"), cat)
            continue
        gt.setdefault(norm_image_id(ann["image_id"]), set()).add(vocab.canonical_of(names[cat]))
    for ann in (gt_captions or {}).get("annotations", []):
        _, nodes = caption_to_words(ann.get("caption", ""), vocab)
        gt.setdefault(norm_image_id(ann["image_id"]), set()).update(nodes)
    return gt


def load_ground_truth(instances: str | Path, captions: str | Path | None = None,
                      synonyms: str | Path | None = None) -> tuple[Vocabulary, dict, dict[Any, set[str]]]:
    """(synonym table, instances, canonical objects per image) from the files CHAIR needs.

    Args:
        instances: COCO instances JSON. captions: COCO captions JSON (objects named there count too).
        synonyms: synonym table (None: the shipped COCO table).
    """
    vocab = load_vocabulary(synonyms)
    data = load_instances(instances)
    caps = read_json(captions, "captions file") if captions else None
    return vocab, data, ground_truth(data, vocab, caps)


# ---------------------------------------------------------------------------- metrics


def read_captions(path: str | Path) -> list[dict]:
    """Generated captions: JSONL {image_id, caption}, a JSON list of them, or the original {"imgToEval": {...}}."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"captions file not found: {path}")
    head = path.read_bytes()[:2000].lstrip()
    if head.startswith(b"{") and b'"imgToEval"' in head:
        records = list(enumerate(read_json(path, "captions file")["imgToEval"].values(), 1))
    else:
        records = [(e.line, e.value) for e in read_entries(path, "captions file")]
    out = []
    for i, rec in records:
        if not isinstance(rec, dict) or "image_id" not in rec or "caption" not in rec:
            log.warning("%s: record %d has no image_id/caption; skipped", path, i)
            continue
        out.append({"image_id": norm_image_id(rec["image_id"]), "caption": rec["caption"] or ""})
    return out


def compute_chair(captions: list[dict], gt: dict[Any, set[str]], vocab: Vocabulary) -> dict:
    """CHAIR over [{image_id, caption}]: totals plus per-caption mentioned and hallucinated objects."""
    n_caps = n_halluc_caps = mentions = halluc = dups = words = gt_total = gt_hit = 0
    per_caption, unknown = [], []
    for rec in captions:
        image_id = norm_image_id(rec["image_id"])
        if image_id not in gt:
            unknown.append(image_id)
            continue
        objects = gt[image_id]
        surface, nodes = caption_to_words(rec["caption"], vocab)
        hallucinated = [n for n in nodes if n not in objects]
        n_caps += 1
        n_halluc_caps += bool(hallucinated)
        mentions += len(nodes)
        halluc += len(hallucinated)
        dups += len(nodes) - len(set(nodes))
        words += count_words(rec["caption"])
        gt_total += len(objects)
        gt_hit += len(objects & set(nodes))
        per_caption.append({"image_id": image_id, "caption": rec["caption"], "words": surface, "mentioned": nodes,
                            "hallucinated": hallucinated, "gt": sorted(objects)})
    if unknown:
        log.warning("%d caption(s) name images absent from the ground truth (e.g. %s); not scored",
                    len(unknown), unknown[:3])
    return {
        "chair_s": _ratio(n_halluc_caps, n_caps),
        "chair_i": _ratio(halluc, mentions),
        "recall": _ratio(gt_hit, gt_total),
        "dup_rate": _ratio(dups, mentions),
        "mentions_per_caption": _ratio(mentions, n_caps),
        "words_per_caption": _ratio(words, n_caps),
        "n_captions": n_caps,
        "n_mentions": mentions,
        "n_hallucinated": halluc,
        "n_unknown_images": len(unknown),
        "unknown_image_ids": [str(u) for u in unknown[:20]],
        "per_caption": per_caption,
    }


def caption_chair_i(caption: str, objects: set[str], vocab: Vocabulary) -> tuple[float, float, int]:
    """(chair_i, recall, mentions) of one caption against one image's ground truth."""
    _, nodes = caption_to_words(caption, vocab)
    halluc = sum(1 for n in nodes if n not in objects)
    return _ratio(halluc, len(nodes)), _ratio(len(objects & set(nodes)), len(objects)), len(nodes)


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


# ---------------------------------------------------------------------------- the task


def sample_images(instances: dict, num_images: int, seed: int) -> list[dict]:
    """Seeded sample of the instances file's images (sorted by id first, so file order does not matter)."""
    images = sorted(instances.get("images", []), key=lambda im: str(im["id"]).zfill(20))
    return random.Random(seed).sample(images, min(num_images, len(images)))


def _plan(ev, seed: int, instances: dict) -> Plan:
    """One caption job per sampled image; the synonym table and reference captions load now (bad paths fail first)."""
    vocab = load_vocabulary(ev.synonyms)
    captions = read_json(ev.gt_captions, "eval.gt_captions") if ev.gt_captions else None
    jobs = [{"task": "chair", "image_id": im["id"], "image": resolve_image(im.get("file_name", ""), ev.image_root),
             "prompt": ev.prompt, "max_new_tokens": ev.max_new_tokens}
            for im in sample_images(instances, ev.num_images, seed)]
    return Plan(jobs, (vocab, captions, instances))


def _score(plan: Plan, answers: dict, ev, out: Path) -> dict:
    """CHAIR of the captions; per-caption objects go to chair_captions.jsonl."""
    vocab, captions, instances = plan.context
    gt = ground_truth(instances, vocab, captions)
    caps = [{"image_id": j["image_id"], "caption": answers[job_key(j)]} for j in plan.jobs if job_key(j) in answers]
    result = compute_chair(caps, gt, vocab)
    write_jsonl(Path(out) / "chair_captions.jsonl", result.pop("per_caption"))
    return result


TASK = Task(
    name="chair", label="CHAIR caption", plan=_plan, score=_score,
    metrics=(
        Metric("chair_s", True, "CHAIR_s: share of captions naming at least one object that is not in the image",
               ("chair_s",), plot=True),
        Metric("chair_i", True, "CHAIR_i: share of object mentions that are hallucinated", ("chair_i",), plot=True),
        Metric("recall", False, "recall: share of the image's ground-truth objects that the caption names",
               ("recall",), plot=True),
        Metric("dup_rate", True, "dup_rate: share of object mentions that repeat an object the caption already "
               "named", ("dup_rate",)),
    ),
)
