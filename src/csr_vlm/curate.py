"""From one prompt's search result to its records: the candidates line and a preference pair, or why there is none.

The pair is TRL's conversational vision DPO row (docs/formats.md) plus bookkeeping: the chosen and
rejected answers' cumulative rewards, their margin and their mean R_I. A prompt yields no pair when
no answer is complete, when chosen and rejected say the same, or when their margin is below
`curate.min_margin`; the reason goes to skipped.jsonl.
"""

from __future__ import annotations

import os
from typing import Any

from .data import PromptRecord
from .search.types import Answer, SearchResult


def candidate_record(rec: PromptRecord, round: int, result: SearchResult) -> dict[str, Any]:
    """The candidates.jsonl line of a searched prompt: every complete answer, which is chosen and which rejected."""
    line = {"id": rec.id, "image": rec.image, "prompt": rec.prompt, "round": round, "mode": result.mode,
            "answers": [a.to_dict() for a in result.answers], "chosen": result.chosen, "rejected": result.rejected}
    if result.tree is not None:
        line["tree"] = result.tree
    return line


def pair_problem(result: SearchResult, min_margin: float) -> str | None:
    """Why a searched prompt gives no pair (None when it gives one)."""
    if result.chosen is None:
        return "no complete answer"
    chosen, rejected = result.answers[result.chosen], result.answers[result.rejected]
    if chosen.text == rejected.text:
        return "equal texts" if len(result.answers) > 1 else "equal texts (one complete answer)"
    if chosen.reward - rejected.reward < min_margin:
        return f"margin below curate.min_margin ({chosen.reward - rejected.reward:.4g} < {min_margin})"
    return None


def pair_record(rec: PromptRecord, round: int, chosen: Answer, rejected: Answer) -> dict[str, Any]:
    """TRL's conversational vision preference row plus bookkeeping (docs/formats.md)."""
    def reply(text: str) -> list[dict]:
        return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]

    return {
        "id": rec.id, "images": [os.path.abspath(rec.image)],
        "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": rec.prompt}]}],
        "chosen": reply(chosen.text), "rejected": reply(rejected.text),
        "chosen_reward": chosen.reward, "rejected_reward": rejected.reward, "margin": chosen.reward - rejected.reward,
        "chosen_r_i": chosen.mean_r_i(), "rejected_r_i": rejected.mean_r_i(), "round": round,
    }


def shard_line(rec: PromptRecord, round: int, result: SearchResult, min_margin: float) -> dict[str, Any]:
    """One prompt's shard line {id, candidate, pair, skip, stats}: a pair, or a skip with its reason."""
    line = {"id": rec.id, "candidate": candidate_record(rec, round, result), "pair": None, "skip": None,
            "stats": result.stats}
    reason = pair_problem(result, min_margin)
    if reason:
        line["skip"] = {"id": rec.id, "reason": reason, "answers": len(result.answers)}
    else:
        line["pair"] = pair_record(rec, round, result.answers[result.chosen], result.answers[result.rejected])
    return line
