"""The model's own control tokens in user text: image placeholders stripped from prompts, any other one refused.

A prompt is text the user wrote; the chat template puts it inside the model's control structure, and
the tokenizer turns every special-token string in it (`<image>`, `<|image_pad|>`, `<start_of_image>`,
`<|im_end|>`, `</s>`) into that token. A placeholder in the text asks for an image the batch does not
have (the processor or the model raises, and the prompt stops the run); an end-of-turn token rewrites
the conversation. So, one rule for every stage:

- a prompt (`csr generate`'s prompts, `csr eval`'s `eval.prompt` and POPE questions) loses every image
  placeholder of the model (`<image>`, which LLaVA's own prompt files start with, and each special token
  that names an image, vision or video), as generate always did for `<image>`, and is then whitespace
  stripped; a prompt that still holds a control token (`</s>`, `<|im_end|>`) is skipped with the reason;
- a pair's text (`csr train`) that holds any control token is skipped with the reason: it is an answer to
  be trained on, and stripping would train on other text.

A prompt too long for the model is refused before the tokenizer sees it: a text of N characters has at
least N / L tokens, L the characters of the longest token in the vocabulary, so a 50 MB line costs a
division, not a tokenization.

    tokens = ControlTokens.of(processor)
    prompt = tokens.clean_prompt(text)          # InputError with the reason when it cannot be used
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .errors import InputError

_IMAGE_WORDS = re.compile(r"image|img|vision|video", re.IGNORECASE)


@dataclass(frozen=True)
class ControlTokens:
    """A model's control tokens: the image placeholders (stripped from prompts) and the others (refused)."""

    placeholders: tuple[str, ...]
    others: tuple[str, ...]
    longest: int
    """Characters of the longest token of the vocabulary (the bound on characters per token)."""

    @classmethod
    def of(cls, processor) -> ControlTokens:
        """The control tokens of a processor (or a bare tokenizer): its special and added-special tokens (worked
        out once per processor: the longest token needs a pass over the vocabulary)."""
        known = _OF.get(id(processor))
        if known is not None and known[0] is processor:
            return known[1]
        tokens = cls._build(processor)
        if len(_OF) >= 4:  # a loop loads a processor per round: keep the last few, not all of them
            _OF.pop(next(iter(_OF)))
        _OF[id(processor)] = (processor, tokens)
        return tokens

    @classmethod
    def _build(cls, processor) -> ControlTokens:
        tok = getattr(processor, "tokenizer", processor)
        special = set(tok.all_special_tokens)
        special |= {t.content for t in getattr(tok, "added_tokens_decoder", {}).values() if t.special}
        named = {v for k, v in vars(processor).items() if k.endswith("_token") and isinstance(v, str)}
        special |= named
        placeholders = {"<image>"} | {t for t in special if _IMAGE_WORDS.search(t)}
        others = special - placeholders
        return cls(tuple(sorted(placeholders, key=len, reverse=True)), tuple(sorted(others, key=len, reverse=True)),
                   _longest_token(tok))

    def min_tokens(self, text: str) -> int:
        """A lower bound on the tokens of `text` that costs no tokenization."""
        return math.ceil(len(text) / max(self.longest, 1))

    def found(self, text: str, tokens: tuple[str, ...]) -> str | None:
        """The first of `tokens` that occurs in text, or None."""
        if not tokens:
            return None
        match = _pattern(tokens).search(text)
        return match.group(0) if match else None

    def clean_prompt(self, text: str) -> str:
        """The prompt with every image placeholder removed and whitespace stripped.

        Raises:
            InputError: the prompt holds another control token, or nothing is left.
        """
        if self.found(text, self.placeholders):
            text = _pattern(self.placeholders).sub("", text)
        text = text.strip()
        bad = self.found(text, self.others)
        if bad:
            raise InputError(f"prompt holds the model's control token {bad!r}")
        if not text:
            raise InputError("empty prompt (nothing but image placeholders)")
        return text

    def check_text(self, text: str, where: str) -> None:
        """Raise InputError naming `where` when text holds any control token (placeholders included)."""
        bad = self.found(text, self.placeholders + self.others)
        if bad:
            raise InputError(f"{where} holds the model's control token {bad!r}")


_OF: dict[int, tuple[object, ControlTokens]] = {}
_PATTERNS: dict[tuple[str, ...], re.Pattern] = {}


def _pattern(tokens: tuple[str, ...]) -> re.Pattern:
    if tokens not in _PATTERNS:
        _PATTERNS[tokens] = re.compile("|".join(map(re.escape, tokens)))
    return _PATTERNS[tokens]


def _longest_token(tok) -> int:
    """Characters of the longest decoded token of the vocabulary (byte-level pieces count as what they decode to,
    which is never more characters than the piece)."""
    vocab = tok.get_vocab()
    return max((len(piece) for piece in vocab), default=1)
