"""Sentence-level calibrated search: `search_prompt(policy, scorer, image, prompt, cfg, seed)` for one
(image, prompt), `search_prompts(policy, scorer, images, prompts, cfg, seeds)` for several at once.

search.mode=paper (CSR sec. 3): every live partial answer proposes K next sentences; each gets
R = lam * R_I + (1 - lam) * R_T (put on one scale by reward.normalize, with a defined reward for
ending the answer and a neutral R_I for sentences that repeat the answer); partial answers are ranked
by cumulative R and the keep_top best + keep_bottom worst survive, until every answer has ended or
search.max_sentences. Chosen = highest cumulative R among complete answers, rejected = lowest.
search.mode=official reproduces the official code (official.py). Both modes run the image + prompt
through the policy once and continue every candidate from cached keys/values (expand.py).

Each prompt's search is a coroutine (`_paper_steps`, official.official_steps): it receives one depth's
candidates and yields the rows to keep. `search_prompts` drives several of them in lock step: each
prompt is prefilled alone, the caches are stacked (expand.concat_states), and one expand decodes every
prompt's rows with one forward per token; selection, rewards and bookkeeping stay per prompt, and each
prompt samples with its own seeded generator, so a prompt gets the same candidates in any batch (up to
float rounding of the wider batch). Shared expand/select time is split evenly over the prompts in it;
tokens_forwarded charges a prompt for its rows in every forward of its batch (rows that finished
early ride along as holes), tokens_minimal does not change. `search_prompt` is a batch of one.

    result = search_prompt(policy, scorer, pil_image, "Describe this image.", cfg, seed=1234)
    result.answers[result.chosen].text
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import torch

from .config import RunConfig
from .expand import BeamState, Candidate, Group, TokenCounter, concat_states, expand_groups, prefill, select
from .filters import junk_reason
from .reward import image_relevance, neutral_image_value, penalize_repeats, self_score, step_rewards, top_bottom

_STOPWORDS = set("""a an the and or but of in on at to for with from by is are was were be been being it its this that
these those there here image picture photo shows show showing see seen can also very some has have had as into onto
over under near next their his her they them he she we you i which while other another one two""".split())


@dataclass
class Sentence:
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
    sentences: list[Sentence] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    reward: float = 0.0
    ended: bool = False
    row: int = 0
    text: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def mean_r_i(self) -> float | None:
        values = [s.r_i for s in self.sentences if not s.end and s.r_i is not None]
        return sum(values) / len(values) if values else None

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "reward": self.reward, "ended": self.ended,
                "sentences": [s.to_dict() for s in self.sentences], **self.extra}


@dataclass
class SearchResult:
    mode: str
    answers: list[Answer]
    chosen: int | None
    rejected: int | None
    stats: dict[str, Any]
    tree: list[dict] | None = None


class SearchContext:
    """What one prompt's search needs besides the beams: stop ids, sampler RNG, counters, timers."""

    def __init__(self, policy, scorer, cfg: RunConfig, seed: int):
        self.policy, self.scorer, self.cfg = policy, scorer, cfg
        cache = policy.__dict__.setdefault("_sentence_end_ids", {})  # a vocabulary scan: once per policy
        key = tuple(cfg.search.delimiters)
        if key not in cache:
            cache[key] = policy.delimiter_ids(cfg.search.delimiters)
        self.stop_ids = cache[key]
        self.eos_ids = policy.eos_ids
        self.suppress_ids = policy.suppressed_ids()
        self.generator = None
        if cfg.search.sampler == "sample":
            self.generator = torch.Generator(device=policy.device).manual_seed(seed)
        self.counter = TokenCounter()
        self.times: Counter = Counter()
        self.events: Counter = Counter()

    def decode(self, tokens: list[int]) -> str:
        text_ids = [t for t in tokens if t not in self.eos_ids]
        return self.policy.tokenizer.decode(text_ids, skip_special_tokens=True).strip()

    def score(self, image_emb, texts: list[str]) -> list[float]:
        t0 = time.perf_counter()
        out = self.scorer.score(image_emb, texts) if texts else []
        self.times["score"] += time.perf_counter() - t0
        return out

    def stats(self) -> dict[str, Any]:
        return {"tokens_forwarded": self.counter.forwarded, "tokens_minimal": self.counter.minimal,
                "tokens_prompt": self.counter.prompt, "tokens_generated": self.counter.generated,
                "time": {k: round(v, 4) for k, v in self.times.items()}, "events": dict(self.events)}


Steps = Generator[list[int] | None, list[Candidate], SearchResult]  # yields rows to keep, receives candidates


def search_prompt(policy, scorer, image, prompt: str, cfg: RunConfig, seed: int) -> SearchResult:
    """Search one (image, prompt) in cfg.search.mode; deterministic for a given seed."""
    return search_prompts(policy, scorer, [image], [prompt], cfg, [seed])[0]


