"""Propose next sentences for every live partial answer of one prompt, from cached keys/values.

The image + prompt go through the policy once (`prefill`, over prompt[:-1]); afterwards each row of
a `BeamState` is one partial answer: its keys/values in a batched `DynamicCache`, an attention mask
(zeros mark the holes left by rows that stopped early), the position and id of its last token, which
is not yet in the cache. `expand` feeds the B last tokens once, repeats the cache K times
(`batch_repeat_interleave`) and decodes all B*K candidate sentences together with its own token loop,
so R_T comes from the raw (untempered) logits and stops are exact: a delimiter token, an EOS, or
`max_new_tokens`. `select` keeps the surviving rows (`batch_select_indices`) and `crop`s trailing
columns no survivor uses. Nothing is ever re-encoded.

Samplers: `sample` (temperature, top_p, special tokens suppressed, seeded torch.Generator) and
`diverse_beam` (our own Hamming-diverse group beam search: K groups of one beam each, as in the
official code's num_beams = num_beam_groups = 5; group g takes the best token after subtracting
diversity_penalty times the number of earlier groups that chose that token at this step).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .config import SearchConfig


@dataclass
class BeamState:
    """Per-answer continuation state; row r is one partial answer."""

    cache: Any
    mask: torch.Tensor  # (rows, cache_len) 1 = real token, 0 = hole
    last: torch.Tensor  # (rows,) last token id, not yet in the cache
    pos: torch.Tensor  # (rows,) position id of `last`

    @property
    def rows(self) -> int:
        return int(self.last.shape[0])


@dataclass
class Candidate:
    """One proposed sentence: its tokens, their raw log-probs, and why it stopped."""

    parent: int
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    stop: str = "max"  # delimiter | eos | max


@dataclass
class TokenCounter:
    """Tokens actually sent through the LM (pads and repeats included) vs the minimum possible."""

    forwarded: int = 0
    prompt: int = 0
    generated: int = 0

    @property
    def minimal(self) -> int:
        return self.prompt + self.generated


def prefill(policy, image, prompt: str, counter: TokenCounter) -> BeamState:
    """Run image + prompt[:-1] through the policy once; the last prompt token is fed by the first expand."""
    batch = policy.encode([image], [prompt])
    ids = batch["input_ids"]  # (1, P)
    seq_len = ids.shape[1]
    inputs = {k: (v[:, :-1] if torch.is_tensor(v) and v.dim() == 2 and v.shape[1] == seq_len else v)
              for k, v in batch.items()}  # every per-token key (ids, mask, token_type_ids) loses its last column
    with torch.inference_mode():
        out = policy.model(**inputs, use_cache=True)
    counter.forwarded += seq_len - 1
    counter.prompt += seq_len
    mask = batch["attention_mask"][:, :-1].long()
    return BeamState(cache=out.cache, mask=mask, last=ids[:, -1].clone(), pos=mask.sum(1))


def _forward(policy, state: BeamState, tokens: torch.Tensor, live: torch.Tensor, pos: torch.Tensor,
             counter: TokenCounter) -> torch.Tensor:
    """Feed one token per row (holes where `live` is False); returns the raw next-token logits (rows, V)."""
    state.mask = torch.cat([state.mask, live.long()[:, None]], dim=1)
    with torch.inference_mode():
        out = policy.model(input_ids=tokens[:, None], attention_mask=state.mask, position_ids=pos[:, None],
                           cache=state.cache, use_cache=True)
    state.cache = out.cache
    counter.forwarded += int(tokens.shape[0])
    return out.logits[:, -1, :].float()


def expand(policy, state: BeamState, cfg: SearchConfig, stop_ids: list[int], eos_ids: list[int],
           suppress_ids: list[int], generator: torch.Generator | None, counter: TokenCounter) -> list[Candidate]:
    """Propose cfg.num_candidates sentences per row; `state` becomes the B*K candidate rows (parent-major)."""
    k = cfg.num_candidates
    device = state.last.device
    logits = _forward(policy, state, state.last, torch.ones_like(state.last, dtype=torch.bool), state.pos, counter)
    state.cache.batch_repeat_interleave(k)
    state.mask = state.mask.repeat_interleave(k, dim=0)
    logits = logits.repeat_interleave(k, dim=0)  # (B*K, V)
    pos = state.pos.repeat_interleave(k) + 1  # position of the next generated token
    rows = logits.shape[0]
    cands = [Candidate(parent=r // k) for r in range(rows)]
    running = torch.ones(rows, dtype=torch.bool, device=device)
    last = torch.zeros(rows, dtype=torch.long, device=device)
    stops, eos = set(stop_ids) | set(eos_ids), set(eos_ids)
    stop_t = torch.tensor(sorted(stops), device=device)
    for step in range(cfg.max_new_tokens):
        logp = torch.log_softmax(logits, dim=-1)  # raw, untempered: R_T
        tokens = _choose(logits, logp, cfg, suppress_ids, generator, k)
        tokens = torch.where(running, tokens, last)
        picked = logp.gather(1, tokens[:, None]).squeeze(1).tolist()  # one device sync per step, not per row
        for r, (tok, lp, live) in enumerate(zip(tokens.tolist(), picked, running.tolist())):
            if not live:
                continue
            cands[r].tokens.append(tok)
            cands[r].logprobs.append(lp)
            if tok in stops:
                cands[r].stop = "eos" if tok in eos else "delimiter"
        counter.generated += int(running.sum())
        last = tokens
        just_stopped = running & torch.isin(tokens, stop_t)
        still = running & ~just_stopped
        if not bool(still.any()) or step == cfg.max_new_tokens - 1:
            running = still
            break
        # Rows that stopped keep their final token out of the cache (it is fed by the next expand).
        logits = _forward(policy, state, tokens, still, pos, counter)
        pos = pos + still.long()
        running = still
    state.last = last
    state.pos = pos
    return cands


def _choose(logits: torch.Tensor, logp: torch.Tensor, cfg: SearchConfig, suppress_ids: list[int],
            generator: torch.Generator | None, k: int) -> torch.Tensor:
    """Next token per row: tempered nucleus sampling, or Hamming-diverse greedy groups."""
    if suppress_ids:
        logits = logits.clone()
        logits[:, suppress_ids] = float("-inf")
        logp = logp.clone()
        logp[:, suppress_ids] = float("-inf")
    if cfg.sampler == "diverse_beam":
        rows, vocab = logp.shape
        groups = logp.view(rows // k, k, vocab)
        counts = torch.zeros(rows // k, vocab, device=logp.device)
        picks = []
        for g in range(k):  # group g is penalised for tokens earlier groups took at this step
            tok = (groups[:, g] - cfg.diversity_penalty * counts).argmax(dim=-1)
            counts.scatter_add_(1, tok[:, None], torch.ones_like(tok[:, None], dtype=counts.dtype))
            picks.append(tok)
        return torch.stack(picks, dim=1).reshape(rows)
    probs = torch.softmax(logits / max(cfg.temperature, 1e-6), dim=-1)
    if cfg.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > cfg.top_p  # keep the smallest prefix reaching top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(1, order, sorted_p)
    gen_device = generator.device if generator is not None else probs.device
    return torch.multinomial(probs.to(gen_device), 1, generator=generator).flatten().to(probs.device)


def select(state: BeamState, rows: list[int]) -> BeamState:
    """Keep only `rows` (in that order) and drop trailing cache columns none of them uses."""
    index = torch.tensor(rows, dtype=torch.long, device=state.last.device)
    state.cache.batch_select_indices(index)
    mask = state.mask.index_select(0, index)
    used = mask.any(dim=0).nonzero()
    width = int(used.max()) + 1 if used.numel() else mask.shape[1]
    extra = mask.shape[1] - width
    if extra > 0:
        state.cache.crop(-extra)
        mask = mask[:, :width]
    return BeamState(cache=state.cache, mask=mask, last=state.last.index_select(0, index),
                     pos=state.pos.index_select(0, index))
