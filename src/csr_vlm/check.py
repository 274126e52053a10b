"""`csr <stage> --check`: resolve the config, read and check every input the stage would read, load no model.

    csr generate --check --config my.yaml data.prompts=my/prompts.jsonl

Prints the resolved config (the sections the stage reads), then one line per input: the model
directories (config.json present; weights are never loaded), the prompts with their counts, every image
opened as the stage opens it, and, when model.path is a local checkpoint, every prompt's length with
its image under the model's own processor (the tokenizer and image processor only) against its context.
Each unusable input is listed with the reason the stage would skip it for; the last line says
`check: OK` (exit 0) or how many problems there are (exit 1). A config or file error that would stop the
stage stops the check the same way (one line, exit 2).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .config import leaves, reads, shown, to_dict
from .console import skip_summary
from .data import load_image
from .errors import InputError
from .schema import RunConfig

SHOWN_SKIPS = 10
"""Unusable inputs listed one per line; the rest are counted in the summary line."""


class _Report:
    """What the check prints: facts, unusable inputs, and the final verdict."""

    def __init__(self, stage: str) -> None:
        self.stage, self.problems = stage, 0

    def say(self, text: str) -> None:
        print(f"  {text}", flush=True)

    def skips(self, what: str, skipped: list[dict], total: int) -> None:
        """List up to SHOWN_SKIPS unusable inputs and one summary line; each counts as a problem."""
        skipped = sorted(skipped, key=lambda s: (s.get("line") is None, s.get("line") or 0))
        for s in skipped[:SHOWN_SKIPS]:
            where = f"line {s['line']}" if s.get("line") is not None else f"id {s.get('id')}"
            self.say(f"unusable ({what}, {where}): {s['reason']}")
        if len(skipped) > SHOWN_SKIPS:
            self.say(f"{skip_summary(self.stage, skipped, total, None)} ({len(skipped) - SHOWN_SKIPS} not listed)")
        self.problems += len(skipped)


def check_stage(stage: str, cfg: RunConfig) -> int:
    """Check what `csr <stage>` would read under cfg; print it all; 0 when every input is usable, else 1."""
    from .reference import stage_reads

    (cfg.validate_loop if stage == "loop" else cfg.validate)()
    only = stage_reads(stage)
    print(f"csr {stage} --check: the resolved config (the keys {stage} reads, as key=value overrides take them)")
    for key, value in leaves(to_dict(cfg)).items():
        if reads(key, only):
            print(f"  {key}={shown(value)}")
    print("inputs:")
    report = _Report(stage)
    if stage in ("generate", "loop"):
        _check_generate(cfg, report)
    if stage == "train":
        _check_pairs(cfg, report)
    if stage == "eval" or (stage == "loop" and (cfg.loop.evaluate or cfg.loop.select_on)):
        _check_eval(cfg, report, "eval")
        if stage == "loop" and cfg.loop.select_on:
            _check_eval(replace(cfg, eval=cfg.dev_eval()), report, "loop.dev")
    if report.problems:
        print(f"check: {report.problems} problem(s) above; csr {stage} would skip those inputs (see docs/formats.md)")
        return 1
    print("check: OK (no model weights were loaded)")
    return 0


# ---------------------------------------------------------------------------- per stage


def _check_model(path: str, key: str, report: _Report) -> None:
    from .models.policy import check_model_path

    check_model_path(path, key)
    kind = "local checkpoint (config.json found)" if Path(path).is_dir() else "hub id (not downloaded by the check)"
    report.say(f"{key}: {path}: {kind}")


def _check_generate(cfg: RunConfig, report: _Report) -> None:
    from .generate import _check_inputs, _check_length, _read_all_prompts

    _check_model(cfg.model.path, "model.path", report)
    _check_model(cfg.reward.clip_path, "reward.clip_path", report)
    _check_inputs(cfg)  # prompts set, mix_prompts and tau_calibration present: the stage's own first check
    records, skipped = _read_all_prompts(cfg)
    total = len(records) + len(skipped)
    files = cfg.data.prompts + (f" + {cfg.data.mix_prompts}" if cfg.data.mix_prompts else "")
    report.say(f"data.prompts: {files}: {total} entries, {len(records)} usable prompts"
               + (f", {len(skipped)} unusable" if skipped else ""))
    if not records:
        raise InputError(f"data.prompts: no usable prompt in {files} ({len(skipped)} unusable)")
    lengths = _Lengths.of(cfg.model.path, cfg.model.trust_remote_code, report)
    bad, sizes = [], []
    for rec in _progress(records, "checking images"):
        try:
            image = load_image(rec.image, cfg.data.max_image_pixels)
            if lengths is not None:
                _check_length(lengths, image, rec.prompt, cfg)
                sizes.append(lengths.last)
        except InputError as exc:
            bad.append({"id": rec.id, "image": rec.image, "reason": str(exc)})
    report.say(f"images: {len(records) - len(bad)} of {len(records)} open"
               + (f" (relative paths resolve against {cfg.data.image_root or 'the prompts file folder'})"))
    if sizes:
        span = f"{min(sizes)}-{max(sizes)}" if min(sizes) < max(sizes) else f"{min(sizes)}"
        report.say(f"prompt lengths with the image: {span} tokens (+ up to "
                   f"{cfg.search.max_sentences * cfg.search.max_new_tokens} answer tokens; context "
                   f"{lengths.context_length or 'not stated'})")
    report.skips("prompt", skipped + bad, total)


def _check_pairs(cfg: RunConfig, report: _Report) -> None:
    """Every pair through the checks `csr train` runs before its Trainer (pairs.py: shape, image slots, images that
    open); the control-token check needs the processor and runs in the stage."""
    from .pairs import read_pairs
    from .train import pairs_path

    _check_model(cfg.model.path, "model.path", report)
    path = pairs_path(cfg)
    rows, skipped = read_pairs(path, cfg.data.max_image_pixels)  # a missing file or no usable pair: one line
    report.say(f"train.pairs: {path}: {len(rows) + len(skipped)} pairs, {len(rows)} usable")
    report.skips("pair", skipped, len(rows) + len(skipped))


def _check_eval(cfg: RunConfig, report: _Report, key: str) -> None:
    from .evaluate import _plans

    if report.stage == "eval":  # the loop checked it with its prompts
        _check_model(cfg.model.path, "model.path", report)
    skipped: list[dict] = []
    plans = _plans(cfg, skipped) if cfg.eval.tasks else {}
    images = sorted({job["image"] for plan in plans.values() for job in plan.jobs})
    bad = []
    for image in _progress(images, f"checking {key} images"):
        try:
            load_image(image, cfg.data.max_image_pixels)
        except InputError as exc:
            bad.append({"image": image, "reason": str(exc)})
    jobs = {name: len(plan.jobs) for name, plan in plans.items()}
    report.say(f"{key}: {cfg.eval.annotations or 'no annotations'}: "
               + ", ".join(f"{n} {name} prompts" for name, n in jobs.items())
               + f" on {len(images)} images, {len(images) - len(bad)} open"
               + (f" (eval.image_root: {cfg.eval.image_root or 'not set'})"))
    report.skips(f"{key} input", skipped + bad, len(images) + len(skipped))


# ---------------------------------------------------------------------------- helpers


class _Lengths:
    """Prompt lengths under the model's own processor (tokenizer + image processor; no weights), shaped like the
    engine that generate's length check asks (prompt_tokens, context_length)."""

    def __init__(self, processor, context_length: int | None) -> None:
        self.processor, self.context_length, self.last = processor, context_length, 0

    @classmethod
    def of(cls, path: str, trust_remote_code: bool, report: _Report) -> _Lengths | None:
        """The processor of a local checkpoint, or None (a hub id would be downloaded) with a line saying so."""
        if not Path(path).is_dir():
            report.say("prompt lengths: not checked (model.path is not a local directory)")
            return None
        from transformers import AutoConfig

        from .models.processors import load_processor

        try:
            processor = load_processor(path, trust_remote_code=trust_remote_code)
            text = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code).get_text_config()
        except Exception as exc:  # noqa: BLE001 - the check reports, the stage itself will refuse with one line
            report.say(f"prompt lengths: not checked (the processor does not load: {type(exc).__name__})")
            return None
        n = getattr(text, "max_position_embeddings", None)
        return cls(processor, n if isinstance(n, int) and n > 0 else None)

    def prompt_tokens(self, image, prompt: str) -> int:
        from .models.policy import chat_prompt

        batch = self.processor(images=[[image]], text=[chat_prompt(self.processor, prompt)], return_tensors="pt")
        self.last = int(batch["input_ids"].shape[1])
        return self.last


def _progress(items: list, desc: str):
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="item", leave=False, disable=len(items) < 50)
