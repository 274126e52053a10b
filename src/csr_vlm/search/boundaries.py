"""Where a sampled sentence ends: by its text, with one token of look-ahead, on any tokenizer.

`search.boundary=text` (the default): a delimiter ends a sentence only when what follows it is whitespace, a
newline, an EOS or nothing, so "3.5 meters", "$3.99" and "e.g." stay whole; a closing quote or bracket right
after the delimiter goes with the sentence ('He said "yes."'); abbreviations ("Mr.", "U.S.", "a.m.") and a list
number alone ("1.") do not end one; full-width delimiters (。！？) need no space after them. Byte-level
vocabularies (Qwen, Llama 3) make "." its own token after letters and digits, so whether a "." ends the sentence
is known only from the next token: a row whose last token ends in a delimiter is *pending*; its next sampled token
either confirms the end (the look-ahead token is dropped, the next sentence samples afresh from the same point)
or becomes part of the sentence. Whitespace-only delimiters ("\\n") and tokens with whitespace after the
delimiter (".\\n") end the sentence at once.

`search.boundary=token` is the official code's rule (it stops at the "." token id): any token whose text is a
delimiter with only whitespace after it ends the sentence, with no look-ahead.

Every token's class is worked out once per tokenizer from its text *in context* (decoded after a plain letter,
so a SentencePiece "▁The" reads " The"), in one batched decode.

    bounds = SentenceBoundaries.build(tokenizer, [".", "!", "?", "\\n", "。"], eos_ids, "text")
    bounds.classify(token)             # END, PENDING or NONE
    bounds.look_ahead(kind, token, text_so_far)   # CONFIRM, CLOSE_PENDING, CLOSE_END or CONTINUE
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Literal

Rule = Literal["text", "token"]

NONE, END, PENDING = 0, 1, 2
"""classify(): the token does not end a sentence / ends it now / ends it if the next token allows."""
CONFIRM, CLOSE_PENDING, CLOSE_END, CONTINUE = 0, 1, 2, 3
"""look_ahead(): the sentence ended before this token / the token (a closing quote or bracket) joins the sentence,
which stays pending / joins it and ends it / the sentence goes on with this token."""
SPACED, FULL_WIDTH = "spaced", "full_width"
"""The kinds of pending end: a delimiter that needs whitespace after it ("."), or one that needs none ("。")."""

CLOSERS = "\"'”’)]}»」』）】》〉›"
"""Characters that close a quotation or a bracket: after a delimiter they belong to the sentence."""

ABBREVIATIONS = frozenset(["mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "vs", "fig", "figs", "approx",
                           "ca", "cf", "inc", "ltd", "co", "corp", "dept", "est", "jan", "feb", "mar", "apr", "jun",
                           "jul", "aug", "sep", "sept", "oct", "nov", "dec"])
"""Words that a "." follows without ending the sentence (lower case, without the dot). Dotted initials ("e.g.",
"U.S.", "a.m.") are recognised by their shape instead."""

_DOTTED = re.compile(r"(?:^|[\s(\[])(?:[A-Za-z]\.){2,}$")
_WORD_DOT = re.compile(r"(?:^|[\s(\[])([A-Za-z]+)\.$")
_LIST_NUMBER = re.compile(r"^\(?\d{1,3}[.)]$")


def delimiter_kind(delimiter: str) -> str:
    """"hard" (whitespace: ends at once), FULL_WIDTH (。！？: needs no space after it) or SPACED (".", "!", "…")."""
    if delimiter.isspace():
        return "hard"
    return FULL_WIDTH if unicodedata.east_asian_width(delimiter[-1]) in ("W", "F") else SPACED


def ends_with_abbreviation(text: str) -> bool:
    """Whether a "."-ended sentence text stops on an abbreviation or is only a list number ("1.", "(2)")."""
    text = text.strip().rstrip(CLOSERS)
    if _LIST_NUMBER.match(text) or _DOTTED.search(text):
        return True
    word = _WORD_DOT.search(text)
    return bool(word) and word.group(1).lower() in ABBREVIATIONS


@dataclass
class SentenceBoundaries:
    """Every token's sentence-end class under one tokenizer, delimiter list and rule (see the module docstring)."""

    rule: Rule
    end_ids: frozenset[int]
    """Tokens that end a sentence at once."""
    pending: dict[int, str] = field(default_factory=dict)
    """Tokens that end in a delimiter with nothing after it, and the kind of that delimiter (rule=text)."""
    spaced: frozenset[int] = frozenset()
    """Tokens whose text starts with whitespace (they confirm a pending "." before them)."""
    closers: dict[int, bool] = field(default_factory=dict)
    """Tokens made only of closing quotes or brackets; True when whitespace follows them inside the token."""
    starts_delimiter: frozenset[int] = frozenset()
    """Tokens whose text starts with a delimiter or closer (they continue a pending "。", as in "。」" or "？！")."""
    eos_ids: frozenset[int] = frozenset()
    decode: object = None
    """tokens -> text (the tokenizer's decode), for the abbreviation check."""

    @classmethod
    def build(cls, tokenizer, delimiters: list[str], eos_ids: list[int], rule: Rule = "text") -> SentenceBoundaries:
        """Classify the whole vocabulary (special tokens never end a sentence)."""
        texts = token_texts(tokenizer)
        special = set(tokenizer.all_special_ids)
        kinds = {d: delimiter_kind(d) for d in delimiters if d}
        eos = frozenset(eos_ids)
        decode = lambda ids: tokenizer.decode(list(ids), skip_special_tokens=True)
        if rule == "token":
            ends = frozenset(i for i, t in enumerate(texts) if i not in special and _token_rule_end(t, kinds))
            return cls(rule, ends, eos_ids=eos, decode=decode)
        ends, pending, spaced, closers, starts = set(), {}, set(), {}, set()
        first_chars = set(CLOSERS) | {d[0] for d in kinds}
        for i, text in enumerate(texts):
            if i in special or not text:
                continue
            if text[0].isspace():
                spaced.add(i)
            if text[0] in first_chars:
                starts.add(i)
            body = text.rstrip()
            if body and all(c in CLOSERS for c in body):
                closers[i] = body != text
            verdict = _text_rule_class(text, kinds)
            if verdict == END:
                ends.add(i)
            elif verdict:
                pending[i] = verdict
        return cls(rule, frozenset(ends), pending, frozenset(spaced), closers, frozenset(starts), eos, decode)

    @classmethod
    def fixed(cls, stop_ids: list[int], eos_ids: list[int] = ()) -> SentenceBoundaries:
        """The token rule over a given id list (no look-ahead): for tests and checks that choose their own stops."""
        return cls("token", frozenset(stop_ids), eos_ids=frozenset(eos_ids))

    @property
    def stop_ids(self) -> list[int]:
        """Every token at which a sentence may end (END or PENDING): what an engine stops on before looking ahead."""
        return sorted(self.end_ids | set(self.pending))

    def classify(self, token: int) -> int:
        """END, PENDING or NONE for a token that is not a look-ahead (EOS is the caller's)."""
        if token in self.end_ids:
            return END
        return PENDING if token in self.pending else NONE

    def look_ahead(self, kind: str, token: int, sentence: list[int]) -> int:
        """What the token after a pending end of `kind` means for the sentence (its tokens so far, the pending
        delimiter last): CONFIRM, CLOSE_PENDING, CLOSE_END or CONTINUE."""
        if token in self.eos_ids:
            return CONFIRM
        if token in self.closers:
            return CLOSE_END if self.closers[token] else CLOSE_PENDING
        if kind == FULL_WIDTH:
            return CONTINUE if token in self.starts_delimiter else CONFIRM
        if token not in self.spaced:
            return CONTINUE
        return CONTINUE if ends_with_abbreviation(self.decode(sentence)) else CONFIRM


