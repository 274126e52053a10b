"""Sentence-level preference pairs from the search's scored siblings (`curate.pair_level: sentence | both`).

At every depth each partial answer of the calibrated search proposes K next sentences, each with its R_I, R_T
and R (search/paper.py keeps them as `SearchResult.siblings`). Where the partial answer is clean (every sentence
trusted: R_I >= tau and no repeat), two of its siblings make a context-aware pair in the manner of SENTINEL
(arXiv 2507.12455): the prompt is the question plus that clean prefix as a partial assistant turn, chosen is a
trusted sibling (the one with the highest R), rejected a sibling the reward doubts (R_I below tau, or a
repeat), picked as `curate.rejected` picks whole answers (lowest R, hardest = highest R, likeliest = highest
R_T). Only the next sentence is contrasted, so DPO learns where the hallucination starts, not a whole answer's
length or style. Ending the answer is a sibling like any other (with `search.offer_end` every set has one; its
R_I is the neutral value, tau under `reward.normalize=center`): where it outscores every true next sentence,
the pair is "stop here" against the hallucination, and the end is its EOS token. Without it, sentence pairs
would only ever teach the model to go on. At most `curate.max_sentence_pairs` per prompt, earliest depths
first.

Format: TRL's standard prompt / chosen / rejected with `images`: the prompt is the model's own chat-template text
(image placeholder included) with the assistant turn left open and the prefix written in it, chosen and
rejected are plain text continuing it. The unpatched DPOTrainer then scores exactly prompt + prefix + sentence
(its conversational path would close the prefix's turn and open a new one). The whole-answer pairs beside them,
and every pair under curate.pair_tokens=searched, are standard rows too, so one file holds one format: the
searched tokens' text (`ChatText.searched`) or, with curate.pair_tokens=template, TRL's own template rendering
(`ChatText.standard`).
"""

from __future__ import annotations

import os
from typing import Any

from .data import PromptRecord
from .schema.generation import CurateConfig
from .search.types import Answer, SearchResult, Sentence, Siblings
from .search_reference import reference_fields


class ChatText:
    """The policy's chat-template text (standard-format TRL rows), from its processor."""

    def __init__(self, processor):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self._anchor = self.tokenizer.encode("a", add_special_tokens=False)[-1:]

    def decode(self, tokens: list[int]) -> str:
        """The text of answer tokens as they read after the prompt (a SentencePiece word keeps its leading space,
        which a decode on its own drops)."""
        head = self.tokenizer.decode(self._anchor)
        text = self.tokenizer.decode(self._anchor + list(tokens), skip_special_tokens=True)
        return text[len(head):] if text.startswith(head) else self.tokenizer.decode(tokens, skip_special_tokens=True)

    def prompt(self, question: str, prefix: list[int]) -> str:
        """The chat-template text of image + question with the assistant turn open and the prefix written."""
        from .models.policy import chat_prompt

        return self.with_bos(chat_prompt(self.processor, question)) + self.decode(prefix)

    def with_bos(self, text: str) -> str:
        """The text with the BOS the search's encoding adds (the tokenizer's, when the template does not write it):
        TRL tokenizes a standard row's prompt with no special tokens, so it scores the answer in the same context."""
        tok = self.tokenizer
        bos = tok.bos_token
        if bos and not text.startswith(bos) and tok(text).input_ids[:1] == [tok.bos_token_id]:
            return bos + text
        return text

    def continuation(self, prefix: list[int], tokens: list[int]) -> str:
        """The text of `tokens` after `prefix`: prompt(q, prefix) + continuation = the answer's text so far. Trailing
        tokens a plain decode drops (the end of the answer: "</s>", "<|im_end|>") are written out as their own
        text, which TRL tokenizes back."""
        n = len(tokens)
        while n and self._hidden(tokens[n - 1]):
            n -= 1
        end = self.tokenizer.decode(tokens[n:], skip_special_tokens=False) if n < len(tokens) else ""
        if not n:
            return end
        head, full = self.decode(prefix), self.decode(prefix + tokens[:n])
        return (full[len(head):] if full.startswith(head) else self.decode(tokens[:n])) + end

    def _hidden(self, token: int) -> bool:
        """Whether a decode that skips special tokens drops this token (an end of turn, EOS)."""
        decode = self.tokenizer.decode
        return decode([token], skip_special_tokens=True) == "" and decode([token], skip_special_tokens=False) != ""

    def searched(self, pair: dict[str, Any]) -> dict[str, Any]:
        """A whole-answer pair row as the search wrote it: the prompt as the search encoded it, each side its
        searched tokens' text with the end token's own text ("</s>", "<|im_end|>") where the answer ended, so TRL
        forwards the very tokens the search scored. Rows without searched tokens (a written verdict) are
        rendered by the chat template (`standard`)."""
        tokens = pair.get("ref_tokens")
        if not tokens:
            return self.standard(pair)
        question = _question(pair)
        prefix = tokens["prefix"]
        rendered = {"prompt": self.prompt(question, prefix),
                    **{side: self.continuation(prefix, tokens[side]) for side in ("chosen", "rejected")}}
        return {**pair, **rendered, "question": question, "level": "response"}

    def standard(self, pair: dict[str, Any]) -> dict[str, Any]:
        """A conversational pair row rendered the way TRL renders it (prompt with the generation prompt, chosen
        and rejected with the end of turn), bookkeeping kept."""
        from trl.data_utils import apply_chat_template

        rendered = apply_chat_template({k: pair[k] for k in ("prompt", "chosen", "rejected")}, self.processor)
        question = _question(pair)
        rendered["prompt"] = self.with_bos(rendered["prompt"])
        return {**pair, **rendered, "question": question, "level": "response"}


