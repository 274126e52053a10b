"""What report.html shows, read from a run directory (report_html.py turns it into the page).

`page_data(run_dir)` returns one JSON-ready dict:
- `overview`: the rounds table (test metrics, words per caption, pairs, DPO numbers, the dev metric the loop
  selects on, the guards' verdict, the selected round);
- `images`: per test image of the CHAIR evaluation its ground-truth objects and, per round, the caption with
  every mention (character span, the synonym-table word that matched, its object, hallucinated or not) and the
  objects it missed. The mentions are CHAIR's own (`benchmarks.chair.caption_mentions`, with the run's synonym
  table); round_<k>/eval/chair_captions.jsonl decides which are hallucinated;
- `pairs`: per round, every preference pair with the per-sentence R_T / R_I / R of both answers (from
  candidates.jsonl), tau, and a seeded sample to show first (of the pairs that are no anchors, when there are).
Whatever is missing or unreadable becomes a line of `notes`; nothing here raises on a bad run directory.
"""

from __future__ import annotations

import base64
import io
import logging
import random
from pathlib import Path
from typing import Any

from . import layout
from .curate import message_text
from .data import read_json, read_jsonl
from .errors import InputError
from .report import collect, round_table

log = logging.getLogger(__name__)

THUMB_PX = 112
"""Longest side of an embedded thumbnail, in pixels."""
SAMPLE_PAIRS = 12
"""Pairs per round shown before the reader asks for more."""


def _json(path: Path) -> Any:
    try:
        return read_json(path)
    except InputError:
        return None


def _round(v: Any, digits: int = 3) -> Any:
    return round(v, digits) if isinstance(v, float) else v


def _strings(value: Any) -> list[str]:
    """A list of strings from a record's field; anything else (a half-written or foreign record) is empty."""
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _rows(path: Path) -> list[dict]:
    return list(read_jsonl(path)) if path.is_file() else []


# ---------------------------------------------------------------------------- overview


def overview(rounds: dict[int, dict], manifest: Any, best: Any) -> dict:
    """The rounds table: columns, rows, the selected round, and the dev metric and guards behind the choice."""
    cols, rows = round_table(rounds)
    at = cols.index("recall") + 1 if "recall" in cols else 1
    cols.insert(at, "words_per_caption")
    for row, r in zip(rows, rounds.values()):
        row.insert(at, ((r.get("eval") or {}).get("chair") or {}).get("words_per_caption"))
    manifest = manifest if isinstance(manifest, dict) else {}
    best = best if isinstance(best, dict) else {}
    cfg = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    loop = cfg.get("loop") if isinstance(cfg.get("loop"), dict) else {}
    select_on = loop.get("select_on") or best.get("select_on")
    verdicts = manifest.get("rounds") if isinstance(manifest.get("rounds"), dict) else {}
    selected = best.get("round", manifest.get("best_round"))
    dev_col = f"dev_{select_on}" if select_on else None
    if dev_col:
        cols.append(dev_col)
    cols.append("guards")
    for row, (k, r) in zip(rows, rounds.items()):
        if dev_col:
            row.append(((r.get("dev_eval") or {}).get("flat") or {}).get(select_on))
        v = verdicts.get(str(k))
        row.append(None if not isinstance(v, dict) or "passes_guards" not in v else
                   ("pass" if v["passes_guards"] else "fail"))
    guards = {**(loop.get("guards") or {}), **{f"{m} (x round 0)": f for m, f in (loop.get("relative_guards") or {})
                                                  .items()}}
    return {"columns": cols, "rows": [[_round(v, 4) for v in row] for row in rows], "selected": selected,
            "select_on": select_on, "guards": guards}


# ---------------------------------------------------------------------------- images


def synonyms_path(run_dir: Path, manifest: Any, given: str | None) -> str | None:
    """The synonym table the run's CHAIR used: the one given, else the config's eval.synonyms ("" = COCO's)."""
    if given:
        return given
    cfg = manifest.get("config") if isinstance(manifest, dict) else None
    if not isinstance(cfg, dict):
        cfg = _yaml(run_dir / "config.yaml")
    return ((cfg or {}).get("eval") or {}).get("synonyms") or None


