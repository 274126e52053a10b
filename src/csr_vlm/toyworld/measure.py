"""Measurements of a toy LLaVA on a split: CHAIR and well-formedness of its captions, POPE, CLIP on its own sentences.

These are what the build uses to pick the base checkpoint and what `csr demo` reports; CHAIR and POPE
are the package's own (benchmarks/chair.py, benchmarks/pope.py), so the toy numbers mean what the COCO ones mean.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..calibration import auc
from ..data import read_json
from . import clip as toyclip
from . import scenes as tw


def _open(world: Path, scenes: list[dict]):
    from PIL import Image

    return [Image.open(world / s["image"]).convert("RGB") for s in scenes]


def _answers(model, processor, images, questions, max_new_tokens: int, batch: int = 100) -> list[str]:
    from ..models import Policy

    policy = Policy(model=model, processor=processor, path="")
    out = []
    for i in range(0, len(images), batch):
        out += policy.generate_answers(images[i:i + batch], questions[i:i + batch], max_new_tokens)
    return out


WELLFORMED = {t.format(tw.type_name(k))[:-1] for t in tw.TEMPLATES for k in range(len(tw.TYPES))}
NOUNS = [noun for _, noun in tw.TYPES]


def parse_answer(answer: str) -> tuple[list[str], list[str]]:
    """(sentences, nouns mentioned in order) of a decoded answer."""
    sentences = [re.sub(r"\s+", " ", s).strip() for s in answer.split(".")]
    sentences = [s for s in sentences if s]
    words = re.findall(r"[a-z]+", answer.lower())
    return sentences, [w for w in words if w in NOUNS]


def is_wellformed(answer: str) -> bool:
    """Every sentence is a caption template with a valid type, and the answer ends with '.'."""
    sentences = parse_answer(answer)[0]
    return bool(sentences) and all(x in WELLFORMED for x in sentences) and answer.strip().endswith(".")


def score_answers(answers: list[str], image_ids: list, world: Path, split: str) -> dict:
    """csr_vlm.chair's CHAIR_i/CHAIR_s/recall/dup against the split's annotations, plus the well-formed rate."""
    from ..benchmarks import chair

    vocab, _, gt = chair.load_ground_truth(Path(world) / f"instances_{split}.json", None, Path(world) / "synonyms.txt")
    res = chair.compute_chair([{"image_id": i, "caption": a} for i, a in zip(image_ids, answers)], gt, vocab)
    out = {k: res[k] for k in ("chair_i", "chair_s", "recall", "dup_rate", "mentions_per_caption")}
    out["wellformed"] = sum(map(is_wellformed, answers)) / max(1, len(answers))
    return out


def describe_metrics(model, processor, world: Path, scenes: list[dict], split: str = "dev") -> tuple[dict, list[str]]:
    """(CHAIR metrics + well-formed rate, greedy answers) of a model's captions of the scenes."""
    model.eval()
    answers = _answers(model, processor, _open(world, scenes), [tw.DESCRIBE_PROMPT] * len(scenes), 40)
    m = score_answers(answers, [s["image_id"] for s in scenes], world, split)
    return {k: round(v, 4) for k, v in m.items()}, answers


def pope_metrics(model, processor, world: Path, split: str, seed: int, num_images: int | None = None) -> dict:
    """csr_vlm.pope's random/popular/adversarial questions on the split's first `num_images` images (those
    with 3 objects), greedy answers."""
    from PIL import Image

    from ..benchmarks import pope

    instances = read_json(Path(world) / f"instances_{split}.json")
    n = min(num_images or len(instances["images"]), len(instances["images"]))
    keep = {im["id"] for im in instances["images"][:n]}
    instances = {**instances, "images": instances["images"][:n],
                 "annotations": [a for a in instances["annotations"] if a["image_id"] in keep]}
    questions = [q for qs in pope.build_questions(instances, n, seed).values() for q in qs]
    if not questions:
        return {}
    images = {q["image"]: Image.open(Path(world) / q["image"]).convert("RGB") for q in questions}
    texts = _answers(model, processor, [images[q["image"]] for q in questions],
                     [q["text"] + tw.POPE_SUFFIX for q in questions], 3)
    res = pope.score(questions, {(q["category"], q["question_id"]): t for q, t in zip(questions, texts)})
    return {"pope_acc": round(res["mean"]["accuracy"], 4), "pope_f1": round(res["mean"]["f1"], 4),
            "pope_yes_ratio": round(res["mean"]["yes_ratio"], 4),
            "pope_adversarial_acc": round(res["adversarial"]["accuracy"], 4)}


def clip_on_hallucinations(clip, world: Path, scenes: list[dict], answers: list[str]) -> dict:
    """CLIP on the base model's own dev sentences: true vs hallucinated (AUC; paired accuracy per image)."""
    tok = toyclip.make_tokenizer(clip=True)
    images = _open(world, scenes)
    rows = []  # (image index, sentence, true?)
    for i, (ans, s) in enumerate(zip(answers, scenes)):
        gt = {NOUNS[o["type"]] for o in s["objects"]}
        for sent in parse_answer(ans)[0]:
            nouns = parse_answer(sent)[1]
            if len(nouns) == 1:
                rows.append((i, sent + ".", nouns[0] in gt))
    if not rows:
        return {}
    scores = toyclip.clip_scores(clip, tok, [images[i] for i, _, _ in rows], [t for _, t, _ in rows])
    truth = np.array([t for _, _, t in rows])
    wins = []
    for i in {i for i, _, t in rows if not t}:
        pos = [sc for (j, _, t), sc in zip(rows, scores) if j == i and t]
        neg = [sc for (j, _, t), sc in zip(rows, scores) if j == i and not t]
        wins += [float(a > b) for a in pos for b in neg]
    return {"n_true": int(truth.sum()), "n_hallucinated": int((~truth).sum()),
            "auc": auc(scores[truth].tolist(), scores[~truth].tolist()),
            "paired_acc": float(np.mean(wins)) if wins else float("nan")}
