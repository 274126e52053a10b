"""The transformers engine's decoding: next sentences for every live partial answer, from cached keys/values.

hf_engine.py's `HFEngine` implements engine.py's Protocol with the functions here.

The image + prompt go through the policy once (`prefill`, over prompt[:-1]); afterwards each row of
a `BeamState` is one partial answer: its keys/values in a batched `DynamicCache`, an attention mask
(zeros mark the holes left by rows that stopped early), the position and id of its last token, which
is not yet in the cache. `expand` feeds the B last tokens once, repeats the cache K times
(`batch_repeat_interleave`) and decodes all B*K candidate sentences together with its own token loop,
so R_T comes from the raw (untempered) logits and stops are exact: a sentence end (boundaries.py: by text, with
one token of look-ahead; when it confirms the end, the look-ahead token is dropped and the delimiter stays in the
cache with the logits after it, so the next expand does not feed it again), an EOS, or `max_new_tokens` (with
`search.offer_end` the K-th candidate of each row is EOS itself). `select`
keeps the surviving rows (`batch_select_indices`) and `crop`s trailing columns no survivor uses.
Nothing is ever re-encoded. `prefill` installs kvcache.py's layers: new tokens are written in place
(no `torch.cat` per token) and the image + prompt keys/values are kept once per prompt, not once per
row (`_forward` switches on kvcache.shared_prefix_attention for that).

Several prompts: `concat_states` stacks the prefilled states of several prompts (left-padded holes),
and `expand_groups` decodes all their rows together, one forward per token; each `Group` (one
prompt's block of rows) samples with its own generator and counts its own tokens.

Samplers: `sample` (temperature, top_p, special tokens suppressed, seeded torch.Generator; temperature 0 is
greedy) and
`diverse_beam` (our own Hamming-diverse group beam search: K groups of one beam each, as in the
official code's num_beams = num_beam_groups = 5; group g takes the best token after subtracting
diversity_penalty times the number of earlier groups that chose that token at this step).
"""

from __future__ import annotations

import bisect
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from ..schema import SearchConfig
from .boundaries import CLOSE_END, CLOSE_PENDING, CONFIRM, END, PENDING, SentenceBoundaries
from .kvcache import SharedPrefixLayer, install, shared_prefix_mode
from .ragged import RaggedRows
from .types import Candidate, TokenCounter


@dataclass
class BeamState:
    """Per-answer continuation state; row r is one partial answer."""

    cache: Any
    mask: torch.Tensor  # (rows, cache_len) 1 = real token, 0 = hole
    last: torch.Tensor  # (rows,) last token id, not yet in the cache (unless `fed` says it is)
    pos: torch.Tensor  # (rows,) position id of `last`
    fed: torch.Tensor | None = None  # (rows,) bool: `last` is in the cache already and `next_logits` follow it
    next_logits: torch.Tensor | None = None  # (rows, V) raw logits after `last`, where `fed`

    @property
    def rows(self) -> int:
        return int(self.last.shape[0])


PER_TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")
"""Processor outputs with one entry per token: the prefill drops their last column. Everything else is per image
(Qwen's 2-D pixel_values, image_grid_thw, LLaVA-NeXT's image_sizes, Idefics3's pixel_attention_mask) and goes in
whole, whatever its shape."""


def _rope_holder(model):
    """The module that keeps M-RoPE's rope_deltas (Qwen2-VL, Qwen2.5-VL, Qwen3-VL), or None."""
    inner = getattr(model, "model", None)
    return inner if inner is not None and hasattr(inner, "rope_deltas") else None


def prefill(policy, image, prompt: str, counter: TokenCounter) -> BeamState:
    """Run image + prompt[:-1] through the policy once; the last prompt token is fed by the first expand.

    The position of the next token is the number of tokens so far plus, for M-RoPE models, the prompt's
    rope_deltas: their image tokens take fewer positions than they have tokens (max(h, w) for an h x w grid),
    and the decode steps pass explicit positions, which skips the model's own offset.
    """
    batch = policy.encode([image], [prompt])
    ids = batch["input_ids"]  # (1, P)
    inputs = {k: v[:, :-1] if k in PER_TOKEN_KEYS else v for k, v in batch.items()}
    holder = _rope_holder(policy.model)
    if holder is not None:
        holder.rope_deltas = None  # computed afresh from this prompt's image grid (a text-only prompt keeps the old)
    with torch.inference_mode():
        out = policy.model(**inputs, use_cache=True)
    counter.forwarded += ids.shape[1] - 1
    counter.prompt += ids.shape[1]
    install(out.cache, policy.model)  # append new tokens in place from here on (kvcache.py)
    mask = batch["attention_mask"][:, :-1].long()
    pos = mask.sum(1)
    deltas = getattr(holder, "rope_deltas", None)
    if deltas is not None:
        pos = pos + deltas.reshape(-1).to(pos.device)  # (1,): negative, the image's saved positions
    return BeamState(cache=out.cache, mask=mask, last=ids[:, -1].clone(), pos=pos)


