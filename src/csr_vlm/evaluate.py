"""`csr eval`: greedy CHAIR captions and POPE answers from a policy, scored into metrics.json.

    csr eval --config F [key=value ...]      (or --model DIR)

Setup: sample `eval.num_images` images (seeded by `seed`) from `eval.annotations`; build the POPE
splits from the same annotations (or read `eval.pope_questions`). Work: caption each image with
`eval.prompt` and answer each POPE question + `eval.pope_suffix`, greedily, in batches of
`eval.batch_size`; every prompt and answer is appended to samples.jsonl as it comes, so a killed
run resumes where it stopped. Save: metrics.json (format in docs/formats.md, with the protocol
that published numbers depend on), chair_captions.jsonl (objects mentioned / hallucinated per
caption), config.yaml and DONE. Images that are missing or unreadable are logged and skipped (skipped.jsonl);
if no caption / POPE answer at all could be produced, it fails instead of scoring nothing.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

from . import chair, pope
from .config import RunConfig, check_reusable, save_config
from .data import InputError, is_done, load_image, mark_done, read_jsonl, repair_jsonl, resolve_image, write_json
from .data import DONE_MARKER, append_jsonl, write_jsonl

log = logging.getLogger(__name__)

FLAT_KEYS = ("chair_s", "chair_i", "recall", "dup_rate")


def flat_metrics(metrics: dict) -> dict:
    """The one-level summary the loop selects on: chair_s, chair_i, recall, dup_rate, pope_f1/acc/yes_ratio."""
    flat: dict[str, float] = {}
    c = metrics.get("chair") or {}
    flat.update({k: c[k] for k in FLAT_KEYS if k in c})
    mean = (metrics.get("pope") or {}).get("mean") or {}
    for key, name in (("f1", "pope_f1"), ("accuracy", "pope_acc"), ("yes_ratio", "pope_yes_ratio")):
        if key in mean:
            flat[name] = mean[key]
    return flat


def run(cfg: RunConfig, round: int = 0) -> Path:
    out = Path(cfg.out)
    if is_done(out) and not cfg.overwrite:
        check_reusable(out, cfg, ("seed", "model.path", "eval"))
        log.info("eval: %s is done; skipping (overwrite=true redoes it)", out)
        return out
    ev = cfg.eval
    unknown = [t for t in ev.tasks if t not in ("chair", "pope")]
    if unknown:
        raise InputError(f"eval.tasks: unknown task(s) {unknown}; choose from chair, pope")
    if not ev.annotations and ("chair" in ev.tasks or not ev.pope_questions):
        raise InputError("eval.annotations is not set (a COCO instances JSON)")
    if "pope" in ev.tasks:
        pope.parse_answer("", ev.pope_parser)  # an unknown parser fails before the model loads
    instances = chair.load_instances(ev.annotations) if ev.annotations else {}
    scoring = _chair_setup(cfg) if "chair" in ev.tasks else None  # a bad synonyms / captions file fails here
    jobs = _chair_jobs(cfg, instances) if "chair" in ev.tasks else []
    questions = _pope_questions(cfg, instances) if "pope" in ev.tasks else []
    jobs += _pope_jobs(cfg, questions)
    if cfg.overwrite:  # a killed redo must not leave the old DONE / metrics behind
        for name in (DONE_MARKER, "metrics.json", "samples.jsonl", "skipped.jsonl"):
            (out / name).unlink(missing_ok=True)

    from .models import load_policy

    policy = load_policy(cfg.model)
    answers, skipped = _answer_all(policy, jobs, out / "samples.jsonl", ev.batch_size, cfg.data.max_image_pixels)
    if skipped:
        write_jsonl(out / "skipped.jsonl", skipped)
    _check_answered(cfg, jobs, answers, len(skipped))

    metrics: dict[str, Any] = {}
    if "chair" in ev.tasks:
        metrics["chair"] = _score_chair(scoring, instances, jobs, answers, out)
    if "pope" in ev.tasks:
        metrics["pope"] = _score_pope(cfg, questions, answers)
    metrics["flat"] = flat_metrics(metrics)
    metrics["protocol"] = {
        "prompt": ev.prompt, "max_new_tokens": ev.max_new_tokens, "num_images": ev.num_images, "seed": cfg.seed,
        "parser": ev.pope_parser, "pope_suffix": ev.pope_suffix, "pope_max_new_tokens": ev.pope_max_new_tokens,
        "pope_source": ev.pope_questions or "built from eval.annotations", "decoding": "greedy",
        "model": cfg.model.path, "round": round, "skipped_images": len(skipped),
    }
    write_json(out / "metrics.json", metrics)
    save_config(cfg, out / "config.yaml")
    mark_done(out, {"round": round})
    log.info("eval: %s", ", ".join(f"{k}={v:.4f}" for k, v in metrics["flat"].items()))
    return out


# ---------------------------------------------------------------------------- setup


def sample_images(instances: dict, num_images: int, seed: int) -> list[dict]:
    """Seeded sample of the instances file's images (sorted by id first, so file order does not matter)."""
    images = sorted(instances.get("images", []), key=lambda im: str(im["id"]).zfill(20))
    return random.Random(seed).sample(images, min(num_images, len(images)))


def _chair_jobs(cfg: RunConfig, instances: dict) -> list[dict]:
    ev = cfg.eval
    return [{"task": "chair", "image_id": im["id"], "image": resolve_image(im.get("file_name", ""), ev.image_root),
             "prompt": ev.prompt, "max_new_tokens": ev.max_new_tokens}
            for im in sample_images(instances, ev.num_images, cfg.seed)]


