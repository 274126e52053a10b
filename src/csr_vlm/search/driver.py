"""Search prompts in lock step: `search_prompts(engine, scorer, queries, search, reward)`.

Each prompt's search is a coroutine (paper.paper_steps for search.mode=paper, official.official_steps
for official): it receives one depth's candidates and yields the rows to keep. The driver opens all
prompts in the engine at once (one cached prefill each), then per depth asks the engine for the
candidates of every live row of every prompt (one decode for all of them), hands each prompt its
block, and keeps the rows the prompts picked; selection, rewards and bookkeeping stay per prompt, and
each prompt samples with its own seeded generator, so a prompt gets the same candidates in any batch
(up to float rounding of the wider batch). Shared engine time is split evenly over the prompts in it;
tokens_forwarded charges a prompt for its rows in every forward of its batch (rows that finished
early ride along as holes), tokens_minimal does not change. `search_prompt` is a batch of one.

The reward section passed in is the resolved one (tau filled in when it was estimated): the search
reads its settings from the arguments it gets, never from a whole run config.

    engine = HFEngine(policy, cfg.search)
    result = search_prompt(engine, scorer, Query(pil_image, "Describe this image.", 1234), cfg.search, cfg.reward)
    result.answers[result.chosen].text
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from ..reward import image_relevance, object_names
from ..schema import RewardConfig, SearchConfig
from ..yes_no import parse_answer, with_article
from .engine import Engine, Group, PromptItem
from .official import official_steps
from .paper import paper_steps
from .types import Query, SearchResult, Steps, TokenCounter


class SearchContext:
    """What one prompt's search needs besides its beams: settings, scorer, decoding, counters and timers, and for
    a yes/no question about an object, that object (paper.py judges its answers by CLIP's view of it)."""

    def __init__(self, engine: Engine, scorer, search: SearchConfig, reward: RewardConfig, asked: str | None = None):
        self.engine, self.scorer, self.search, self.reward = engine, scorer, search, reward
        self.counter = TokenCounter()
        self.times: Counter = Counter()
        self.events: Counter = Counter()
        self.question_object = asked if reward.normalize == "center" else None
        self._statement: float | None = None

    def verdict(self, text: str) -> str | None:
        """"yes" / "no" when this prompt is a yes/no question and the sentence answers it, else None."""
        if self.question_object is None:
            return None
        answer = parse_answer(text, "default")
        return answer if answer in ("yes", "no") else None

    def statement_relevance(self, image_emb) -> float:
        """R_I of "the object is there" (reward.yes_no_statement), scored once per prompt."""
        if self._statement is None:
            name = object_names(self.reward.object_names).get(self.question_object, self.question_object)
            text = with_article(self.reward.yes_no_statement, name)
            self._statement = image_relevance(self.score(image_emb, [text])[0])
        return self._statement

    def decode(self, tokens: list[int]) -> str:
        return self.engine.decode(tokens)

    def score(self, image_emb, texts: list[str]) -> list[float]:
        t0 = time.perf_counter()
        out = self.scorer.score(image_emb, texts) if texts else []
        self.times["score"] += time.perf_counter() - t0
        return out

    def stats(self) -> dict[str, Any]:
        return {"tokens_forwarded": self.counter.forwarded, "tokens_minimal": self.counter.minimal,
                "tokens_prompt": self.counter.prompt, "tokens_generated": self.counter.generated,
                "time": {k: round(v, 4) for k, v in self.times.items()}, "events": dict(self.events)}


def search_prompt(engine: Engine, scorer, query: Query, search: SearchConfig, reward: RewardConfig) -> SearchResult:
    """Search one query in search.mode; deterministic for its seed."""
    return search_prompts(engine, scorer, [query], search, reward)[0]


def search_prompts(engine: Engine, scorer, queries: list[Query], search: SearchConfig,
                   reward: RewardConfig) -> list[SearchResult]:
    """Search several queries together, each with its own seed; result i equals search_prompt on query i.

    Args:
        engine: proposes candidate sentences (hf_engine.HFEngine or any engine.Engine).
        scorer: the image-text scorer (scorer.Scorer: image_embedding, score).
        queries: image, prompt, seed and (yes/no questions) the object asked about.
        search, reward: the settings; reward.tau must be set when reward.normalize=center.
    """
    ctxs = [SearchContext(engine, scorer, search, reward, q.asked_object) for q in queries]
    t0 = time.perf_counter()
    state = engine.open([PromptItem(q.image, q.prompt, q.seed, ctx.counter) for ctx, q in zip(ctxs, queries)])
    _share(ctxs, range(len(ctxs)), "prefill", t0)
    steps = []
    for ctx, image in zip(ctxs, [q.image for q in queries]):
        t0 = time.perf_counter()
        image_emb = scorer.image_embedding(image)
        ctx.times["score"] += time.perf_counter() - t0
        steps.append(_steps(ctx, image_emb))
    return _drive(ctxs, steps, state)


def _steps(ctx: SearchContext, image_emb) -> Steps:
    if ctx.search.mode == "official":
        return official_steps(ctx, image_emb)
    return paper_steps(ctx, image_emb)


def _drive(ctxs: list[SearchContext], steps: list[Steps], state: Any) -> list[SearchResult]:
    """Run the prompts' searches in lock step: per depth one propose over all live rows, then one keep."""
    engine, k = ctxs[0].engine, ctxs[0].search.num_candidates
    results: list[SearchResult | None] = [None] * len(ctxs)
    rows = {p: 1 for p in range(len(ctxs))}  # live prompt -> its rows of `state`, in row order
    for gen in steps:
        next(gen)
    while rows:
        t0 = time.perf_counter()
        cands = engine.propose(state, [Group(p, n) for p, n in rows.items()])
        _share(ctxs, rows, "expand", t0)
        keep, start, survivors = [], 0, {}
        for p, n in rows.items():
            mine = cands[start: start + n * k]
            for cand in mine:
                cand.parent -= start // k
            try:
                picked = steps[p].send(mine)
            except StopIteration as stop:
                results[p] = stop.value
            else:
                keep += [start + r for r in picked]
                survivors[p] = len(picked)
            start += n * k
        rows = survivors
        if rows:
            t0 = time.perf_counter()
            state = engine.keep(state, keep)
            _share(ctxs, rows, "select", t0)
    return results


def _share(ctxs: list[SearchContext], which, key: str, t0: float) -> None:
    """Split the time since t0 evenly over the prompts `which` (work they did together)."""
    which = list(which)
    dt = (time.perf_counter() - t0) / len(which)
    for p in which:
        ctxs[p].times[key] += dt
