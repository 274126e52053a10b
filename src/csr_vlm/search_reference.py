"""Reference log-probs from the search (`train.reference: search`): DPO's reference pass without a forward.

The reference of round k is the policy that searched round k, and the search already scored every token it
wrote with that policy's raw (untempered) log-probs. So a pair's reference log-prob is the sum of its side's
searched token log-probs (a sentence pair: the sentence's own, its prefix being context), and `csr generate`
writes it into the pair (docs/formats.md): `chosen_ref_logp`, `rejected_ref_logp`, and `ref_tokens`
({prefix, chosen, rejected}: the token ids the search wrote after the generation prompt).

The sum equals TRL's reference only where TRL forwards those very tokens. `csr train` checks that per pair,
tokenizing as TRL's vision collator will (the prompt as rendered, then each completion on its own, no special
tokens added), against the search's own (the chat prompt with the tokenizer's special tokens, then the
searched ids). With curate.pair_tokens=searched (the default) the rows are the searched tokens' text, so they
match unless a decoded text re-tokenizes differently. A pair that differs (that, or a row the chat template
rendered, curate.pair_tokens=template: TRL's conversational prompt has no BOS, templates write a space or a
newline around the end of turn), a pair without searched log-probs (a written verdict, a pairs file from
elsewhere), or a run that cannot use them
(train.max_length set, LD-DPO's ld_alpha) falls back to TRL's own reference. TRL reads precomputed
reference log-probs for a whole run or not at all (and refuses `precompute_ref_log_probs` for vision data),
so the fallback pairs get theirs from TRL's own `compute_ref_log_probs`, one forward each before training,
batched like training, and the Trainer reads every pair's from the batch; no reference forward runs during
training. Under DeepSpeed or FSDP the policy is not usable before training starts, so there a file with any
fallback pair uses TRL's reference pass for all of its pairs. DONE counts each case.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FIELDS = ("chosen_ref_logp", "rejected_ref_logp", "ref_tokens")
ROW = "ref_row"
"""The dataset column naming a pair's slot in the table of reference log-probs."""


# ---------------------------------------------------------------------------- written by csr generate


def reference_fields(prefix: list[int], chosen: tuple[list[int], float], rejected: tuple[list[int], float]
                     ) -> dict[str, Any]:
    """A pair's searched reference: each side's (token ids after the prefix, their summed raw log-prob)."""
    return {"chosen_ref_logp": float(chosen[1]), "rejected_ref_logp": float(rejected[1]),
            "ref_tokens": {"prefix": list(prefix), "chosen": list(chosen[0]), "rejected": list(rejected[0])}}


def without_reference(row: dict[str, Any]) -> dict[str, Any]:
    """The row without searched reference fields (a side that was not searched as written)."""
    return {k: v for k, v in row.items() if k not in FIELDS}


# ---------------------------------------------------------------------------- read by csr train


def trl_ids(row: dict[str, Any], side: str, processor) -> list[int]:
    """The token ids TRL's vision collator forwards for prompt + one side (image placeholders unexpanded)."""
    prompt, completion = row["prompt"], row[side]
    if not isinstance(prompt, str):  # conversational: TRL renders it with the chat template
        from trl.data_utils import apply_chat_template

        rendered = apply_chat_template({"prompt": prompt, "chosen": row["chosen"], "rejected": row["rejected"]},
                                       processor)
        prompt, completion = rendered["prompt"], rendered[side]
    tok = processor.tokenizer
    return tok(prompt, add_special_tokens=False).input_ids + tok(completion, add_special_tokens=False).input_ids


def searched_ids(record: dict[str, Any], side: str, processor) -> list[int]:
    """The token ids the search forwarded for one side: the chat prompt as the search encodes it, then its own."""
    from .curate import pair_question
    from .models.policy import chat_prompt

    question = record.get("question") or pair_question(record)
    tokens = record["ref_tokens"]
    return processor.tokenizer(chat_prompt(processor, question)).input_ids + tokens["prefix"] + tokens[side]


def why_not_exact(row: dict[str, Any], record: Any, processor) -> str | None:
    """Why a pair's searched reference is not TRL's (None: it is, token for token)."""
    if not isinstance(record, dict):
        return "no searched log-probs"
    values = [record.get(k) for k in FIELDS]
    if any(v is None for v in values) or not isinstance(values[2], dict):
        return "no searched log-probs"
    try:
        for side in ("chosen", "rejected"):
            if trl_ids(row, side, processor) != searched_ids(record, side, processor):
                return "TRL's tokenization differs from the searched tokens"
    except (KeyError, TypeError, ValueError):
        return "searched tokens unreadable"
    return None


