"""`csr train`: DPO with LoRA on the round's preference pairs, saved as a complete merged checkpoint.

Composes TRL's `DPOTrainer` (unpatched) with a PEFT `LoraConfig`, as TRL's own dpo script does:
`to_trl_args` maps our small `TrainConfig` onto `DPOConfig` + `LoraConfig`, `build_trainer` wires
model, processor and data, and `run` saves the result. Defaults follow the paper's code: sigmoid
DPO with beta 0.1 on summed log-probs, LoRA r 128 / alpha 256 / dropout 0.05 on every nn.Linear
of the *language model* (found from `model.get_decoder()`, so the vision tower, the projector and
lm_head are never adapted), lr 1e-7, cosine, warmup 0.03, one epoch, batch 1.

Pairs (`train.pairs`, default `<out>/../generate/pairs.jsonl` if it exists, else `<out>/pairs.jsonl`)
are TRL's conversational vision format with `images` as a list of paths (docs/formats.md). Every pair is
checked before the Trainer starts (pairs.py: its shape, one image slot per image, no control token of
the model in its text, images that open); a bad one is skipped with its reason (skipped.jsonl, counted
in DONE), so a re-run always finishes. Images are decoded on access by `data.load_image`, the loader of
every stage, and `train.max_length` is checked against a pair's prompt with its image tokens.

Reference model: the policy at the start of the round. With LoRA, TRL gets a plain model plus
`peft_config`, adds a fresh adapter and computes reference log-probs with the adapter disabled,
so the reference is exactly the weights that were loaded, and no second copy is kept. In the loop,
round k loads round k-1's *merged* checkpoint as `model.path`, so "adapter disabled" there is
round k-1's policy (the paper's pi_{theta_{t-1}}): each round starts a fresh adapter on the merged
weights. With `train.use_lora=false` the language model (decoder + lm_head) is trained in full, the
vision tower and projector stay frozen, and an explicit frozen deep copy is passed as `ref_model`.
With `train.reference: search` (the default) the reference log-probs are the ones the search wrote into the
pairs where TRL forwards the searched tokens, TRL's own (computed before training) elsewhere, and no reference
forward runs while training (search_reference.py).

Output: `checkpoint/` (LoRA merged with `merge_and_unload`, processor and chat template saved;
`train.merge=false` keeps the adapter only), written to `checkpoint.tmp/` and renamed when complete;
`train_metrics.jsonl` (TRL's logged metrics plus "step"), `config.yaml`, and `DONE` last. The checkpoint is
read back before it replaces the last one (checkpoint.py: tensors non-empty and finite, loads with the Auto
classes). `train.lora_dropout` is put back on the adapter after TRL's disable_dropout turned it off.

Engines (docs/scaling.md): under `torchrun --nproc_per_node N -m csr_vlm train ...` it trains as DDP (gloo on
CPU via `use_cpu`); under `python -m accelerate.commands.launch --config_file configs/accelerate/<engine>.yaml`
as DDP, DeepSpeed ZeRO-2/3 or FSDP2. The DPOConfig is made before the policy loads, so ZeRO-3 loads it sharded;
a launch that asks for sharding the Trainer does not set up is refused (distributed.py); under ZeRO-3 and FSDP
every rank gathers the full weights and rank 0 merges and saves them (checkpoint.py). Rank 0 writes the files;
DONE records the engine.

Resume: with `train.save_steps` N > 0 the Trainer writes `trainer/checkpoint-<step>` every N optimizer
steps (keeping `train.save_total_limit`), and with any N it writes one at the last step; a killed stage,
run again, finds the last complete one (it has trainer_state.json, written last) and continues from it
with the Trainer's own resume (weights, optimizer, scheduler, RNG and data order), when
`train_fingerprint.json` (seed, model, train section, the pairs file's hash) says it is the same
training. The checkpoints are deleted only once the merged checkpoint is written, so a failed final save
(a full disk) is one line, and the re-run redoes the save alone. DONE's `train_loss` is the mean over
every step, those before a resume included.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import layout, search_reference
from .checkpoint import gather_full_weights, model_to_save, verify_checkpoint
from .config import check_reusable, save_config, to_dict
from .console import quiet_trainer, reason_kind
from .data import file_sha256, is_done, load_image, mark_done, read_jsonl, write_json, write_jsonl
from .distributed import (
    check_engine,
    check_wrap_classes,
    device_args,
    engine_check_callback,
    engine_record,
    is_main,
    requested,
    running,
    set_up,
    sharded_parameters,
)
from .errors import InputError
from .lock import output_lock
from .pairs import drop_control_tokens, read_pairs, to_dataset
from .schema import RunConfig
from .search_reference import ROW
from .special_tokens import ControlTokens

log = logging.getLogger(__name__)

READS = ("out", "seed", "overwrite", "model", "train", "data.max_image_pixels")
"""The config sections (or dotted keys) this stage reads: `csr train --help` lists only their keys."""


# ---------------------------------------------------------------------------- setup


def pairs_path(cfg: RunConfig) -> Path:
    """train.pairs, else the sibling generate stage's pairs.jsonl, else <out>/pairs.jsonl."""
    return Path(cfg.train.pairs) if cfg.train.pairs else layout.train_pairs(cfg.out)