def token_texts(tokenizer) -> list[str]:
    """Each id's text as it reads after other text (a leading space kept), for every id of the tokenizer."""
    anchor = tokenizer.encode("a", add_special_tokens=False)[-1:]
    head = tokenizer.decode(anchor)
    decoded = tokenizer.batch_decode([anchor + [i] for i in range(len(tokenizer))], skip_special_tokens=False,
                                     clean_up_tokenization_spaces=False)
    return [t.removeprefix(head) for t in decoded]


def _token_rule_end(text: str, kinds: dict[str, str]) -> bool:
    """The official rule: the token's text has a delimiter with only whitespace after it."""
    cut = max((text.rfind(d) + len(d) for d in kinds if d in text), default=-1)
    return cut > 0 and not text[cut:].strip()


def _text_rule_class(text: str, kinds: dict[str, str]) -> int | str:
    """END, a pending kind, or NONE for a token's text under the text rule."""
    best, kind = -1, None
    for d, k in kinds.items():
        at = text.rfind(d)
        if at >= 0 and at + len(d) > best:
            best, kind = at + len(d), k
    if kind is None:
        return NONE
    rest = text[best:]
    if kind == "hard":
        return END if not rest.strip() else NONE
    closed = rest.rstrip()
    if any(c not in CLOSERS for c in closed):
        return NONE
    return END if closed != rest else kind