def _yaml(path: Path) -> dict | None:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def thumbnail(path: str, px: int = THUMB_PX) -> str | None:
    """A small JPEG of the image as a data: URI, or None when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.draft("RGB", (px, px))  # JPEG decodes at a fraction of the size: much faster on large photos
            im = im.convert("RGB")
            im.thumbnail((px, px))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=70)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def caption_entry(row: dict, gt: set[str], vocab, notes: set[str]) -> dict:
    """One round's caption of one image: text, mentions [start, end, word, object, hallucinated], missed objects.

    The spans come from CHAIR's matching with the run's synonym table; when that does not give the objects the
    eval recorded (another table), the eval's own words are listed with no span (start = end = -1)."""
    from .benchmarks.chair import caption_mentions

    caption = str(row.get("caption") or "")
    recorded = _strings(row.get("mentioned"))
    mentions = caption_mentions(caption, vocab) if vocab is not None else []
    if [m.object for m in mentions] == recorded:
        marks = [[m.start, m.end, m.word, m.object, int(m.object not in gt)] for m in mentions]
    else:
        notes.add("Some captions' mentions could not be placed in the text (the synonym table differs from the "
                  "eval's): they are listed under the caption instead.")
        words = _strings(row.get("words")) or recorded
        marks = [[-1, -1, w, o, int(o not in gt)] for w, o in zip(words, recorded)]
    return {"c": caption, "m": marks, "x": sorted(gt - set(recorded))}


def images(run_dir: Path, ks: list[int], vocab, notes: list[str], thumbs: bool = True) -> list[dict]:
    """Per test image: id, file, thumbnail, ground-truth objects, and per round (in ks order) its caption entry."""
    from tqdm import tqdm

    by_id: dict[str, dict] = {}
    files: dict[str, str] = {}
    problems: set[str] = set()
    for slot, k in enumerate(ks):
        eval_dir = layout.stage_dir(run_dir, k, "eval")
        rows = _rows(eval_dir / "chair_captions.jsonl")
        if not rows:
            notes.append(f"round {k}: no eval/chair_captions.jsonl; its captions are not shown.")
            continue
        for s in _rows(eval_dir / "samples.jsonl"):
            if s.get("task") == "chair" and s.get("image"):
                files.setdefault(str(s.get("image_id")), s["image"])
        for row in rows:
            key = str(row.get("image_id"))
            gt = _strings(row.get("gt"))
            entry = by_id.setdefault(key, {"id": row.get("image_id"), "gt": sorted(set(gt)), "r": [None] * len(ks)})
            entry["r"][slot] = caption_entry(row, set(gt), vocab, problems)
    notes.extend(sorted(problems))
    out = list(by_id.values())
    unreadable = 0
    for entry in tqdm(out, desc="report.html thumbnails", disable=not thumbs or len(out) < 50, unit="image"):
        path = files.get(str(entry["id"]))
        entry["file"] = Path(path).name if path else None
        entry["thumb"] = thumbnail(path) if thumbs and path else None
        unreadable += bool(thumbs and path and entry["thumb"] is None)
    if unreadable:
        notes.append(f"{unreadable} test image(s) could not be read: shown without a thumbnail.")
    return out


# ---------------------------------------------------------------------------- pairs


def _side(text: str, answers: list[dict]) -> dict:
    """One side of a pair: its sentences [text, R_T, R_I, R, repeat] from the candidates' answer with that text,
    else its text alone. A row in TRL's standard format carries the end of turn after the answer ("...</s>",
    "...<|im_end|>") and, written as the searched tokens, the space the first word's token holds, so an answer
    matches when the side's text, leading white space aside, starts with it and only such a marker (or white
    space) follows."""
    text, best = text.lstrip(), None
    for a in answers:
        if not (isinstance(a, dict) and isinstance(a.get("text"), str) and isinstance(a.get("sentences"), list)):
            continue
        rest = text[len(a["text"]):].strip() if a["text"] and text.startswith(a["text"]) else None
        if rest is not None and (not rest or rest.startswith("<")) and (best is None or len(a["text"]) > len(best)):
            best, sentences = a["text"], a["sentences"]
    if best is None:
        return {"t": text}
    return {"s": [[s.get("text", ""), _round(s.get("r_t")), _round(s.get("r_i")), _round(s.get("r")),
                   int(bool(s.get("repeat")))] for s in sentences if isinstance(s, dict)]}


def _next_sentence(p: dict, side: str) -> dict:
    """One side of a sentence-level pair: its one next sentence with the rewards the row carries."""
    repeat = int(bool(p.get("rejected_repeat"))) if side == "rejected" else 0
    return {"s": [[message_text(p.get(side)).strip(), _round(p.get(f"{side}_r_t")), _round(p.get(f"{side}_r_i")),
                   _round(p.get(f"{side}_reward")), repeat]]}