def load_pairs(path: Path, max_pixels: int = 50_000_000, processor=None) -> tuple[Any, list[dict]]:
    """The usable pairs of a pairs file as a datasets.Dataset whose images data.load_image decodes on access, and
    the skipped ones with their reasons (pairs.py; with a processor, texts holding its control tokens are skipped)."""
    rows, skipped = read_pairs(path, max_pixels)
    if processor is not None:
        rows, skipped = drop_control_tokens(rows, skipped, ControlTokens.of(processor),
                                            getattr(processor, "image_token", None))
    return to_dataset(rows, max_pixels), skipped


def language_model_prefix(model) -> str:
    """Module name of the language model (decoder) inside a vision-language model, found generically."""
    decoder = model.get_decoder()
    for name, module in model.named_modules():
        if module is decoder:
            return name
    raise InputError(f"model.path: cannot locate the language model inside {type(model).__name__}")


def lora_targets(model) -> str:
    """A PEFT regex matching every nn.Linear under the language model, and nothing else."""
    import torch

    prefix = language_model_prefix(model)
    leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                     if isinstance(m, torch.nn.Linear) and n.startswith(prefix + ".")})
    return rf"^{re.escape(prefix)}\..*\.({'|'.join(map(re.escape, leaves))})$"


def to_trl_args(cfg: RunConfig, model=None):
    """Our TrainConfig -> (trl.DPOConfig, peft.LoraConfig or None). `model` resolves default LoRA targets."""
    return dpo_config(cfg), lora_config(cfg, model)


def dpo_config(cfg: RunConfig):
    """Our TrainConfig -> trl.DPOConfig. Built before the policy loads: under ZeRO-3 its DeepSpeed settings make
    transformers load the policy already sharded (zero.Init).

    Raises:
        InputError: train.trl_args holds a key DPOConfig does not know.
    """
    import torch
    from trl import DPOConfig

    t = cfg.train
    cuda = torch.cuda.is_available()
    bf16 = t.bf16 if t.bf16 is not None else bool(cuda and torch.cuda.is_bf16_supported())
    args: dict[str, Any] = dict(
        output_dir=str(Path(cfg.out) / "trainer"), loss_type=list(t.loss_type), loss_weights=t.loss_weights,
        beta=t.beta, learning_rate=t.learning_rate, lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_ratio, num_train_epochs=t.num_train_epochs,
        per_device_train_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps, max_length=t.max_length, bf16=bf16,
        activation_checkpointing=t.gradient_checkpointing, report_to=list(t.report_to) or "none",
        seed=cfg.seed, logging_steps=1, remove_unused_columns=False, **device_args(cuda),
        # save_steps=0 still saves once, at the last step (the Trainer always saves there): that checkpoint is kept
        # until the merged model is written, so a failed final save costs the merge, not the training
        save_strategy="steps", save_steps=t.save_steps or 10**9, save_total_limit=t.save_total_limit,
    )
    args.update(t.trl_args)
    try:
        return DPOConfig(**args)
    except TypeError as exc:
        raise InputError(f"train.trl_args: {exc}") from None


