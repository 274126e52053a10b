"""The records the search passes around: candidates from an engine, scored sentences, answers, results."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Query:
    """One prompt to search: its image, prompt text and sampling seed, and the object it asks about when it is a
    yes/no question (PromptRecord.asked_object; None for a caption)."""

    image: Any
    prompt: str
    seed: int
    asked_object: str | None = None


@dataclass
class Candidate:
    """One proposed sentence of the row `parent`: its tokens, their raw log-probs, and why it stopped."""

    parent: int
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    stop: str = "max"  # delimiter | eos | max


@dataclass
class TokenCounter:
    """Tokens actually sent through the model (pads and repeats included) vs the minimum possible."""

    forwarded: int = 0
    prompt: int = 0
    generated: int = 0

    @property
    def minimal(self) -> int:
        return self.prompt + self.generated


@dataclass
class Sentence:
    """One scored sentence of an answer: R_T, R_I (None: not scored), their mix R."""

    text: str
    r_t: float
    r_i: float | None
    r: float
    end: bool = False  # the end-of-answer step (an EOS with no text)
    repeat: bool = False

    def to_dict(self) -> dict[str, Any]:
        out = {"text": self.text, "r_t": self.r_t, "r_i": self.r_i, "r": self.r}
        if self.end:
            out["end"] = True
        if self.repeat:
            out["repeat"] = True
        return out


@dataclass
class Answer:
    """A partial or complete answer: its sentences, tokens, cumulative reward, and its row in the engine."""

    sentences: list[Sentence] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    reward: float = 0.0
    ended: bool = False
    row: int = 0
    text: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    logp: float = 0.0
    """The sum of the raw log-probs of `tokens` under the searching policy (a pair's reference log-prob)."""

    def says_something(self) -> bool:
        """Whether the answer has a sentence besides its end (an answer that ends at once is no answer)."""
        return any(not s.end for s in self.sentences)

    def mean_r_i(self) -> float | None:
        values = [s.r_i for s in self.sentences if not s.end and s.r_i is not None]
        return sum(values) / len(values) if values else None

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "reward": self.reward, "ended": self.ended,
                "sentences": [s.to_dict() for s in self.sentences], **self.extra}


@dataclass
class Siblings:
    """The scored next sentences that one partial answer proposed at one depth (paper mode): sentence-level pairs
    (curate.pair_level) are cut from these."""

    depth: int
    prefix: Answer
    children: list[Answer]
    """The prefix extended by one candidate each (after junk filters and duplicates), in candidate order."""


@dataclass
class SearchResult:
    """One prompt's complete answers, the chosen and rejected indices (None: no complete answer), stats."""

    mode: str
    answers: list[Answer]
    chosen: int | None
    rejected: int | None
    stats: dict[str, Any]
    tree: list[dict] | None = None
    siblings: list[Siblings] = field(default_factory=list)


Steps = Generator["list[int] | None", "list[Candidate]", SearchResult]
"""One prompt's search as a coroutine: it receives a depth's candidates and yields the rows to keep; it returns
its SearchResult when no row is left."""