def plan(cfg, rows: list[dict], path: Path, processor) -> tuple[list[tuple[float, float] | None], Counter]:
    """Per row (as read_pairs gave them): the searched (chosen, rejected) reference log-probs, or None where TRL's
    reference must be computed; and the count of each fallback reason."""
    from .data import read_entries

    n = len(rows)
    whole = _whole_file_reason(cfg)
    if whole:
        return [None] * n, Counter({whole: n})
    records = {e.line: e.value for e in read_entries(path, "pairs file")}
    values: list[tuple[float, float] | None] = []
    reasons: Counter = Counter()
    for row in rows:
        record = records.get(row["line"])
        reason = why_not_exact(row, record, processor)
        reasons.update([reason] if reason else [])
        values.append(None if reason else (record["chosen_ref_logp"], record["rejected_ref_logp"]))
    return values, reasons


def _whole_file_reason(cfg) -> str | None:
    t = cfg.train
    if t.reference == "model":
        return "train.reference=model"
    if t.max_length is not None:
        return "train.max_length set (TRL may cut a completion)"
    if t.trl_args.get("ld_alpha") is not None:
        return "LD-DPO (ld_alpha) weighs the reference's tokens"
    return None


class SearchedReferenceCollator:
    """TRL's collator, plus each pair's reference log-probs from the table (TRL's `ref_chosen_logps` and
    `ref_rejected_logps` batch keys, which the Trainer then reads instead of running its reference)."""

    def __init__(self, inner, table: list[tuple[float, float] | None]):
        self.inner, self.table = inner, table

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        slots = [self.table[e.pop(ROW)] for e in examples]
        batch = self.inner(examples)
        batch["ref_chosen_logps"] = torch.tensor([s[0] for s in slots], dtype=torch.float32)
        batch["ref_rejected_logps"] = torch.tensor([s[1] for s in slots], dtype=torch.float32)
        return batch


def install(trainer, values: list[tuple[float, float] | None], engine: str) -> dict[str, Any]:
    """Fill the fallback rows with TRL's own reference (one forward each, before training) and make the Trainer
    read every pair's reference from the batch. Returns DONE's counts. The dataset must carry ROW."""
    fallback = [i for i, v in enumerate(values) if v is None]
    info = {"from_search": len(values) - len(fallback), "fallback": len(fallback)}
    if len(fallback) == len(values) or (fallback and engine in ("deepspeed", "fsdp")):
        trainer.data_collator = _DropRow(trainer.data_collator)
        return {**info, "reference_pass": "trl", "from_search": 0, "fallback": len(values)}
    table = list(values)
    for i, value in zip(fallback, _trl_reference(trainer, fallback)):
        table[i] = value
    trainer.data_collator = SearchedReferenceCollator(trainer.data_collator, table)
    trainer.precompute_ref_logps = True  # _compute_loss reads the batch's ref_*_logps
    return {**info, "reference_pass": "none"}


class _DropRow:
    """TRL's collator with the ROW column dropped (TRL's reference pass for the whole file)."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, examples: list[dict]) -> dict:
        for e in examples:
            e.pop(ROW, None)
        return self.inner(examples)


def _trl_reference(trainer, indices: list[int]) -> list[tuple[float, float]]:
    """TRL's reference log-probs (its compute_ref_log_probs: adapters off, or the reference model) of these rows,
    batched as training batches them."""
    import torch

    if not indices:
        return []
    dataset, collate = trainer.train_dataset, _DropRow(trainer.data_collator)
    size = trainer.args.per_device_train_batch_size
    device, out = trainer.accelerator.device, []
    model = trainer.ref_model or trainer.model
    for start in range(0, len(indices), size):
        batch = collate([dataset[i] for i in indices[start:start + size]])
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        chosen, rejected = trainer.compute_ref_log_probs(model, batch)
        out += list(zip(chosen.float().cpu().tolist(), rejected.float().cpu().tolist()))
    log.info("train: TRL's reference computed for %d pair(s) before training", len(indices))
    return out
