"""search.mode=official: the official CSR code's search and ranking, reproduced (docs/search.md).

Search (`sample.py`): every active node proposes K children; all non-final children at a depth form
one pool sorted by cumulative self-score only; when the pool has >= search.num_candidates members,
keep the keep_top best + keep_bottom worst (official: num_beams 5 -> 1 best + 2 worst), else all.
CLIP plays no part in the search. A child is final when it produced an EOS (or reached
search.max_sentences; the official code's 1024-character cap is not reproduced).
After the search (`score.py`, `construct.py`): junk filters remove a node with its subtree; the
survivors get a raw CLIP score (100 * cos, no clamp); within each sibling set,
rank = (index + 1) / n for self-score and for CLIP score, descending; a root-to-final path is valued
sum((1 - lam) * rank + lam * clip_rank) / (sentences + 1); chosen = lowest, rejected = highest.
Answers carry reward = -path_value (higher is better, as in paper mode) and `path_value`.
Official settings: sampler=diverse_beam, num_candidates=5, diversity_penalty=3, keep_top=1,
keep_bottom=2, max_new_tokens=70, self_score=mean, lam=0.9, delimiters=["."].
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass, field

from ..filters import junk_reason
from ..reward import path_value, self_score, sibling_ranks, top_bottom
from .types import Answer, SearchResult, Sentence, Steps


@dataclass
class Node:
    """One sentence of the official search tree, with what the search and the ranking computed for it."""
    id: int
    parent: int | None
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    r_t: float = 0.0  # this sentence's self-score
    cum: float = 0.0  # cumulative self-score along the path (what the search prunes on)
    final: bool = False
    eos: bool = False
    pruned: bool = False
    filtered: str | None = None
    row: int = 0
    r_i: float | None = None
    rank: float | None = None
    clip_rank: float | None = None
    children: list[int] = field(default_factory=list)
    logp: float = 0.0  # summed raw log-probs of `tokens`

    def to_dict(self) -> dict:
        return {"id": self.id, "parent": self.parent, "text": self.text, "r_t": self.r_t, "cum_r_t": self.cum,
                "r_i": self.r_i, "rank": self.rank, "clip_rank": self.clip_rank, "final": self.final,
                "pruned": self.pruned, "filtered": self.filtered}


def official_steps(ctx, image_emb) -> Steps:
    """The whole official search as a driver coroutine (types.Steps): grow the tree, then filter, rank and pick."""
    tree = yield from grow_tree(ctx)
    t0 = time.perf_counter()
    scfg = ctx.search
    for node in tree[1:]:
        if tree[node.parent].filtered:
            node.filtered = "parent"
        else:
            node.filtered = junk_reason(node.text, scfg.filters, scfg.min_sentence_chars)
    ctx.times["select"] += time.perf_counter() - t0
    alive = [n for n in tree[1:] if not n.filtered]
    for node, raw in zip(alive, ctx.score(image_emb, [n.text for n in alive])):
        node.r_i = raw  # official: logits_per_image, no clamp
    rank_tree(tree)
    answers = path_answers(tree, ctx.reward.lam)
    for answer in answers:
        answer.text = ctx.decode(answer.tokens)
    chosen = rejected = None
    if answers:
        order = sorted(range(len(answers)), key=lambda k: answers[k].extra["path_value"])
        chosen, rejected = order[0], order[-1]
    ctx.events["candidates"] += len(tree) - 1
    return SearchResult("official", answers, chosen, rejected, ctx.stats(), tree=[n.to_dict() for n in tree])


def grow_tree(ctx) -> Generator[list[int] | None, list, list[Node]]:
    """The official search: expand active nodes, prune the pool by cumulative self-score only.

    A coroutine: receives each depth's candidates, yields the rows to keep, returns the tree."""
    scfg = ctx.search
    tree = [Node(id=0, parent=None)]
    active = [tree[0]]
    cands = yield None
    for depth in range(scfg.max_sentences):
        t0 = time.perf_counter()
        pool = []
        for row, cand in enumerate(cands):
            parent = active[cand.parent]
            score = self_score(cand.logprobs, ctx.reward.self_score)
            node = Node(id=len(tree), parent=parent.id, text=ctx.decode(cand.tokens), tokens=cand.tokens,
                        r_t=score, cum=parent.cum + score, row=row, eos=cand.stop == "eos",
                        final=cand.stop == "eos" or depth == scfg.max_sentences - 1, logp=float(sum(cand.logprobs)))
            tree.append(node)
            parent.children.append(node.id)
            if not node.final:
                pool.append(node)
        pool.sort(key=lambda n: -n.cum)  # stable: ties keep generation order
        keep = pool
        if len(pool) >= scfg.num_candidates:
            keep = [pool[i] for i in top_bottom([n.cum for n in pool], scfg.keep_top, scfg.keep_bottom)]
        for node in pool:
            node.pruned = node not in keep
        ctx.times["select"] += time.perf_counter() - t0
        if not keep:
            break
        active = keep
        cands = yield [n.row for n in keep]
    return tree


def rank_tree(tree: list[Node]) -> None:
    """Official `calculate_ranks` on every sibling set of unfiltered nodes (pruned siblings count in n)."""
    for node in tree:
        kids = [tree[c] for c in node.children if not tree[c].filtered]
        if not kids:
            continue
        for kid, rank, clip_rank in zip(kids, sibling_ranks([k.cum for k in kids]),
                                        sibling_ranks([k.r_i for k in kids])):
            kid.rank, kid.clip_rank = rank, clip_rank


def path_answers(tree: list[Node], lam: float) -> list[Answer]:
    """One answer per root-to-final path of unfiltered nodes, in depth-first order (as `construct.py`)."""
    answers = []

    def walk(node: Node, path: list[Node]) -> None:
        for c in node.children:
            kid = tree[c]
            if kid.filtered:
                continue
            if kid.final:
                answers.append(_answer(path + [kid], lam))
            walk(kid, path + [kid])

    walk(tree[0], [])
    return answers


def _answer(path: list[Node], lam: float) -> Answer:
    value = path_value([n.rank for n in path], [n.clip_rank for n in path], lam)
    sentences = [Sentence(text=n.text, r_t=n.r_t, r_i=n.r_i, r=(1 - lam) * n.rank + lam * n.clip_rank,
                          end=not n.text) for n in path]
    tokens = [t for n in path for t in n.tokens]
    return Answer(sentences=sentences, tokens=tokens, reward=-value, ended=path[-1].eos,
                  extra={"path_value": value, "node": path[-1].id}, logp=sum(n.logp for n in path))
