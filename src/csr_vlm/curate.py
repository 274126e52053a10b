"""From one prompt's search result to its records: the candidates line and a preference pair, or why there is none.

The pair is TRL's conversational vision DPO row (docs/formats.md) plus bookkeeping: the chosen and
rejected answers' cumulative rewards, their margin and their mean R_I. The rejected answer is the search's
lowest, or (`curate.rejected`) the hardest or likeliest of the answers the reward doubts. A prompt yields no
pair when no answer is complete, when chosen and rejected say the same, when their margin is below
`curate.min_margin`, or (`curate.require_doubt`) when no sentence of the rejected answer is one the reward
doubts; the reason goes to skipped.jsonl. With `curate.yes_no_answers`, a yes/no question whose
answers all say the same still yields a pair: the verdict CLIP backs against the other, in those words.
`curate.balance_yes_no` then evens out, over the whole round, the yes/no questions' pairs that prefer "yes"
and those that prefer "no". With `curate.yes_no_anchor` a yes/no question gives instead an anchor row, the
model's likeliest answer on both sides, which DPO ignores and the SFT term replays. With `curate.pair_level`
sentence or both, a described prompt also yields sentence-level pairs (sentence_pairs.py).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .data import PromptRecord, read_jsonl
from .reward import yes_no_relevance
from .schema.generation import CurateConfig, RewardConfig
from .search.types import Answer, SearchResult
from .search_reference import reference_fields, without_reference
from .sentence_pairs import ChatText, sentence_pairs
from .yes_no import YES_NO, parse_answer, task_of


def candidate_record(rec: PromptRecord, round: int, result: SearchResult) -> dict[str, Any]:
    """The candidates.jsonl line of a searched prompt: every complete answer, which is chosen and which rejected."""
    line = {"id": rec.id, "image": rec.image, "prompt": rec.prompt, "round": round, "mode": result.mode,
            "answers": [a.to_dict() for a in result.answers], "chosen": result.chosen, "rejected": result.rejected}
    if result.tree is not None:
        line["tree"] = result.tree
    return line


def pick_rejected(result: SearchResult, rule: str, tau: float | None) -> int | None:
    """The index of the answer a pair rejects (curate.rejected): the search's own (lowest) or, among the answers
    that say something and have a doubted sentence, the one with the highest reward (hardest) or the highest
    summed R_T (likeliest); the search's own when no answer is doubted."""
    if rule == "lowest" or result.chosen is None:
        return result.rejected
    doubtful = [k for k, a in enumerate(result.answers)
                if k != result.chosen and a.says_something() and doubted(a, tau)]
    if not doubtful:
        return result.rejected
    if rule == "hardest":
        return max(doubtful, key=lambda k: result.answers[k].reward)
    return max(doubtful, key=lambda k: sum(s.r_t for s in result.answers[k].sentences if not s.end))


def pair_problem(result: SearchResult, curate: CurateConfig, tau: float | None = None) -> str | None:
    """Why a searched prompt gives no pair (None when it gives one)."""
    if result.chosen is None:
        return "no complete answer"
    chosen, rejected = result.answers[result.chosen], result.answers[result.rejected]
    if chosen.text == rejected.text:
        return "equal texts" if len(result.answers) > 1 else "equal texts (one complete answer)"
    if chosen.reward - rejected.reward < curate.min_margin:
        return f"margin below curate.min_margin ({chosen.reward - rejected.reward:.4g} < {curate.min_margin})"
    if curate.require_doubt and not doubted(rejected, tau):
        return "curate.require_doubt: no sentence of the rejected answer is below tau or a repeat"
    return None


def doubted(answer: Answer, tau: float | None) -> bool:
    """Whether the reward doubts a sentence of the answer: a repeat, or R_I below tau."""
    return any(s.repeat or (tau is not None and s.r_i is not None and s.r_i < tau)
               for s in answer.sentences if not s.end)