def concat_states(states: list[BeamState]) -> BeamState:
    """Stack the rows of several prompts' states into one (left-padded with holes to a common cache width).

    Each prompt keeps the keys/values its own prefill computed; positions are explicit, so the pad
    columns are plain holes in the mask. Only dynamic caches that still hold every token can be joined.
    """
    if len(states) == 1:
        return states[0]
    width = max(st.mask.shape[1] for st in states)
    cache = states[0].cache
    for i, layer in enumerate(cache.layers):
        parts = [st.cache.layers[i] for st in states]
        if isinstance(layer, SharedPrefixLayer):  # prefill left every row's suffix empty
            layer.set_prefix(torch.cat([_pad_left(part.prefix_k, width, dim=-2) for part in parts]),
                             torch.cat([_pad_left(part.prefix_v, width, dim=-2) for part in parts]))
            continue
        for part in parts:
            whole = (type(part).__name__ in _STACKABLE and part.is_initialized
                     and getattr(part, "cumulative_length", part.keys.shape[-2]) == part.keys.shape[-2])
            if not whole:
                raise ValueError(f"cannot batch prompts with a {type(part).__name__} cache layer (or a prompt "
                                 "longer than its sliding window); use search.prompt_batch_size=1")
        layer.keys = torch.cat([_pad_left(part.keys, width, dim=-2) for part in parts])
        layer.values = torch.cat([_pad_left(part.values, width, dim=-2) for part in parts])
        if hasattr(layer, "cumulative_length"):
            layer.cumulative_length = width
    mask = torch.cat([_pad_left(st.mask, width, dim=1) for st in states])
    return BeamState(cache=cache, mask=mask, last=torch.cat([st.last for st in states]),
                     pos=torch.cat([st.pos for st in states]))


_STACKABLE = ("DynamicLayer", "DynamicSlidingWindowLayer", "GrowingLayer")


def _pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    shape = list(t.shape)
    shape[dim] = width - t.shape[dim]
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _forward(policy, state: BeamState, tokens: torch.Tensor, live: torch.Tensor, pos: torch.Tensor,
             rows: torch.Tensor | None = None) -> torch.Tensor:
    """Feed one token per row (holes where `live` is False); returns the raw next-token logits (rows, V).

    With `rows` (ragged.py) the cache holds only those rows: only they go through the model, and the logits are
    theirs, in that order."""
    state.mask = torch.cat([state.mask, live.long()[:, None]], dim=1)
    mask = state.mask if rows is None else state.mask.index_select(0, rows)
    if rows is not None:
        tokens, pos = tokens.index_select(0, rows), pos.index_select(0, rows)
    with torch.inference_mode(), shared_prefix_mode(policy.model, state.cache):
        out = policy.model(input_ids=tokens[:, None], attention_mask=mask, position_ids=pos[:, None],
                           cache=state.cache, use_cache=True)
    state.cache = out.cache
    return out.logits[:, -1, :].float()


@dataclass
class RowBlock:
    """A block of consecutive rows that belongs to one prompt: its sampler RNG and its token counter."""

    rows: int
    generator: torch.Generator | None
    counter: TokenCounter


@dataclass(frozen=True)
class TokenRules:
    """Which tokens do what: `stops` says where a sentence ends (boundaries.py; a plain id list ends it at those
    tokens), `eos_ids` end the answer, `suppress_ids` are never sampled."""

    stops: SentenceBoundaries | list[int]
    eos_ids: list[int]
    suppress_ids: list[int]


def expand(policy, state: BeamState, cfg: SearchConfig, rules: TokenRules, generator: torch.Generator | None,
           counter: TokenCounter) -> list[Candidate]:
    """Propose cfg.num_candidates sentences per row; `state` becomes the B*K candidate rows (parent-major)."""
    return expand_groups(policy, state, cfg, rules, [RowBlock(state.rows, generator, counter)])


