"""The engine seam: what the search asks of whatever runs the model.

An engine holds the live partial answers of a batch of prompts as rows, in prompt order. The
search calls `open` once per batch, then per depth `propose` (every row of every live prompt gets
`search.num_candidates` candidate sentences; afterwards the candidates are the rows, parent-major)
and `keep` (the rows that survive, in the order given). R_T, R_I, pruning, pairs and bookkeeping
never see the engine's tensors, so a second engine is one module that implements this Protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from .types import Candidate, TokenCounter


@dataclass
class PromptItem:
    """One prompt of a batch: its image, question, sampling seed and token counter."""

    image: Any
    prompt: str
    seed: int
    counter: TokenCounter


@dataclass
class Group:
    """The block of consecutive rows that belongs to prompt `prompt` (its index in the opened batch)."""

    prompt: int
    rows: int


class Engine(Protocol):
    """What the search needs from whatever runs the model (see the module docstring)."""

    eos_ids: list[int]
    processor: Any
    """The model's Hugging Face processor (its tokenizer and chat template: pair rows are written with it)."""
    context_length: int | None
    """The most positions (prompt + answer) the model takes; None when unknown."""

    def prompt_tokens(self, image: Any, prompt: str) -> int:
        """Tokens of the image + prompt as the model sees them, checked against context_length before a search."""

    def decode(self, tokens: list[int]) -> str:
        """The text of a sentence's tokens (EOS and special tokens dropped, stripped)."""

    def open(self, items: list[PromptItem]) -> Any:
        """Encode the prompts (one row each) and return the batch state."""

    def propose(self, state: Any, groups: list[Group]) -> list[Candidate]:
        """Candidate sentences for every row of `groups` (num_candidates each, parent-major, parents counted
        from the first row); the candidates become the state's rows."""

    def keep(self, state: Any, rows: list[int]) -> Any:
        """The state with only `rows` (indices into the candidates of the last propose), in that order."""

    def check(self, image: Any, prompt: str) -> None:
        """Raise InputError (one line) when this engine cannot run this model right (checked before any work)."""

    def stats(self) -> dict[str, Any]:
        """Numbers for stats.json["engine"]: at least {"engine": name}; counts are summed over ranks."""

    def close(self) -> None:
        """Give the engine's memory back (called when the stage is done)."""