def _reply(text: str) -> list[dict]:
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def pair_record(rec: PromptRecord, round: int, chosen: Answer, rejected: Answer) -> dict[str, Any]:
    """TRL's conversational vision preference row plus bookkeeping (docs/formats.md)."""
    return {
        "id": rec.id, "images": [os.path.abspath(rec.image)],
        "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": rec.prompt}]}],
        "chosen": _reply(chosen.text), "rejected": _reply(rejected.text),
        "chosen_reward": chosen.reward, "rejected_reward": rejected.reward, "margin": chosen.reward - rejected.reward,
        "chosen_r_i": chosen.mean_r_i(), "rejected_r_i": rejected.mean_r_i(), "round": round,
        **reference_fields([], (chosen.tokens, chosen.logp), (rejected.tokens, rejected.logp)),
    }


def other_verdict_pair(rec: PromptRecord, round: int, result: SearchResult, words: dict[str, str],
                       tau: float | None, lam: float) -> dict[str, Any] | None:
    """The pair of a yes/no question whose chosen answer gives a verdict that no other answer contradicts: the
    verdict the reward backs against the other one, the answer not sampled in `words` (curate.yes_no_answers).

    With an image term (lam > 0) CLIP decides: it backs the sampled answer when its first sentence's R_I (the
    statement's R_I, mirrored around tau for "no", search/paper.py) is above tau. With lam = 0 only the
    likelihood speaks, and it backs the verdict the model sampled every time. The answer that was not sampled
    has no reward of its own: the pair's margin is None and `written` names the side that was written. None when
    the prompt is no such question, or, with lam > 0, the search judged no verdict (official mode, or no tau) or
    CLIP sits exactly on tau."""
    if not words or result.chosen is None or rec.task != YES_NO:
        return None
    sampled = result.answers[result.chosen]
    verdict = parse_answer(sampled.text)
    first_r_i = sampled.sentences[0].r_i if sampled.sentences else None
    if verdict not in ("yes", "no") or any(parse_answer(a.text) not in (verdict, "unknown") for a in result.answers):
        return None
    judged = tau is not None and first_r_i is not None
    if lam > 0 and (not judged or first_r_i == tau):
        return None
    other = "no" if verdict == "yes" else "yes"
    record = without_reference(pair_record(rec, round, sampled, sampled))  # one side is not searched
    written, kept = ("rejected", "chosen") if lam == 0 or first_r_i > tau else ("chosen", "rejected")
    record[written] = _reply(words[other])
    record[f"{written}_reward"], record["margin"], record["written"] = None, None, written
    statement_r_i = yes_no_relevance(verdict, first_r_i, tau) if judged else None
    record[f"{written}_r_i"] = yes_no_relevance(other, statement_r_i, tau) if judged else None
    record[f"{kept}_r_i"] = first_r_i
    return record


def anchor_record(rec: PromptRecord, round: int, result: SearchResult) -> dict[str, Any] | None:
    """The curate.yes_no_anchor row of a question: the likeliest answer that says something (the highest summed
    R_T) as both chosen and rejected, margin 0 and `anchor` true; None when no answer says something."""
    said = [a for a in result.answers if a.says_something()]
    if not said:
        return None
    likeliest = max(said, key=lambda a: sum(s.r_t for s in a.sentences if not s.end))
    return {**pair_record(rec, round, likeliest, likeliest), "anchor": True}


def shard_line(rec: PromptRecord, round: int, result: SearchResult, curate: CurateConfig, reward: RewardConfig,
               text: ChatText | None = None) -> dict[str, Any]:
    """One prompt's shard line {id, candidate, pair, sentence_pairs, skip, stats}: its pairs, or a skip with its
    reason. `reward` is the one the search ran with (its tau, its lam). `text` (the policy's tokenizer and chat
    template; csr generate passes it with curate.pair_tokens searched, or curate.pair_level sentence or both)
    renders every row; without it a whole-answer row stays conversational."""
    tau = reward.tau
    line = _response_line(rec, round, result, curate, tau, reward.lam)
    render = None if text is None else text.searched if curate.pair_tokens == "searched" else text.standard
    if curate.pair_level == "response":
        if line["pair"] is not None and render is not None:
            line["pair"] = render(line["pair"])
        return line
    question = rec.task == YES_NO
    if line["pair"] is not None:
        line["pair"] = None if curate.pair_level == "sentence" and not question else render(line["pair"])
    line["sentence_pairs"] = [] if question else sentence_pairs(rec, round, result, curate, tau, text)
    if line["pair"] or line["sentence_pairs"]:
        line["skip"] = None
    elif not question:
        reason = "no sentence pair (no clean prefix with a trusted and a doubted next sentence)"
        if curate.pair_level == "both" and line["skip"]:
            reason = f"{line['skip']['reason']}; {reason}"
        line["skip"] = {"id": rec.id, "reason": reason, "answers": len(result.answers)}
    return line


