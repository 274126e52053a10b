"""Junk filters for candidate sentences (the official code's `clean_tree` rules plus its < 4-character skip).

A sampled sentence in a foreign script, full of emoji, stuck repeating a word or a character, made of
many blank lines, or too short to say anything is dropped before it can become part of a pair.
`search.filters` names the filters to apply ([] switches them off); `search.min_sentence_chars` is
the `short` threshold (official: 4).

    junk_reason("a dog a dog dog dog dog dog dog", ["word_repeat"])   # "word_repeat"
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

_SCRIPT = re.compile("[\u3130-\u318F\uAC00-\uD7AF\u3040-\u30FF\u0400-\u04FF]")  # Korean, kana, Cyrillic
_EMOJI = re.compile("[\U0001F300-\U0001F6FF\U0001F700-\U0001F77F\U0001F900-\U0001F9FF\u2600-\u27BF]")
_WORD_REPEAT = re.compile(r"(\b\w+\b)(?:\s+\1){5,}", re.IGNORECASE)  # same word 6+ times in a row
_CHAR_REPEAT = re.compile(r"(\S)(?:\s*\1){10,}")  # one character 11+ times (whitespace allowed between)
_NBSP = re.compile(r"(?:&nbsp;){2,}")


def _newlines(text: str, _min_chars: int) -> bool:
    return text.count("\n") > 5


FILTERS: dict[str, Callable[[str, int], bool]] = {
    "script": lambda text, _: bool(_SCRIPT.search(text) or _NBSP.search(text)),
    "emoji": lambda text, _: bool(_EMOJI.search(text)),
    "word_repeat": lambda text, _: bool(_WORD_REPEAT.search(text)),
    "char_repeat": lambda text, _: bool(_CHAR_REPEAT.search(text)),
    "newlines": _newlines,
    "short": lambda text, min_chars: len(text.strip()) < min_chars,
}


def junk_reason(text: str, names: Sequence[str], min_chars: int = 4) -> str | None:
    """The first filter (in `names` order) that rejects `text`, or None when it passes them all."""
    for name in names:
        if FILTERS[name](text, min_chars):
            return name
    return None