def pair_entry(p: dict, answers: list[dict]) -> dict:
    """A pair as the page shows it (short keys: 13k of them go into the page). Either format of pairs.jsonl:
    TRL's conversational messages, or the standard one (rendered chat text, with the `question` beside it) that
    a file holding sentence-level pairs uses."""
    images_ = p.get("images") or [p.get("image")]
    sentence = p.get("level") == "sentence"
    entry = {"id": p.get("id"), "img": Path(str(images_[0])).name if images_ and images_[0] else None,
             "p": str(p.get("question") or message_text(p.get("prompt"))), "m": _round(p.get("margin")),
             "cri": _round(p.get("chosen_r_i")), "rri": _round(p.get("rejected_r_i"))}
    for side, key in (("chosen", "c"), ("rejected", "r")):
        entry[key] = _next_sentence(p, side) if sentence else _side(message_text(p.get(side)), answers)
    for key, short in (("level", "lvl"), ("prefix", "pre"), ("depth", "dep"), ("anchor", "anc"), ("written", "w")):
        if p.get(key):
            entry[short] = p[key]
    return entry


def pairs(run_dir: Path, ks: list[int], notes: list[str], sample: int = SAMPLE_PAIRS) -> list[dict]:
    """Per round with a generate stage: tau, every pair, and the indices of a seeded sample of them."""
    out = []
    for k in ks:
        gen = layout.stage_dir(run_dir, k, "generate")
        if not gen.is_dir():
            continue
        path = layout.pairs_file(gen)
        if not path.is_file():
            notes.append(f"round {k}: no generate/pairs.jsonl; its pairs are not shown.")
            continue
        candidates = {str(c.get("id")): c.get("answers") or [] for c in _rows(gen / "candidates.jsonl")}
        if not candidates:
            notes.append(f"round {k}: no generate/candidates.jsonl; pairs are shown without per-sentence rewards.")
        stats = _json(gen / "stats.json")
        rows = [pair_entry(p, candidates.get(str(p.get("id")), [])) for p in _rows(path)]
        pool = [i for i, r in enumerate(rows) if not r.get("anc")] or list(range(len(rows)))  # anchors: SFT only
        order = random.Random(k).sample(pool, min(sample, len(pool)))
        out.append({"round": k, "tau": _round((stats or {}).get("tau") if isinstance(stats, dict) else None),
                    "pairs": rows, "sample": sorted(order)})
    return out


# ---------------------------------------------------------------------------- all of it


def page_data(run_dir: str | Path, synonyms: str | None = None, thumbs: bool = True) -> dict:
    """Everything report.html shows (see the module docstring); problems go to "notes", never raise."""
    from .benchmarks.chair import load_vocabulary

    run_dir = Path(run_dir)
    notes: list[str] = []
    rounds = collect(run_dir) if run_dir.is_dir() else {}
    manifest, best = _json(run_dir / "manifest.json"), _json(run_dir / "best.json")
    if manifest is None:
        notes.append("No readable manifest.json: the run's config, dev selection and guard verdicts are not shown.")
    if not rounds:
        notes.append("No round_<k>/ directories: nothing was run yet.")
    for k, r in rounds.items():
        if r["missing"]:
            notes.append(f"round {k}: no {', '.join(r['missing'])} output (unfinished or not run).")
    ks = list(rounds)
    data: dict[str, Any] = {"run": run_dir.name, "rounds": ks, "notes": notes, "overview": None, "images": [],
                            "pairs": []}
    try:
        data["overview"] = overview(rounds, manifest, best)
    except Exception as exc:  # noqa: BLE001 - one broken section must not cost the page
        notes.append(f"The rounds table could not be made: {exc}")
    try:
        table = synonyms_path(run_dir, manifest, synonyms)
        try:
            vocab = load_vocabulary(table)
        except InputError as exc:
            notes.append(f"Synonym table: {exc}; mentions are listed, not marked in the text.")
            vocab = None
        data["images"] = images(run_dir, ks, vocab, notes, thumbs)
    except Exception as exc:  # noqa: BLE001
        notes.append(f"The per-image view could not be made: {exc}")
    try:
        data["pairs"] = pairs(run_dir, [k for k in ks if k > 0], notes)
    except Exception as exc:  # noqa: BLE001
        notes.append(f"The pairs view could not be made: {exc}")
    if not data["images"]:
        notes.append("No test captions (round_<k>/eval/chair_captions.jsonl): the per-image view is empty.")
    return data
