"""From one prompt's search result to its records: the candidates line and a preference pair, or why there is none.

The pair is TRL's conversational vision DPO row (docs/formats.md) plus bookkeeping: the chosen and
rejected answers' cumulative rewards, their margin and their mean R_I. A prompt yields no pair when
no answer is complete, when chosen and rejected say the same, or when their margin is below
`curate.min_margin`; the reason goes to skipped.jsonl. `curate.balance_yes_no` then evens out, over the
whole round, the yes/no questions' pairs that prefer "yes" and those that prefer "no".
"""

from __future__ import annotations

import os
from typing import Any

from .data import PromptRecord
from .eval.pope import parse_answer, question_object
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


def _text(messages: list[dict]) -> str:
    return " ".join(c.get("text", "") for m in messages for c in m["content"] if c.get("type") == "text")


def balance_yes_no(pairs: list[dict]) -> tuple[list[dict], list[dict]]:
    """(kept pairs in their order, skip records of the dropped): the yes/no questions' pairs cut to as many that
    choose "yes" as choose "no", the larger side keeping its largest margins; other pairs are all kept."""
    sides: dict[str, list[int]] = {"yes": [], "no": []}
    for i, pair in enumerate(pairs):
        if question_object(_text(pair["prompt"])) is not None:
            verdict = parse_answer(_text(pair["chosen"]))
            if verdict in sides:
                sides[verdict].append(i)
    keep = min(len(sides["yes"]), len(sides["no"]))
    dropped: dict[int, str] = {}
    for verdict, rows in sides.items():
        for i in sorted(rows, key=lambda i: -pairs[i]["margin"])[keep:]:
            dropped[i] = f"curate.balance_yes_no (chosen '{verdict}': {len(rows)} pairs, the other answer {keep})"
    skips = [{"id": pairs[i]["id"], "reason": reason} for i, reason in sorted(dropped.items())]
    return [p for i, p in enumerate(pairs) if i not in dropped], skips
