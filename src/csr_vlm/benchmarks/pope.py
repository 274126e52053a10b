"""POPE (Li et al., EMNLP'23): yes/no questions "Is there a X in the image?" built from object annotations.

Building follows AoiDragon/POPE `main.py` + `utils.py`: keep images with >= 3 distinct objects,
sample `num_images` of them (seeded), count object frequencies and co-occurrences over that pool
only, and for each image ask about its first three objects (label yes), each followed by one
negative (label no) that is neither in the image nor already asked about for it:

- random: uniform over the pool's distinct objects;
- popular: the most frequent valid object of the pool;
- adversarial: the valid object co-occurring most often with that positive; random if none.

Ties keep first-seen order (Python's stable sort, as in the original). Differences: the random
draw picks among valid objects directly (the original redraws until valid), each split has its
own seeded generator, and vowel-initial objects get "an" without the original's "imange" typo
(parsers still accept it). Question ids restart at 1 per split, as in the official files.

Answer parsers: yes_no.py.
"""

from __future__ import annotations

import logging
import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from ..data import read_records, resolve_image, write_jsonl
from ..errors import InputError
from ..yes_no import SPLITS, TEMPLATE, parse_answer, question_object, with_article
from .task import Metric, Plan, Task, job_key

log = logging.getLogger(__name__)



# ---------------------------------------------------------------------------- building


def image_objects(instances: dict) -> list[dict]:
    """[{image_id, image, objects}] per image: distinct category names in annotation order."""
    names = {c["id"]: c["name"] for c in instances.get("categories", [])}
    files = {im["id"]: im.get("file_name", str(im["id"])) for im in instances.get("images", [])}
    objects: dict[Any, list[str]] = defaultdict(list)
    for ann in instances.get("annotations", []):
        name = names.get(ann.get("category_id"))
        if name is not None and name not in objects[ann["image_id"]]:
            objects[ann["image_id"]].append(name)
    return [{"image_id": i, "image": files.get(i, str(i)), "objects": objs} for i, objs in objects.items()]


def question(qid: int, im: dict, obj: str, label: str, split: str, template: str = TEMPLATE) -> dict:
    """One question record; "an" before a vowel-initial object (without the original's "imange")."""
    text = with_article(template, obj)
    return {"question_id": qid, "image": im["image"], "image_id": im["image_id"], "text": text, "label": label,
            "object": obj, "category": split}


def sample_pool(instances: dict, num_images: int, seed: int, sample_num: int = 3) -> list[dict]:
    """The seeded image pool: images with >= sample_num distinct objects, sorted by id, then sampled."""
    eligible = sorted((im for im in image_objects(instances) if len(im["objects"]) >= sample_num),
                      key=lambda im: str(im["image_id"]).zfill(20))
    if len(eligible) < num_images:
        log.warning("POPE: only %d images have >= %d objects (asked for %d); using all", len(eligible), sample_num,
                    num_images)
    return random.Random(seed).sample(eligible, min(num_images, len(eligible)))


def build_split(pool: list[dict], split: str, seed: int, sample_num: int = 3, template: str = TEMPLATE) -> list[dict]:
    """The questions of one split over an image pool (see the module docstring for the rules)."""
    if split not in SPLITS:
        raise InputError(f"eval.pope_splits: unknown split {split!r}; choose from {', '.join(SPLITS)}")
    rng = random.Random(f"{seed}:{split}")
    freq = Counter(o for im in pool for o in im["objects"])
    popular = [o for o, _ in sorted(freq.items(), key=lambda kv: -kv[1])]  # stable: ties in first-seen order
    cooc: dict[str, Counter] = defaultdict(Counter)
    for im in pool:
        for a in im["objects"]:
            cooc[a].update(b for b in im["objects"] if b != a)
    questions: list[dict] = []
    for im in pool:
        asked: list[str] = []
        for pos in im["objects"][:sample_num]:
            asked.append(pos)
            questions.append(question(len(questions) + 1, im, pos, "yes", split, template))
            valid = [o for o in popular if o not in asked and o not in im["objects"]]
            if not valid:
                log.warning("POPE %s: no negative object left for image %s", split, im["image"])
                continue
            if split == "popular":
                neg = valid[0]
            elif split == "adversarial":
                ranked = [o for o, _ in sorted(cooc[pos].items(), key=lambda kv: -kv[1]) if o in valid]
                neg = ranked[0] if ranked else rng.choice(valid)
            else:
                neg = rng.choice([o for o in freq if o in valid])  # first-seen order
            asked.append(neg)
            questions.append(question(len(questions) + 1, im, neg, "no", split, template))
    return questions


def build_questions(instances: dict, num_images: int, seed: int, splits: list[str] | tuple[str, ...] = SPLITS
                    ) -> dict[str, list[dict]]:
    """The questions of each split over one seeded image pool: {split: [question records]}."""
    pool = sample_pool(instances, num_images, seed)
    return {split: build_split(pool, split, seed) for split in splits}


# ---------------------------------------------------------------------------- metrics