def lora_config(cfg: RunConfig, model=None):
    """peft.LoraConfig of the train section (None with train.use_lora=false); `model` resolves default targets."""
    from peft import LoraConfig

    t = cfg.train
    if not t.use_lora:
        return None
    targets = t.lora_target_modules or (lora_targets(model) if model is not None else "all-linear")
    return LoraConfig(r=t.lora_r, lora_alpha=t.lora_alpha, lora_dropout=t.lora_dropout, bias="none",
                      target_modules=targets, task_type="CAUSAL_LM")


def restore_lora_dropout(model, p: float) -> int:
    """TRL's disable_dropout (on by default) sets every nn.Dropout to 0, LoRA's too; put train.lora_dropout back
    on the adapter's dropout layers only (the model's own dropouts stay off, as TRL means them to). Returns how
    many layers it set."""
    import torch

    count = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout) and ".lora_dropout." in f".{name}.":
            module.p = p
            count += 1
    return count


def metrics_logger(path: Path):
    """A TrainerCallback that appends TRL's logged metrics, plus "step", to `path` (rank 0 only)."""
    from transformers import TrainerCallback

    class MetricsLogger(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                with path.open("a") as fh:
                    fh.write(json.dumps({**logs, "step": state.global_step}) + "\n")

    return MetricsLogger()


# ---------------------------------------------------------------------------- work


def load_model(cfg: RunConfig):
    """Policy + processor, loaded on CPU (the Trainer places it) in the dtype of the training device."""
    from .models import load_policy, resolve_device

    dtype = cfg.model.dtype
    if dtype == "auto":  # what load_policy's "auto" would pick on the training device, not on the CPU
        dtype = "bfloat16" if resolve_device(cfg.model.device).startswith("cuda") else "float32"
    return load_policy(replace(cfg.model, device="cpu", dtype=dtype))


def build_trainer(cfg: RunConfig, policy, dataset, metrics_path: Path, args=None, callbacks=()):
    """DPOTrainer over the pairs: LoRA (reference = adapter disabled) or full LM with a frozen copy as reference.
    `args`: the DPOConfig made before the policy loaded (dpo_config(cfg) when None)."""
    from transformers.integrations import is_deepspeed_zero3_enabled
    from trl import DPOTrainer

    model = policy.model
    args = args if args is not None else dpo_config(cfg)
    lora = lora_config(cfg, model)
    ref_model = None
    if not cfg.train.use_lora:
        trainable = language_model_prefix(model) + "."
        head = {id(p) for p in model.get_output_embeddings().parameters()}
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(trainable) or id(p) in head)
        # a sharded policy cannot be deep-copied: the reference is loaded again, sharded the same way
        ref = load_model(cfg).model if is_deepspeed_zero3_enabled() else copy.deepcopy(model)
        ref_model = ref.eval().requires_grad_(False)
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=dataset,
                         processing_class=policy.processor, peft_config=lora,
                         callbacks=[metrics_logger(metrics_path), *callbacks])
    if lora is not None and cfg.train.lora_dropout:
        restore_lora_dropout(trainer.model, cfg.train.lora_dropout)
    quiet_trainer(trainer)  # TRL's log dicts: train_metrics.jsonl only (--verbose prints them too)
    return trainer


def save_checkpoint(trainer, processor, out: Path, merge: bool, full=None, trust_remote_code: bool = False) -> Path:
    """Write the checkpoint to <out>/checkpoint.tmp, verify it, and rename it to <out>/checkpoint (rank 0).
    `full`: the gathered weights of a sharded model (checkpoint.gather_full_weights), else None."""
    model = model_to_save(trainer, full, merge)
    final, tmp, old = out / "checkpoint", out / "checkpoint.tmp", out / "checkpoint.old"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    verify_checkpoint(tmp, trust_remote_code)  # a checkpoint that does not read back is never put in place
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():  # a redo: keep the previous checkpoint until the new one is in place
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


# ---------------------------------------------------------------------------- stage


