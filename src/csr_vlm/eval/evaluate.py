"""`csr eval`: greedy answers from a policy for every job of the configured benchmarks, scored into metrics.json.

    csr eval --config F [key=value ...]      (or --model DIR)

Setup: each task of `eval.tasks` (registry.py) plans its jobs from the eval section, the seed and
`eval.annotations` (CHAIR: one caption per sampled image; POPE: its yes/no questions), loading what
its scoring needs first, so a bad file fails before the model loads. Work: every job is answered
greedily in batches of `eval.batch_size`; each prompt and answer is appended to samples.jsonl as it
comes, so a killed run resumes where it stopped. Save: metrics.json (one section per task, "flat"
with every task's selectable metrics, and the protocol that published numbers depend on; format in
docs/formats.md), the tasks' own files, config.yaml and DONE. Images that are missing or unreadable
are logged and skipped (skipped.jsonl); if a task got no answer at all, the stage fails instead of
scoring nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..config import check_reusable, save_config
from ..console import bar_name, bars_off, skip_summary
from ..data import (DONE_MARKER, append_jsonl, is_done, load_image, mark_done, read_jsonl, repair_jsonl, write_json,
                    write_jsonl)
from ..errors import InputError
from ..lock import output_lock
from ..schema import RunConfig
from . import lmms
from .chair import load_instances
from .registry import TASKS, flat_metrics
from .task import Plan, job_key

log = logging.getLogger(__name__)

READS = ("out", "seed", "overwrite", "model", "eval", "data.max_image_pixels")
"""The config sections (or dotted keys) this stage reads: `csr eval --help` lists only their keys."""


def run(cfg: RunConfig, round: int = 0) -> Path:
    """Evaluate cfg.model.path on cfg.eval.tasks into cfg.out; returns it."""
    out = Path(cfg.out)
    if is_done(out) and not cfg.overwrite:
        check_reusable(out, cfg, ("seed", "model.path", "eval"))
        log.info("eval: %s is done; skipping (overwrite=true redoes it)", out)
        return out
    ev = cfg.eval
    if ev.lmms_tasks:
        lmms.check_installed()  # before any model loads
    input_skips: list[dict] = []
    plans = _plans(cfg, input_skips) if ev.tasks else {}

    from ..models import load_policy

    with output_lock(out):  # a second run on this out stops here
        if cfg.overwrite:  # a killed redo must not leave the old DONE / metrics behind
            for name in (DONE_MARKER, "metrics.json", "samples.jsonl", "skipped.jsonl"):
                (out / name).unlink(missing_ok=True)
        answers, skipped = {}, []
        if plans:
            policy = load_policy(cfg.model)
            jobs = [job for plan in plans.values() for job in plan.jobs]
            answers, skipped = _answer_all(policy, jobs, out / "samples.jsonl", ev.batch_size,
                                           cfg.data.max_image_pixels)
            del policy  # lmms-eval loads the checkpoint again in its own process
        if skipped or input_skips:
            write_jsonl(out / "skipped.jsonl", input_skips + skipped)
            log.warning(skip_summary("eval", input_skips + skipped, None, out / "skipped.jsonl"))
        _check_answered(cfg, plans, answers, len(skipped))
        metrics: dict[str, Any] = {name: TASKS[name].score(plan, answers, ev, out) for name, plan in plans.items()}
        if ev.lmms_tasks:
            from ..models import resolve_device

            metrics["lmms"] = lmms.run(cfg.model.path, ev, out, resolve_device(cfg.model.device))
        _save(cfg, round, out, metrics, skipped, input_skips)
    log.info("eval: %s -> %s", cfg.model.path, out)
    return out


def _save(cfg: RunConfig, round: int, out: Path, metrics: dict, skipped: list[dict], input_skips: list[dict]) -> None:
    """metrics.json (each task's section, the flat summary, the protocol), config.yaml, then DONE."""
    ev = cfg.eval
    metrics["flat"] = {**flat_metrics(metrics, ev.tasks), **lmms.flat(metrics.get("lmms", {}))}
    metrics["protocol"] = {
        "prompt": ev.prompt, "max_new_tokens": ev.max_new_tokens, "num_images": ev.num_images, "seed": cfg.seed,
        "parser": ev.pope_parser, "pope_suffix": ev.pope_suffix, "pope_max_new_tokens": ev.pope_max_new_tokens,
        "pope_source": ev.pope_questions or "built from eval.annotations", "decoding": "greedy",
        "model": cfg.model.path, "round": round, "skipped_images": sum("task" not in s for s in skipped),
        "skipped_prompts": sum("task" in s for s in skipped), "skipped_annotation_entries": len(input_skips),
    }
    write_json(out / "metrics.json", metrics)
    save_config(cfg, out / "config.yaml")
    mark_done(out, {"round": round})
    log.info("eval: %s", ", ".join(f"{k}={v:.4f}" for k, v in metrics["flat"].items()))


# ---------------------------------------------------------------------------- setup


def _plans(cfg: RunConfig, skipped: list[dict]) -> dict[str, Plan]:
    """Each task's plan, in eval.tasks order; the annotations file is read once for all of them (its unusable
    entries are appended to `skipped`)."""
    ev = cfg.eval
    tasks = [TASKS[name] for name in ev.tasks]
    needing = [t.name for t in tasks if t.needs_annotations(ev)]
    if needing and not ev.annotations:
        raise InputError(f"eval.annotations is not set (a COCO instances JSON); {', '.join(needing)} need(s) it")
    instances = load_instances(ev.annotations, skipped) if ev.annotations else {}
    return {t.name: t.plan(ev, cfg.seed, instances) for t in tasks}


# ---------------------------------------------------------------------------- work


def _answer_all(policy, jobs: list[dict], samples_path: Path, batch_size: int, max_pixels: int):
    """Greedy answers of every job, resuming from samples.jsonl: ({(task, image, prompt): answer}, skipped)."""
    from tqdm import tqdm

    answers: dict[tuple, str] = {}
    if samples_path.exists():
        repair_jsonl(samples_path)
        answers = {job_key(s): s["answer"] for s in read_jsonl(samples_path)}
    todo = [j for j in jobs if job_key(j) not in answers]
    todo.sort(key=lambda j: j["max_new_tokens"])  # batches share one token cap
    skipped: list[dict] = []
    bad: set[str] = set()
    samples_path.parent.mkdir(parents=True, exist_ok=True)
    size = max(1, batch_size)
    bar = tqdm(total=len(todo), desc=bar_name("eval"), unit="prompt", disable=bars_off())
    with samples_path.open("a") as fh, bar:
        for start in range(0, len(todo), size):
            batch, images = [], []
            for job in todo[start: start + size]:
                image = _open(job["image"], max_pixels, bad, skipped)
                if image is not None:
                    batch.append(job)
                    images.append(image)
            for cap in sorted({j["max_new_tokens"] for j in batch}):
                part = [(j, im) for j, im in zip(batch, images) if j["max_new_tokens"] == cap]
                too_long: dict[int, str] = {}
                texts = policy.generate_answers([im for _, im in part], [j["prompt"] for j, _ in part], cap, too_long)
                for i, ((job, _), text) in enumerate(zip(part, texts)):
                    if text is None:
                        skipped.append({"task": job["task"], "image": job["image"], "prompt": job["prompt"][:200],
                                        "reason": too_long[i]})
                        continue
                    answers[job_key(job)] = text
                    append_jsonl(fh, {**{k: job[k] for k in ("task", "image_id", "image", "prompt")}, "answer": text})
            bar.update(len(todo[start: start + size]))
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


def _check_answered(cfg: RunConfig, plans: dict[str, Plan], answers: dict, n_skipped: int) -> None:
    """No metrics from nothing: every task asked for needs at least one answer."""
    for name, plan in plans.items():
        if not any(job_key(j) in answers for j in plan.jobs):
            seen = f"{n_skipped} image(s) unreadable, listed in {Path(cfg.out) / 'skipped.jsonl'}" if n_skipped \
                else "no images"
            raise InputError(f"eval: no {TASKS[name].label} could be produced ({len(plan.jobs)} prompt(s), {seen}); "
                             f"check eval.image_root ({cfg.eval.image_root or 'not set'}) and eval.annotations")