def search_prompts(policy, scorer, images: list, prompts: list[str], cfg: RunConfig,
                   seeds: list[int]) -> list[SearchResult]:
    """Search several (image, prompt) pairs together, one seed each; result i equals search_prompt on pair i."""
    ctxs = [SearchContext(policy, scorer, cfg, seed) for seed in seeds]
    states, steps = [], []
    for ctx, image, prompt in zip(ctxs, images, prompts, strict=True):
        t0 = time.perf_counter()
        states.append(prefill(policy, image, prompt, ctx.counter))
        ctx.times["prefill"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        image_emb = scorer.image_embedding(image)
        ctx.times["score"] += time.perf_counter() - t0
        steps.append(_steps(ctx, image_emb))
    t0 = time.perf_counter()
    state = concat_states(states)
    _share(ctxs, range(len(ctxs)), "prefill", t0)
    return _drive(ctxs, steps, state)


def _steps(ctx: SearchContext, image_emb) -> Steps:
    if ctx.cfg.search.mode == "official":
        from .official import official_steps

        return official_steps(ctx, image_emb)
    return _paper_steps(ctx, image_emb)


def _drive(ctxs: list[SearchContext], steps: list[Steps], state: BeamState) -> list[SearchResult]:
    """Run the prompts' searches in lock step: per depth one expand over all live rows, then one select."""
    ctx0, k = ctxs[0], ctxs[0].cfg.search.num_candidates
    results: list[SearchResult | None] = [None] * len(ctxs)
    rows = {p: 1 for p in range(len(ctxs))}  # live prompt -> its rows of `state`, in row order
    for gen in steps:
        next(gen)
    while rows:
        t0 = time.perf_counter()
        groups = [Group(n, ctxs[p].generator, ctxs[p].counter) for p, n in rows.items()]
        cands = expand_groups(ctx0.policy, state, ctx0.cfg.search, ctx0.stop_ids, ctx0.eos_ids, ctx0.suppress_ids,
                              groups)
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
            state = select(state, keep)
            _share(ctxs, rows, "select", t0)
    return results


def _share(ctxs: list[SearchContext], which, key: str, t0: float) -> None:
    """Split the time since t0 evenly over the prompts `which` (work they did together)."""
    which = list(which)
    dt = (time.perf_counter() - t0) / len(which)
    for p in which:
        ctxs[p].times[key] += dt


def _paper_steps(ctx: SearchContext, image_emb) -> Steps:
    """Paper mode as a coroutine: score each depth's candidates, yield the keep_top + keep_bottom rows."""
    scfg = ctx.cfg.search
    beams, complete = [Answer()], []
    cands = yield None
    for depth in range(scfg.max_sentences):
        children = _score_step(ctx, beams, cands, image_emb)
        t0 = time.perf_counter()
        last_step = depth == scfg.max_sentences - 1
        complete += [a for a in children if a.ended or last_step]
        live = [a for a in children if not (a.ended or last_step)]
        beams = [live[i] for i in top_bottom([a.reward for a in live], scfg.keep_top, scfg.keep_bottom)]
        ctx.times["select"] += time.perf_counter() - t0
        if not beams:
            break
        cands = yield [a.row for a in beams]
    for answer in complete:
        answer.text = ctx.decode(answer.tokens)
    chosen = rejected = None
    if complete:
        order = sorted(range(len(complete)), key=lambda k: -complete[k].reward)
        chosen, rejected = order[0], order[-1]
    return SearchResult("paper", complete, chosen, rejected, ctx.stats())


def _score_step(ctx: SearchContext, beams: list[Answer], cands: list[Candidate], image_emb) -> list[Answer]:
    """Filter and dedupe one step's candidates, score them (R_I, R_T, R) and return the extended answers."""
    rcfg, scfg = ctx.cfg.reward, ctx.cfg.search
    kept: list[tuple[int, Candidate, str, bool]] = []
    seen = set()
    for row, cand in enumerate(cands):
        text = ctx.decode(cand.tokens)
        is_end = cand.stop == "eos" and not text
        reason = None if is_end else junk_reason(text, scfg.filters, scfg.min_sentence_chars)
        key = (cand.parent, text, cand.stop == "eos")
        if reason or key in seen:
            ctx.events[f"filtered_{reason}" if reason else "duplicate"] += 1
            continue
        seen.add(key)
        kept.append((row, cand, text, is_end))
    detect = rcfg.repeat_neutral or rcfg.repeat_penalty > 0
    repeats = [detect and not is_end and is_repeat(text, [s.text for s in beams[c.parent].sentences])
               for _, c, text, is_end in kept]
    to_score = [k for k, (_, _, _, is_end) in enumerate(kept) if not (is_end or (repeats[k] and rcfg.repeat_neutral))]
    raw = ctx.score(image_emb, [kept[k][2] for k in to_score])
    r_i: list[float | None] = [None] * len(kept)
    for k, value in zip(to_score, raw):
        r_i[k] = image_relevance(value)
    neutral = neutral_image_value([v for v in r_i if v is not None], rcfg)
    end_value = 0.0 if rcfg.end_reward == "zero" else neutral
    filled = [v if v is not None else (end_value if kept[k][3] else neutral) for k, v in enumerate(r_i)]
    r_t = [0.0 if is_end and not rcfg.end_self_score else self_score(cand.logprobs, rcfg.self_score)
           for _, cand, _, is_end in kept]
    rewards = penalize_repeats(step_rewards(filled, r_t, rcfg), repeats, rcfg.repeat_penalty)
    ctx.events["candidates"] += len(cands)
    ctx.events["repeats"] += sum(repeats)
    out = []
    for k, (row, cand, text, is_end) in enumerate(kept):
        parent = beams[cand.parent]
        sent = Sentence(text=text, r_t=r_t[k], r_i=filled[k], r=rewards[k], end=is_end, repeat=repeats[k])
        out.append(Answer(sentences=parent.sentences + [sent], tokens=parent.tokens + cand.tokens,
                          reward=parent.reward + rewards[k], ended=cand.stop == "eos", row=row))
    return out


def _words(text: str) -> list[str]:
    return re.sub(r"[^\w]+", " ", text.lower()).split()


def is_repeat(text: str, previous: list[str]) -> bool:
    """A sentence repeats the answer when its normalised text was said already, or all its content words were."""
    words = _words(text)
    if not words or not previous:
        return False
    if any(_words(p) == words for p in previous):
        return True
    content = {w for w in words if len(w) > 2 and w not in _STOPWORDS}
    covered = {w for p in previous for w in _words(p)}
    return bool(content) and content <= covered