def expand_groups(policy, state: BeamState, cfg: SearchConfig, rules: TokenRules,
                  groups: list[RowBlock]) -> list[Candidate]:
    """`expand` over the rows of several prompts at once (one forward per token for all of them).

    Each block samples its own rows with its own generator, and only while one of its rows still runs, so a
    prompt draws exactly the random numbers it draws when expanded alone.
    """
    stops, eos_ids, suppress_ids = rules.stops, rules.eos_ids, rules.suppress_ids
    bounds = stops if isinstance(stops, SentenceBoundaries) else SentenceBoundaries.fixed(stops, eos_ids)
    if bounds.eos_ids != set(eos_ids):
        bounds = dataclasses.replace(bounds, eos_ids=frozenset(eos_ids))
    k = cfg.num_candidates
    device = state.last.device
    bounds_of_blocks, start = [], 0
    for g in groups:  # row ranges after the K-fold repeat
        bounds_of_blocks.append((start * k, (start + g.rows) * k))
        start += g.rows
    logits = _first_logits(policy, state, groups)
    state.cache.batch_repeat_interleave(k)
    state.mask = state.mask.repeat_interleave(k, dim=0)
    logits = logits.repeat_interleave(k, dim=0)  # (B*K, V)
    pos = state.pos.repeat_interleave(k) + 1  # position of the next generated token
    rows = logits.shape[0]
    cands = [Candidate(parent=r // k) for r in range(rows)]
    running = torch.ones(rows, dtype=torch.bool, device=device)
    live_rows = [True] * rows
    pending: list[str | None] = [None] * rows  # a row whose last token may end its sentence (look-ahead)
    fed = torch.zeros(rows, dtype=torch.bool, device=device)  # confirmed ends: their delimiter is in the cache
    after_fed = None  # (rows, V) the logits after those delimiters
    last = torch.zeros(rows, dtype=torch.long, device=device)
    bias = suppress_bias(suppress_ids, logits)
    ragged = RaggedRows(state.cache, rows)
    for step in range(cfg.max_new_tokens):
        logp = torch.log_softmax(logits, dim=-1)  # raw, untempered: R_T
        blocks = [(a, b, g.generator) for (a, b), g in zip(bounds_of_blocks, groups) if any(live_rows[a:b])]
        tokens = _choose(logits, logp, cfg, bias, k, blocks)
        if step == 0 and cfg.offer_end and eos_ids:
            tokens[k - 1::k] = eos_ids[0]
        tokens = torch.where(running, tokens, last)
        picked = logp.gather(1, tokens[:, None]).squeeze(1).tolist()  # one device sync per step, not per row
        chosen = tokens.tolist()
        stopped, confirmed = _take_tokens(bounds, cands, chosen, picked, live_rows, pending)
        if confirmed:  # their look-ahead token is dropped; the delimiter (fed last step) and the logits after it stay
            index = torch.tensor(confirmed, device=device)
            pos[index] -= 1
            tokens[index] = torch.tensor([cands[r].tokens[-1] for r in confirmed], device=device)
            fed[index] = True
            after_fed = torch.zeros_like(logits) if after_fed is None else after_fed
            after_fed[index] = logits[index]
        last = tokens
        still = running & ~torch.tensor(stopped, device=device)
        live_rows = still.tolist()
        if not any(live_rows) or step == cfg.max_new_tokens - 1:
            running = still
            break
        # Rows that stopped keep their final token out of the cache (it is fed by the next expand); once enough
        # have stopped, they leave the cache until the loop ends (ragged.py).
        ragged.shrink(state.cache, live_rows)
        if ragged.index is None:
            logits = _forward(policy, state, tokens, still, pos)
        else:
            logits = logits.index_copy(0, ragged.index, _forward(policy, state, tokens, still, pos, ragged.index))
        _count_forward(groups, k, ragged.active)
        pos = pos + still.long()
        running = still
    ragged.restore(state.cache)
    for r in range(rows):
        if pending[r] and live_rows[r]:  # cut by max_new_tokens right after a delimiter
            cands[r].stop = "delimiter"
    for (a, b), g in zip(bounds_of_blocks, groups):
        g.counter.generated += sum(len(c.tokens) for c in cands[a:b])
    state.last, state.pos = last, pos
    state.fed, state.next_logits = (fed, after_fed) if after_fed is not None else (None, None)
    return cands


def _first_logits(policy, state: BeamState, groups: list[RowBlock]) -> torch.Tensor:
    """The logits after each row's last token: fed now, or kept from the look-ahead that confirmed its end."""
    if state.fed is None:
        _count_forward(groups, 1)
        return _forward(policy, state, state.last, torch.ones_like(state.last, dtype=torch.bool), state.pos)
    fresh = ~state.fed
    rows = fresh.tolist()
    start = 0
    for g in groups:
        g.counter.forwarded += sum(rows[start: start + g.rows])
        start += g.rows
    if not any(rows):
        return state.next_logits
    logits = _forward(policy, state, state.last, fresh, state.pos)
    return torch.where(state.fed[:, None], state.next_logits, logits)


def _take_tokens(bounds: SentenceBoundaries, cands: list[Candidate], tokens: list[int], logprobs: list[float],
                 live_rows: list[bool], pending: list[str | None]) -> tuple[list[bool], list[int]]:
    """Give each live row its sampled token and decide whether its sentence ends (boundaries.py).

    Returns (per row: the sentence ended this step, the rows whose pending end the token confirmed: their
    token is a look-ahead, not part of any sentence)."""
    stopped, confirmed = [not live for live in live_rows], []
    for r, (tok, lp, live) in enumerate(zip(tokens, logprobs, live_rows)):
        if not live:
            continue
        cand = cands[r]
        if pending[r]:
            action = bounds.look_ahead(pending[r], tok, cand.tokens)
            if action == CONFIRM:
                cand.stop, pending[r], stopped[r] = "delimiter", None, True
                confirmed.append(r)
                continue
            cand.tokens.append(tok)
            cand.logprobs.append(lp)
            if action == CLOSE_PENDING:
                continue
            pending[r] = None
            if action == CLOSE_END:
                cand.stop, stopped[r] = "delimiter", True
                continue
        else:
            cand.tokens.append(tok)
            cand.logprobs.append(lp)
        if tok in bounds.eos_ids:
            cand.stop, stopped[r] = "eos", True
        elif bounds.classify(tok) == END:
            cand.stop, stopped[r] = "delimiter", True
        elif bounds.classify(tok) == PENDING:
            pending[r] = bounds.pending[tok]
    return stopped, confirmed


def _count_forward(groups: list[RowBlock], repeat: int, in_cache: list[int] | None = None) -> None:
    """Count the rows that went through the model: all of them, or the batch rows `in_cache` (sorted)."""
    start = 0
    for g in groups:
        end = start + g.rows * repeat
        g.counter.forwarded += end - start if in_cache is None else \
            bisect.bisect_left(in_cache, end) - bisect.bisect_left(in_cache, start)
        start = end


def suppress_bias(suppress_ids: list[int], logits: torch.Tensor) -> torch.Tensor | None:
    """A (V,) row, -inf at the suppressed ids and 0 elsewhere (None when nothing is suppressed)."""
    if not suppress_ids:
        return None
    bias = logits.new_zeros(logits.shape[-1])
    bias[suppress_ids] = float("-inf")
    return bias


def _choose(logits: torch.Tensor, logp: torch.Tensor, cfg: SearchConfig, suppress_ids: list[int] | torch.Tensor | None,
            k: int, blocks: list[tuple[int, int, torch.Generator | None]] | None = None) -> torch.Tensor:
    """Next token per row: tempered nucleus sampling, or Hamming-diverse greedy groups.

    `suppress_ids` is a list of ids or a precomputed `suppress_bias` row (added, so no clone is needed).
    Sampling draws rows [a, b) of each block with that block's generator (default: all rows, unseeded);
    rows outside every block get token 0, which the caller ignores.
    """
    bias = suppress_bias(suppress_ids, logits) if isinstance(suppress_ids, list) else suppress_ids
    if bias is not None:
        logits, logp = logits + bias, logp + bias
    if cfg.sampler == "sample" and cfg.temperature == 0:  # greedy, as in any engine
        return logits.argmax(dim=-1)
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
    if blocks is None:
        blocks = [(0, probs.shape[0], None)]
    tokens = torch.zeros(probs.shape[0], dtype=torch.long, device=probs.device)
    for a, b, gen in blocks:
        gen_device = gen.device if gen is not None else probs.device
        tokens[a:b] = torch.multinomial(probs[a:b].to(gen_device), 1, generator=gen).flatten().to(probs.device)
    return tokens


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
    fed = state.fed.index_select(0, index) if state.fed is not None else None
    after = state.next_logits.index_select(0, index) if fed is not None and bool(fed.any()) else None
    return BeamState(cache=state.cache, mask=mask, last=state.last.index_select(0, index),
                     pos=state.pos.index_select(0, index), fed=fed if after is not None else None, next_logits=after)