def metrics(labels: list[str], preds: list[str]) -> dict:
    """Accuracy, precision, recall, F1 (positive class yes) and yes-ratio of the predictions."""
    tp = sum(1 for g, p in zip(labels, preds) if g == "yes" and p == "yes")
    fp = sum(1 for g, p in zip(labels, preds) if g != "yes" and p == "yes")
    fn = sum(1 for g, p in zip(labels, preds) if g == "yes" and p != "yes")
    tn = len(labels) - tp - fp - fn
    n = len(labels)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "accuracy": (tp + tn) / n if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "yes_ratio": (tp + fp) / n if n else 0.0,
        "n": n, "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "n_unknown": sum(1 for p in preds if p == "unknown"),
    }


def score(questions: list[dict], answers: dict[tuple[str, Any], str], parser: str = "default") -> dict:
    """Per-split metrics plus their mean; `answers` maps (split, question_id) -> text. Missing ones are counted."""
    by_split: dict[str, tuple[list, list]] = {}
    missing: Counter = Counter()
    for q in questions:
        split = q.get("category", "all")
        key = (split, q["question_id"])
        if key not in answers:
            missing[split] += 1
            continue
        labels, preds = by_split.setdefault(split, ([], []))
        labels.append(str(q["label"]).strip().lower())
        preds.append(parse_answer(answers[key], parser))
    out: dict[str, Any] = {split: metrics(*lp) for split, lp in by_split.items()}
    for split, n in missing.items():
        out.setdefault(split, metrics([], []))["n_missing"] = n
        log.warning("POPE %s: %d question(s) have no answer; scored the rest", split, n)
    if out:
        keys = ("accuracy", "precision", "recall", "f1", "yes_ratio")
        splits = [s for s in out if out[s]["n"]]
        out["mean"] = {k: sum(out[s][k] for s in splits) / len(splits) if splits else 0.0 for k in keys}
        out["mean"]["n"] = sum(out[s]["n"] for s in splits)
    out["parser"] = parser
    return out


# ---------------------------------------------------------------------------- files


def split_of(path: str | Path) -> str:
    """The POPE split a question file's name says (random, popular, adversarial), else its stem."""
    name = Path(path).stem.lower()
    return next((s for s in SPLITS if s in name), name)


def read_questions(path: str | Path) -> list[dict]:
    """Official question files (JSONL question_id, image, text, label); split from `category` or the file name."""
    default = split_of(path)
    questions = read_records(path, ("question_id", "text", "label"), "POPE questions file")
    for q in questions:
        q["category"] = str(q.get("category") or default)
        q.setdefault("object", question_object(q["text"]))
    return questions


def read_answers(path: str | Path) -> dict[Any, str]:
    """Answer files (JSONL question_id, text) -> {question_id: text}."""
    return {a["question_id"]: str(a.get("text") or "") for a in read_records(path, ("question_id",), "answers file")}


# ---------------------------------------------------------------------------- the task


def _plan(ev, seed: int, instances: dict) -> Plan:
    """The questions (eval.pope_questions, or built from the annotations) and one job per distinct (image, prompt):
    the positives repeat across splits and are answered once."""
    if ev.pope_questions:
        questions = [q for q in read_questions(ev.pope_questions)
                     if q["category"] in ev.pope_splits or q["category"] not in SPLITS]
    else:
        built = build_questions(instances, ev.num_images, seed, ev.pope_splits)
        questions = [q for split in ev.pope_splits for q in built[split]]
    jobs: dict[tuple[str, str], dict] = {}
    for q in questions:
        image = resolve_image(str(q.get("image", "")), ev.image_root)
        prompt = q["text"] + ev.pope_suffix
        jobs.setdefault((image, prompt), {"task": "pope", "image_id": q.get("image_id"), "image": image,
                                          "prompt": prompt, "max_new_tokens": ev.pope_max_new_tokens})
        q["_job"] = jobs[(image, prompt)]
    return Plan(list(jobs.values()), questions)


def _score(plan: Plan, answers: dict, ev, out: Path) -> dict:
    """POPE metrics per split and their mean; the questions go to pope_questions.jsonl."""
    questions = plan.context
    found = {(q["category"], q["question_id"]): answers[job_key(q["_job"])] for q in questions
             if job_key(q["_job"]) in answers}
    clean = [{k: v for k, v in q.items() if k != "_job"} for q in questions]
    write_jsonl(Path(out) / "pope_questions.jsonl", clean)
    return score(clean, found, ev.pope_parser)


TASK = Task(
    name="pope", label="POPE answer", plan=_plan, score=_score,
    needs_annotations=lambda ev: not ev.pope_questions,
    metrics=(
        Metric("pope_f1", False, "POPE F1: yes/no questions about objects, F1 of answering 'yes'", ("mean", "f1"),
               plot=True),
        Metric("pope_acc", False, "POPE accuracy", ("mean", "accuracy")),
        Metric("pope_yes_ratio", False, "POPE yes-ratio: share of 'yes' answers; 0.5 is ideal, the questions are "
               "balanced", ("mean", "yes_ratio")),
    ),
)