def _response_line(rec: PromptRecord, round: int, result: SearchResult, curate: CurateConfig, tau: float | None,
                   lam: float) -> dict[str, Any]:
    """The shard line with the prompt's whole-answer pair (the paper's), or a skip with its reason."""
    result = dataclasses.replace(result, rejected=pick_rejected(result, curate.rejected, tau))
    line = {"id": rec.id, "candidate": candidate_record(rec, round, result), "pair": None, "skip": None,
            "stats": result.stats}
    if curate.yes_no_anchor and rec.task == YES_NO:
        line["pair"] = anchor_record(rec, round, result)
        if line["pair"] is None:
            line["skip"] = {"id": rec.id, "reason": "curate.yes_no_anchor: no answer says something",
                            "answers": len(result.answers)}
        return line
    reason = pair_problem(result, curate, tau)
    if reason:  # no pair from the samples; a unanimous yes/no question still pairs with the other verdict
        pair = other_verdict_pair(rec, round, result, curate.yes_no_answers, tau, lam)
        if pair is not None:
            line["pair"] = pair
            return line
    if reason:
        line["skip"] = {"id": rec.id, "reason": reason, "answers": len(result.answers)}
    else:
        line["pair"] = pair_record(rec, round, result.answers[result.chosen], result.answers[result.rejected])
    return line


def message_text(messages: Any) -> str:
    """The text of a TRL message list (or of a plain string) joined by spaces: string contents and the text parts of
    list contents, anything else skipped."""
    if isinstance(messages, str):
        return messages
    parts = []
    for msg in messages if isinstance(messages, list) else []:
        content = msg.get("content") if isinstance(msg, dict) else None
        if isinstance(content, str):
            parts.append(content)
        for c in content if isinstance(content, list) else []:
            if isinstance(c, dict) and c.get("type") == "text":
                parts.append(str(c.get("text", "")))
    return " ".join(parts)


def pair_question(pair: dict[str, Any]) -> str:
    """The question a pair row answers (its `question` when the prompt is rendered chat-template text)."""
    return pair.get("question") or message_text(pair["prompt"])


def pair_answers(pair: dict[str, Any]) -> tuple[str, str]:
    """The chosen and rejected texts of a pair row, either format."""
    return message_text(pair["chosen"]), message_text(pair["rejected"])


def read_pair_rows(path: str | Path) -> Iterator[dict[str, Any]]:
    """The rows of a pairs.jsonl (either format), each with its `task` (yes_no.CAPTION or YES_NO) read as it is
    read, from the question it answers; the rows on disk carry no task field."""
    for pair in read_jsonl(path):
        yield {**pair, "task": task_of(pair_question(pair))}


def balance_yes_no(pairs: list[dict], questions: set[str]) -> tuple[list[dict], list[dict]]:
    """(kept pairs in their order, skip records of the dropped): the pairs of the yes/no questions (`questions`:
    their prompt ids) cut to as many that choose "yes" as choose "no", the larger side keeping its largest
    margins; other pairs are all kept."""
    sides: dict[str, list[int]] = {"yes": [], "no": []}
    for i, pair in enumerate(pairs):
        if pair["id"] in questions and not pair.get("anchor"):
            verdict = parse_answer(pair_answers(pair)[0])
            if verdict in sides:
                sides[verdict].append(i)
    keep = min(len(sides["yes"]), len(sides["no"]))
    dropped: dict[int, str] = {}
    for verdict, rows in sides.items():
        by_margin = sorted(rows, key=lambda i: -(pairs[i]["margin"] if pairs[i]["margin"] is not None else math.inf))
        for i in by_margin[keep:]:
            dropped[i] = f"curate.balance_yes_no (chosen '{verdict}': {len(rows)} pairs, the other answer {keep})"
    skips = [{"id": pairs[i]["id"], "reason": reason} for i, reason in sorted(dropped.items())]
    return [p for i, p in enumerate(pairs) if i not in dropped], skips