def run(cfg: RunConfig, round: int = 1) -> Path:
    """Train on the pairs and save <out>/checkpoint; returns the stage directory.

    Every pair is checked first (pairs.py) and a bad one is skipped with its reason. With train.save_steps a
    killed run resumes from its last complete Trainer checkpoint (optimizer, scheduler and RNG included) when
    the pairs and the config are the same; otherwise it starts over. A finished stage is reused only when its
    config and its pairs file are the ones asked for.
    """
    out = Path(cfg.out)
    cfg.validate()
    pairs = pairs_path(cfg)
    if is_done(out) and not cfg.overwrite:
        check_reusable(out, cfg, ("seed", "model.path", "train"))
        _check_same_pairs(out, pairs)
        log.info("train: %s is complete; skipping (overwrite=true redoes it)", out)
        return out
    start = time.time()
    max_pixels = cfg.data.max_image_pixels
    rows, skipped = read_pairs(pairs, max_pixels)  # shape and images: a file with no usable pair fails here
    with output_lock(out, enabled=is_main()):  # a second run on this out stops here
        resume = _resume_point(cfg, out, pairs)
        args = dpo_config(cfg)
        asked = requested(args)
        args.device  # noqa: B018 - starts the process group: ZeRO-3 and FSDP load the policy sharded from here
        check_engine(asked, set_up(args, asked))  # e.g. FSDP asked for on CPUs: stop before loading anything
        policy = load_model(cfg)
        check_wrap_classes(policy.model)
        loaded_sharded = sharded_parameters(policy.model) > 0
        rows, skipped = drop_control_tokens(rows, skipped, ControlTokens.of(policy.processor),
                                            getattr(policy.processor, "image_token", None))
        _check_max_length(cfg, policy, rows[0], max_pixels)
        if skipped and is_main():
            write_jsonl(out / "skipped.jsonl", skipped)
        refs, ref_reasons = search_reference.plan(cfg, rows, pairs, policy.processor)
        dataset = to_dataset([{**r, ROW: i} for i, r in enumerate(rows)], max_pixels, (ROW,))
        trainer = build_trainer(cfg, policy, dataset, out / "train_metrics.jsonl", args)
        engine = running(trainer)
        check_engine(asked, engine)  # sharding asked for and not set up: stop before the first step
        reference = {**search_reference.install(trainer, refs, engine["engine"]),
                     "fallback_by_reason": dict(ref_reasons)}
        trainer.add_callback(engine_check_callback(engine))
        trainer.accelerator.wait_for_everyone()
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        trainer.accelerator.wait_for_everyone()
        full = gather_full_weights(trainer, engine)  # every rank takes part; rank 0 gets the whole model
        if trainer.is_world_process_zero():
            info = {"round": round, "pairs": len(rows), "skipped": len(skipped),
                    "skipped_by_reason": dict(Counter(reason_kind(s["reason"]) for s in skipped)),
                    "steps": trainer.state.global_step, "reference": reference,
                    "train_loss": _whole_loss(out / "train_metrics.jsonl", trainer.state.global_step, result),
                    "world_size": trainer.accelerator.num_processes,
                    "engine": engine_record(trainer, engine, loaded_sharded),
                    "resumed_from_step": int(resume.name.rsplit("-", 1)[1]) if resume else None}
            save(cfg, trainer, policy.processor, info, start, full)
        trainer.accelerator.wait_for_everyone()
    return out


def _check_same_pairs(out: Path, pairs: Path) -> None:
    """Refuse to reuse a finished stage whose pairs file has changed since it trained (never a silent stale result)."""
    stamp = out / "train_fingerprint.json"
    try:
        trained_on = json.loads(stamp.read_text()).get("pairs_sha256") if stamp.is_file() else None
    except ValueError:
        trained_on = None
    if trained_on and pairs.is_file() and trained_on != file_sha256(pairs):
        raise InputError(f"train: {out} was trained on another version of {pairs} (its content changed since); "
                         "overwrite=true retrains on the new pairs")


def _check_max_length(cfg: RunConfig, policy, row: dict, max_pixels: int) -> None:
    """train.max_length must leave room for an answer after a pair's prompt with its image tokens (TRL would cut
    into the prompt, or fail, mid-run)."""
    limit = cfg.train.max_length
    if limit is None:
        return
    processor = policy.processor
    text = row["prompt"] if isinstance(row["prompt"], str) else \
        processor.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
    images = [load_image(p, max_pixels) for p in row["images"]]
    n = int(processor(images=[images], text=[text], return_tensors="pt")["input_ids"].shape[1])
    if n >= limit:
        raise InputError(f"train.max_length={limit} leaves no room for an answer: the prompt of pair "
                         f"{row['id'] or row['line']} is {n} tokens with its image; raise it or set it to null")


