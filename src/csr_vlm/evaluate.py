"""`csr eval`: greedy answers from a policy for every job of the configured benchmarks, scored into metrics.json.

    csr eval --config F [key=value ...]      (or --model DIR)

Setup: each task of `eval.tasks` (benchmarks/registry.py) plans its jobs from the eval section, the seed and
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

from .benchmarks import lmms
from .benchmarks.chair import load_instances
from .benchmarks.registry import TASKS, flat_metrics
from .benchmarks.task import Plan, job_key
from .config import check_reusable, save_config
from .console import bar_name, bars_off, commonest_skip, skip_summary
from .data import (
    DONE_MARKER,
    append_jsonl,
    file_sha256,
    is_done,
    load_image,
    mark_done,
    read_json,
    read_jsonl,
    repair_jsonl,
    write_json,
    write_jsonl,
)
from .errors import InputError
from .lock import output_lock
from .models.policy import one_line
from .schema import RunConfig
from .special_tokens import ControlTokens

log = logging.getLogger(__name__)

READS = ("out", "seed", "overwrite", "model", "eval", "data.max_image_pixels")
"""The config sections (or dotted keys) this stage reads: `csr eval --help` lists only their keys."""
INPUT_FILES = ("annotations", "gt_captions", "pope_questions", "synonyms")
"""eval keys naming files whose content decides the metrics (their sha256 is kept in DONE)."""


def run(cfg: RunConfig, round: int = 0) -> Path:
    """Evaluate cfg.model.path on cfg.eval.tasks into cfg.out; returns it."""
    out = Path(cfg.out)
    inputs = {key: file_sha256(path) for key in INPUT_FILES if (path := getattr(cfg.eval, key))}
    if is_done(out) and not cfg.overwrite:
        check_reusable(out, cfg, ("seed", "model.path", "eval"))
        _check_same_inputs(out, inputs)
        log.info("eval: %s is done; skipping (overwrite=true redoes it)", out)
        return out
    ev = cfg.eval
    if ev.lmms_tasks:
        lmms.check_installed()  # before any model loads
    input_skips: list[dict] = []
    plans = _plans(cfg, input_skips) if ev.tasks else {}

    from .models import load_policy

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
        _check_answered(cfg, plans, answers, skipped)
        metrics: dict[str, Any] = {name: TASKS[name].score(plan, answers, ev, out) for name, plan in plans.items()}
        if ev.lmms_tasks:
            from .models import resolve_device

            metrics["lmms"] = lmms.run(cfg.model.path, ev, out, resolve_device(cfg.model.device))
        _save(cfg, round, metrics, skipped, input_skips, inputs)
    log.info("eval: %s -> %s", cfg.model.path, out)
    return out


def _check_same_inputs(out: Path, inputs: dict[str, str | None]) -> None:
    """Refuse to reuse finished metrics whose input files (annotations, captions, POPE questions, synonyms) have
    changed since (a DONE of an older csr, without their hashes, is taken as it is)."""
    done = read_json(out / DONE_MARKER, "DONE")
    before = done.get("inputs") if isinstance(done, dict) else None
    changed = [f"eval.{key}" for key in sorted(set(before or {}) | set(inputs))
               if before is not None and before.get(key) != inputs.get(key)]
    if changed:
        raise InputError(f"eval: {out} was scored on other inputs (the content of {', '.join(changed)} changed "
                         "since); overwrite=true scores again")


def _save(cfg: RunConfig, round: int, metrics: dict, skipped: list[dict], input_skips: list[dict],
          inputs: dict[str, str | None]) -> None:
    """metrics.json (each task's section, the flat summary, the protocol), config.yaml, then DONE, in cfg.out."""
    ev, out = cfg.eval, Path(cfg.out)
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
    mark_done(out, {"round": round, "inputs": inputs})
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
    """Greedy answers of every job, resuming from samples.jsonl: ({(task, image, prompt): answer}, skipped).

    A prompt loses the model's image placeholders (`eval.prompt="<image>\\nDescribe this image."` included) and is
    skipped with the reason when it holds another control token or is too long (special_tokens.py); a batch that
    fails is answered one prompt at a time, so a failure costs only its own prompt."""
    from tqdm import tqdm

    answers: dict[tuple, str] = {}
    if samples_path.exists():
        repair_jsonl(samples_path)
        answers = {job_key(s): s["answer"] for s in read_jsonl(samples_path)}
    todo = [j for j in jobs if job_key(j) not in answers]
    todo.sort(key=lambda j: j["max_new_tokens"])  # batches share one token cap
    skipped: list[dict] = []
    bad: set[str] = set()
    tokens = ControlTokens.of(policy.processor)
    samples_path.parent.mkdir(parents=True, exist_ok=True)
    size = max(1, batch_size)
    bar = tqdm(total=len(todo), desc=bar_name("eval"), unit="prompt", disable=bars_off())
    with samples_path.open("a") as fh, bar:
        for start in range(0, len(todo), size):
            batch = []
            for job in todo[start: start + size]:
                prompt = _usable_prompt(policy, tokens, job, skipped)
                image = _open(job["image"], max_pixels, bad, skipped) if prompt is not None else None
                if image is not None:
                    batch.append((job, image, prompt))
            for cap in sorted({j["max_new_tokens"] for j, _, _ in batch}):
                part = [item for item in batch if item[0]["max_new_tokens"] == cap]
                for job, text in _answer_part(policy, part, cap, skipped):
                    answers[job_key(job)] = text
                    append_jsonl(fh, {**{k: job[k] for k in ("task", "image_id", "image", "prompt")}, "answer": text})
            bar.update(len(todo[start: start + size]))
    return answers, skipped


def _usable_prompt(policy, tokens: ControlTokens, job: dict, skipped: list[dict]) -> str | None:
    """The job's prompt cleaned of image placeholders, or None (and a skip with the reason)."""
    try:
        context = policy.context_length
        least = tokens.min_tokens(job["prompt"])
        if context is not None and least + job["max_new_tokens"] > context:
            raise InputError(f"prompt too long ({len(job['prompt'])} characters, at least {least} tokens + "
                             f"{job['max_new_tokens']} answer tokens > the model's context of {context})")
        return tokens.clean_prompt(job["prompt"])
    except InputError as exc:
        skipped.append({"task": job["task"], "image": job["image"], "prompt": job["prompt"][:200], "reason": str(exc)})
        return None


def _answer_part(policy, part: list, cap: int, skipped: list[dict]) -> list[tuple[dict, str]]:
    """(job, answer) for the prompts of one token cap; a failed batch is retried one prompt at a time, and a prompt
    that fails alone (or is past the context) is a skip with its reason."""
    try:
        too_long: dict[int, str] = {}
        texts = policy.generate_answers([im for _, im, _ in part], [p for _, _, p in part], cap, too_long)
    except Exception as exc:  # noqa: BLE001 - one prompt must not stop the evaluation
        if len(part) > 1:
            log.warning("eval: a batch of %d prompts failed (%s); answering them one at a time", len(part),
                        one_line(exc))
            return [pair for item in part for pair in _answer_part(policy, [item], cap, skipped)]
        job = part[0][0]
        skipped.append({"task": job["task"], "image": job["image"], "prompt": job["prompt"][:200],
                        "reason": f"generation failed ({one_line(exc)[:200]})"})
        return []
    done = []
    for i, ((job, _, _), text) in enumerate(zip(part, texts)):
        if text is None:
            skipped.append({"task": job["task"], "image": job["image"], "prompt": job["prompt"][:200],
                            "reason": too_long[i]})
        else:
            done.append((job, text))
    return done


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


def _check_answered(cfg: RunConfig, plans: dict[str, Plan], answers: dict, skipped: list[dict]) -> None:
    """No metrics from nothing: every task asked for needs at least one answer (else one line with the commonest
    skip reason and its count)."""
    for name, plan in plans.items():
        if not any(job_key(j) in answers for j in plan.jobs):
            seen = f"{commonest_skip(skipped)}, listed in {Path(cfg.out) / 'skipped.jsonl'}" if skipped \
                else "no images"
            raise InputError(f"eval: no {TASKS[name].label} could be produced ({len(plan.jobs)} prompt(s), {seen}); "
                             f"check eval.image_root ({cfg.eval.image_root or 'not set'}) and eval.annotations")
