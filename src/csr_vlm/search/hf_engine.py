"""The transformers engine: engine.py's Engine on a policy loaded with the Auto classes (hf_decode.py decodes).

One cached prefill per prompt, then every candidate of every live row decoded together, token by token;
before the first search, `check` compares the model's cached decoding with a full forward (cache_check.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InputError
from ..schema import SearchConfig
from .cache_check import cached_decoding_problem
from .engine import Group, PromptItem
from .hf_decode import BeamState, RowBlock, TokenRules, concat_states, expand_groups, prefill, select
from .types import Candidate, TokenCounter


@dataclass
class _Batch:
    """An opened batch: the rows' continuation state and, per prompt, its sampler RNG and token counter."""

    state: BeamState
    generators: list[torch.Generator | None]
    counters: list[TokenCounter]


class HFEngine:
    """engine.py's Engine on a transformers policy: one cached prefill per prompt, candidates decoded in batch."""

    def __init__(self, policy, search: SearchConfig):
        self.policy, self.search = policy, search
        self.bounds = policy.boundaries(search.delimiters, search.boundary)
        self.eos_ids = policy.eos_ids
        self.suppress_ids = policy.suppressed_ids()

    @property
    def processor(self):
        return self.policy.processor

    @property
    def context_length(self) -> int | None:
        return self.policy.context_length

    def prompt_tokens(self, image, prompt: str) -> int:
        return self.policy.prompt_length(image, prompt)

    def check(self, image, prompt: str) -> None:
        """Refuse a model whose cached decoding differs from a full forward (a family the search does not support).

        Raises:
            InputError: one line naming the family and what differs.
        """
        problem = cached_decoding_problem(self.policy, image, prompt, self.suppress_ids, self.eos_ids)
        if problem:
            config = self.policy.model.config
            raise InputError(f"model.path: the cached search does not support {config.model_type} "
                             f"({type(self.policy.model).__name__}) yet: {problem}; search.check_cache=false "
                             "runs it anyway")

    def decode(self, tokens: list[int]) -> str:
        text_ids = [t for t in tokens if t not in self.eos_ids]
        return self.policy.tokenizer.decode(text_ids, skip_special_tokens=True).strip()

    def stats(self) -> dict[str, Any]:
        """Engine numbers for stats.json (per prompt, the search's own token counts say the rest)."""
        return {"engine": "hf"}

    def close(self) -> None:
        """Nothing to shut down: the policy is freed with the engine."""

    def open(self, items: list[PromptItem]) -> _Batch:
        states = [prefill(self.policy, item.image, item.prompt, item.counter) for item in items]
        sample = self.search.sampler == "sample"
        generators = [torch.Generator(device=self.policy.device).manual_seed(item.seed) if sample else None
                      for item in items]
        return _Batch(concat_states(states), generators, [item.counter for item in items])

    def propose(self, batch: _Batch, groups: list[Group]) -> list[Candidate]:
        blocks = [RowBlock(g.rows, batch.generators[g.prompt], batch.counters[g.prompt]) for g in groups]
        rules = TokenRules(self.bounds, self.eos_ids, self.suppress_ids)
        return expand_groups(self.policy, batch.state, self.search, rules, blocks)

    def keep(self, batch: _Batch, rows: list[int]) -> _Batch:
        batch.state = select(batch.state, rows)
        return batch