def _whole_loss(metrics: Path, steps: int, result) -> float:
    """The mean loss of the whole training: every step's logged loss (a resumed run logged the steps before its
    checkpoint in the run that was killed); the Trainer's own figure covers only the steps of this run."""
    losses = [r["loss"] for r in read_jsonl(metrics) if "loss" in r] if metrics.is_file() else []
    if len(losses) == steps and steps:
        return sum(losses) / steps
    return result.training_loss


def _resume_point(cfg: RunConfig, out: Path, pairs: Path) -> Path | None:
    """The last complete Trainer checkpoint of an interrupted run of this very config and pairs file, or None
    (then the stage starts clean: old checkpoints, metrics and DONE removed). Rank 0 writes the fingerprint."""
    trainer_dir, stamp = out / "trainer", out / "train_fingerprint.json"
    fingerprint = {"seed": cfg.seed, "model": cfg.model.path, "train": to_dict(cfg.train),
                   "pairs_sha256": file_sha256(pairs)}
    fingerprint = json.loads(json.dumps(fingerprint))
    complete = sorted((d for d in trainer_dir.glob("checkpoint-*") if (d / "trainer_state.json").is_file()),
                      key=lambda d: int(d.name.rsplit("-", 1)[1]))
    try:
        same = stamp.is_file() and json.loads(stamp.read_text()) == fingerprint
    except ValueError:  # a stamp cut short by a full disk: not this training's
        same = False
    if complete and same and not cfg.overwrite:
        step = int(complete[-1].name.rsplit("-", 1)[1])
        log.info("train: resuming from %s (step %d)", complete[-1].name, step)
        _keep_metrics_until(out / "train_metrics.jsonl", step)
        return complete[-1]
    if complete and not same and not cfg.overwrite:
        log.warning("train: %s holds checkpoints of another config or pairs file; starting over", trainer_dir)
    if os.environ.get("RANK", "0") == "0":
        _remove_trainer_checkpoints(trainer_dir)
        for name in ("train_metrics.jsonl", "skipped.jsonl", "DONE"):
            (out / name).unlink(missing_ok=True)
        write_json(stamp, fingerprint)
    return None


def _remove_trainer_checkpoints(trainer_dir: Path) -> None:
    """Delete the Trainer's checkpoint-<step> folders (what this stage made there), then the folder if empty;
    anything else in it is left alone."""
    for old in trainer_dir.glob("checkpoint-*"):
        if old.is_dir() and old.name.removeprefix("checkpoint-").isdigit():
            shutil.rmtree(old, ignore_errors=True)
    if trainer_dir.is_dir() and not any(trainer_dir.iterdir()):  # TRL's output_dir, used by trackers
        trainer_dir.rmdir()


def _keep_metrics_until(path: Path, step: int) -> None:
    """Drop the logged lines of steps after the checkpoint (they are logged again when redone)."""
    if path.is_file() and os.environ.get("RANK", "0") == "0":
        write_jsonl(path, [r for r in read_jsonl(path) if r.get("step", 0) <= step])


def save(cfg: RunConfig, trainer, processor, info: dict[str, Any], start: float, full=None) -> None:
    """Checkpoint, config.yaml, then DONE (with the run's numbers); rank 0 only. The Trainer checkpoints go only
    once the merged checkpoint is in place: a save that fails (a full disk) leaves the last one, and the re-run
    resumes there and redoes only the save."""
    out = Path(cfg.out)
    try:
        save_checkpoint(trainer, processor, out, cfg.train.merge and cfg.train.use_lora, full,
                        cfg.model.trust_remote_code)
    except OSError as exc:
        kept = sorted((out / "trainer").glob("checkpoint-*"), key=lambda d: int(d.name.rsplit("-", 1)[1]))
        where = f"the training is kept in {kept[-1]}; " if kept else ""
        raise InputError(f"train: saving {out / 'checkpoint'} failed ({exc.strerror or exc}); {where}free the space "
                         "and re-run the same command to redo the save") from None
    _remove_trainer_checkpoints(out / "trainer")
    save_config(cfg, out / "config.yaml")
    info["seconds"] = float(f"{time.time() - start:.1f}")
    mark_done(out, info)
    log.info("train: %d pairs (%d skipped), %d steps, loss %.4f, %.1fs -> %s", info["pairs"], info["skipped"],
             info["steps"], info["train_loss"], info["seconds"], out / "checkpoint")