def _question(pair: dict[str, Any]) -> str:
    """The question of a conversational pair row: the text parts of its user message."""
    return " ".join(c.get("text", "") for c in pair["prompt"][0]["content"] if c.get("type") == "text")


def trusted(sentence: Sentence, tau: float) -> bool:
    """A sentence the reward believes: CLIP puts it at or above tau and it does not repeat the answer."""
    return not sentence.repeat and sentence.r_i is not None and sentence.r_i >= tau


def _pick(options: list[Answer], rule: str) -> Answer:
    last = lambda a: a.sentences[-1]
    if rule == "hardest":
        return max(options, key=lambda a: last(a).r)
    if rule == "likeliest":
        return max(options, key=lambda a: last(a).r_t)
    return min(options, key=lambda a: last(a).r)


def sentence_pairs(rec: PromptRecord, round: int, result: SearchResult, curate: CurateConfig, tau: float,
                   text: ChatText) -> list[dict[str, Any]]:
    """The prompt's sentence pairs (module docstring), earliest depths first, at most curate.max_sentence_pairs."""
    pairs, seen = [], set()
    for group in sorted(result.siblings, key=lambda g: g.depth):
        if len(pairs) == curate.max_sentence_pairs:
            break
        if not all(trusted(s, tau) for s in group.prefix.sentences):
            continue
        options = [c for c in group.children if c.sentences[-1].end or c.sentences[-1].text]
        good = [c for c in options if trusted(c.sentences[-1], tau)]
        bad = [c for c in options if not trusted(c.sentences[-1], tau)]
        if not good or not bad:
            continue
        chosen, rejected = max(good, key=lambda a: a.sentences[-1].r), _pick(bad, curate.rejected)
        key = (tuple(group.prefix.tokens), chosen.sentences[-1].text, rejected.sentences[-1].text)
        if key in seen or key[1] == key[2]:
            continue
        seen.add(key)
        pairs.append(_record(rec, round, group, chosen, rejected, text))
    return pairs


def _record(rec: PromptRecord, round: int, group: Siblings, chosen: Answer, rejected: Answer,
            text: ChatText) -> dict[str, Any]:
    """The sentence-level pair row of two sibling next sentences after the group's prefix (docs/formats.md)."""
    prefix, depth = group.prefix, group.depth
    n = len(prefix.tokens)
    good, bad = chosen.sentences[-1], rejected.sentences[-1]
    return {
        "id": rec.id, "images": [os.path.abspath(rec.image)], "prompt": text.prompt(rec.prompt, prefix.tokens),
        "chosen": text.continuation(prefix.tokens, chosen.tokens[n:]),
        "rejected": text.continuation(prefix.tokens, rejected.tokens[n:]),
        "level": "sentence", "question": rec.prompt, "prefix": text.decode(prefix.tokens).strip(), "depth": depth,
        "chosen_reward": good.r, "rejected_reward": bad.r, "margin": good.r - bad.r,
        "chosen_r_i": good.r_i, "rejected_r_i": bad.r_i, "chosen_r_t": good.r_t, "rejected_r_t": bad.r_t,
        "rejected_repeat": bad.repeat, "round": round,
        **reference_fields(prefix.tokens, (chosen.tokens[n:], chosen.logp - prefix.logp),
                           (rejected.tokens[n:], rejected.logp - prefix.logp)),
    }
