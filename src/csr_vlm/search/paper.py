"""search.mode=paper (CSR sec. 3): score every depth's candidates with the calibrated reward, keep the best and worst.

Every live partial answer proposes K next sentences; each gets R = lam * R_I + (1 - lam) * R_T (put on
one scale by reward.normalize, with a defined reward for ending the answer and a neutral R_I for
sentences that repeat the answer); partial answers are ranked by cumulative R and the keep_top best +
keep_bottom worst survive, until every answer has ended or search.max_sentences. Chosen = highest
cumulative R among complete answers that say something (an answer that ends at once is no answer), rejected =
lowest. Every depth's sibling sentences, scored, are kept in the result (`siblings`) for sentence-level pairs.

A prompt that asks whether an object is in the image ("Is there a dog in the image?", POPE's form; under
reward.normalize=center) is judged by CLIP too: the first sentence of an answer that says yes or no gets
the R_I of the statement reward.yes_no_statement ("There is a dog in the image."), mirrored around tau
for "no", so the calibrated reward prefers the answer CLIP backs.
"""

from __future__ import annotations

import re
import time

from ..filters import junk_reason
from ..reward import (
    image_relevance,
    neutral_image_value,
    penalize_repeats,
    self_score,
    step_rewards,
    top_bottom,
    yes_no_relevance,
)
from .types import Answer, Candidate, SearchResult, Sentence, Siblings

_STOPWORDS = set("""a an the and or but of in on at to for with from by is are was were be been being it its this that
these those there here image picture photo shows show showing see seen can also very some has have had as into onto
over under near next their his her they them he she we you i which while other another one two""".split())



def paper_steps(ctx, image_emb):
    """Paper mode as a driver coroutine (types.Steps): score each depth's candidates, yield the kept rows."""
    scfg = ctx.search
    beams, complete, siblings = [Answer()], [], []
    cands = yield None
    for depth in range(scfg.max_sentences):
        children = score_step(ctx, beams, cands, image_emb)
        t0 = time.perf_counter()
        for p, parent in enumerate(beams):
            siblings.append(Siblings(depth, parent, [c for c in children if cands[c.row].parent == p]))
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
    said = [k for k, a in enumerate(complete) if a.says_something()]
    if said:
        order = sorted(said, key=lambda k: -complete[k].reward)
        chosen, rejected = order[0], order[-1]
    return SearchResult("paper", complete, chosen, rejected, ctx.stats(), siblings=siblings)


def score_step(ctx, beams: list[Answer], cands: list[Candidate], image_emb) -> list[Answer]:
    """One step: screen the candidates (junk filters, duplicates), score them (R_I, R_T, R), extend their answers."""
    rcfg = ctx.reward
    kept = _screen(ctx, cands)
    detect = rcfg.repeat_neutral or rcfg.repeat_penalty > 0
    repeats = [detect and not is_end and is_repeat(text, [s.text for s in beams[c.parent].sentences])
               for _, c, text, is_end in kept]
    r_i = _image_values(ctx, beams, kept, repeats, image_emb)
    r_t = [0.0 if is_end and not rcfg.end_self_score else self_score(cand.logprobs, rcfg.self_score)
           for _, cand, _, is_end in kept]
    rewards = penalize_repeats(step_rewards(r_i, r_t, rcfg), repeats, rcfg.repeat_penalty)
    ctx.events["candidates"] += len(cands)
    ctx.events["repeats"] += sum(repeats)
    out = []
    for k, (row, cand, text, is_end) in enumerate(kept):
        parent = beams[cand.parent]
        sent = Sentence(text=text, r_t=r_t[k], r_i=r_i[k], r=rewards[k], end=is_end, repeat=repeats[k])
        out.append(Answer(sentences=parent.sentences + [sent], tokens=parent.tokens + cand.tokens,
                          reward=parent.reward + rewards[k], ended=cand.stop == "eos", row=row,
                          logp=parent.logp + float(sum(cand.logprobs))))
    return out


def _screen(ctx, cands: list[Candidate]) -> list[tuple[int, Candidate, str, bool]]:
    """(row, candidate, text, is_end) of the candidates no junk filter rejects and no sibling duplicates; the
    dropped are counted in ctx.events."""
    scfg = ctx.search
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
    return kept


def _image_values(ctx, beams: list[Answer], kept: list[tuple[int, Candidate, str, bool]], repeats: list[bool],
                  image_emb) -> list[float]:
    """R_I of each kept candidate: the scorer's (in one batch), a yes/no verdict's statement value, or the step's
    neutral value for the end of the answer (reward.end_reward) and for a repeat (reward.repeat_neutral)."""
    rcfg = ctx.reward
    verdicts = [ctx.verdict(text) if not (is_end or beams[c.parent].sentences) else None
                for _, c, text, is_end in kept]  # a yes/no question's first sentence
    to_score = [k for k, (_, _, _, is_end) in enumerate(kept)
                if not (is_end or (repeats[k] and rcfg.repeat_neutral) or verdicts[k])]
    raw = ctx.score(image_emb, [kept[k][2] for k in to_score])
    r_i: list[float | None] = [None] * len(kept)
    for k, value in zip(to_score, raw):
        r_i[k] = image_relevance(value)
    for k, verdict in enumerate(verdicts):
        if verdict:
            r_i[k] = yes_no_relevance(verdict, ctx.statement_relevance(image_emb), float(rcfg.tau))
    neutral = neutral_image_value([v for v in r_i if v is not None], rcfg)
    end_value = 0.0 if rcfg.end_reward == "zero" else neutral
    return [v if v is not None else (end_value if kept[k][3] else neutral) for k, v in enumerate(r_i)]


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