def _pope_questions(cfg: RunConfig, instances: dict) -> list[dict]:
    ev = cfg.eval
    if ev.pope_questions:
        questions = pope.read_questions(ev.pope_questions)
        return [q for q in questions if q["category"] in ev.pope_splits or q["category"] not in pope.SPLITS]
    built = pope.build_questions(instances, ev.num_images, cfg.seed, ev.pope_splits)
    return [q for split in ev.pope_splits for q in built[split]]


def _pope_jobs(cfg: RunConfig, questions: list[dict]) -> list[dict]:
    """One job per distinct (image, question): the positives repeat across splits and are answered once."""
    ev = cfg.eval
    jobs: dict[tuple[str, str], dict] = {}
    for q in questions:
        image = resolve_image(str(q.get("image", "")), ev.image_root)
        prompt = q["text"] + ev.pope_suffix
        jobs.setdefault((image, prompt), {"task": "pope", "image_id": q.get("image_id"), "image": image,
                                          "prompt": prompt, "max_new_tokens": ev.pope_max_new_tokens})
        q["_key"] = ("pope", image, prompt)
    return list(jobs.values())


# ---------------------------------------------------------------------------- work


def _answer_all(policy, jobs: list[dict], samples_path: Path, batch_size: int, max_pixels: int):
    """Greedy answers of every job, resuming from samples.jsonl: ({(task, image, prompt): answer}, skipped)."""
    from tqdm import tqdm

    answers: dict[tuple, str] = {}
    if samples_path.exists():
        repair_jsonl(samples_path)
        answers = {(s["task"], s["image"], s["prompt"]): s["answer"] for s in read_jsonl(samples_path)}
    todo = [j for j in jobs if (j["task"], j["image"], j["prompt"]) not in answers]
    todo.sort(key=lambda j: j["max_new_tokens"])  # batches share one token cap
    skipped: list[dict] = []
    bad: set[str] = set()
    samples_path.parent.mkdir(parents=True, exist_ok=True)
    with samples_path.open("a") as fh, tqdm(total=len(todo), desc="eval", unit="prompt") as bar:
        for start in range(0, len(todo), max(1, batch_size)):
            batch, images = [], []
            for job in todo[start : start + max(1, batch_size)]:
                image = _open(job["image"], max_pixels, bad, skipped)
                if image is not None:
                    batch.append(job)
                    images.append(image)
            for cap in sorted({j["max_new_tokens"] for j in batch}):
                part = [(j, im) for j, im in zip(batch, images) if j["max_new_tokens"] == cap]
                texts = policy.generate_answers([im for _, im in part], [j["prompt"] for j, _ in part], cap)
                for (job, _), text in zip(part, texts):
                    answers[(job["task"], job["image"], job["prompt"])] = text
                    rec = {k: job[k] for k in ("task", "image_id", "image", "prompt")}
                    append_jsonl(fh, {**rec, "answer": text})
            bar.update(len(todo[start : start + max(1, batch_size)]))
    return answers, skipped


def _open(path: str, max_pixels: int, bad: set[str], skipped: list[dict]):
    if path in bad:
        return None
    try:
        return load_image(path, max_pixels)
    except InputError as exc:
        log.warning("eval: skipping image: %s", exc)
        bad.add(path)
        skipped.append({"image": path, "reason": str(exc)})
        return None


# ---------------------------------------------------------------------------- scoring


def _chair_setup(cfg: RunConfig) -> tuple[chair.Vocabulary, dict | None]:
    """The synonym table and reference captions, loaded before the policy so a bad path fails at once."""
    vocab = chair.load_vocabulary(cfg.eval.synonyms)
    captions = chair.read_json(cfg.eval.gt_captions, "eval.gt_captions") if cfg.eval.gt_captions else None
    return vocab, captions


def _check_answered(cfg: RunConfig, jobs: list[dict], answers: dict, n_skipped: int) -> None:
    """No metrics from nothing: every task asked for needs at least one answer."""
    for task, what in (("chair", "CHAIR caption"), ("pope", "POPE answer")):
        if task not in cfg.eval.tasks:
            continue
        mine = [j for j in jobs if j["task"] == task]
        if not any((j["task"], j["image"], j["prompt"]) in answers for j in mine):
            seen = f"{n_skipped} image(s) unreadable, listed in {Path(cfg.out) / 'skipped.jsonl'}" if n_skipped \
                else "no images"
            raise InputError(f"eval: no {what} could be produced ({len(mine)} prompt(s), {seen}); check "
                             f"eval.image_root ({cfg.eval.image_root or 'not set'}) and eval.annotations")


def _score_chair(scoring: tuple, instances: dict, jobs: list[dict], answers: dict, out: Path) -> dict:
    vocab, captions = scoring
    gt = chair.ground_truth(instances, vocab, captions)
    caps = [{"image_id": j["image_id"], "caption": answers[(j["task"], j["image"], j["prompt"])]}
            for j in jobs if j["task"] == "chair" and (j["task"], j["image"], j["prompt"]) in answers]
    result = chair.compute_chair(caps, gt, vocab)
    write_jsonl(out / "chair_captions.jsonl", result.pop("per_caption"))
    return result


def _score_pope(cfg: RunConfig, questions: list[dict], answers: dict) -> dict:
    found = {(q["category"], q["question_id"]): answers[q["_key"]] for q in questions if q["_key"] in answers}
    clean = [{k: v for k, v in q.items() if k != "_key"} for q in questions]
    write_jsonl(Path(cfg.out) / "pope_questions.jsonl", clean)
    return pope.score(clean, found, cfg.eval.pope_parser)
