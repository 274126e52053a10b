"""The transformers engine's start-up check: does the cached decoding of this model equal a full forward?

The cached search feeds every new token with explicit positions into cached keys/values; a family that
computes positions its own way (as Qwen's M-RoPE did before its offset was carried) decodes wrong without
an error. Before a `csr generate` does any work, the first prompt's first greedy tokens are decoded with
the cache and compared with one uncached forward over prompt + those tokens.
"""

from __future__ import annotations

import torch

from ..schema import SearchConfig
from .hf_decode import PER_TOKEN_KEYS, TokenRules, expand, prefill, suppress_bias
from .types import TokenCounter


def cached_decoding_problem(policy, image, prompt: str, suppress_ids: list[int], eos_ids: list[int],
                            tokens: int = 4) -> str | None:
    """None when the cached decoding of the first `tokens` greedy tokens agrees with one full, uncached forward over
    prompt + those tokens (the same tokens, log-probs within tolerance); else what differs first.

    Tolerance: 1e-3 in float32, 0.3 in half precision (where cached and uncached sums round differently); a
    different token counts only when it is not a near-tie within that tolerance.
    """
    counter = TokenCounter()
    state = prefill(policy, image, prompt, counter)
    greedy = SearchConfig(sampler="diverse_beam", num_candidates=1, diversity_penalty=0.0, max_new_tokens=tokens)
    cand = expand(policy, state, greedy, TokenRules([], eos_ids, suppress_ids), None, counter)[0]
    batch = policy.encode([image], [prompt])
    extra = torch.tensor([cand.tokens[:-1]], dtype=batch["input_ids"].dtype, device=batch["input_ids"].device)
    full = dict(batch)
    for key in PER_TOKEN_KEYS:
        if key in full:
            fill = extra if key == "input_ids" else (torch.ones_like(extra) if key == "attention_mask"
                                                     else torch.zeros_like(extra))
            full[key] = torch.cat([full[key], fill.to(full[key].dtype)], dim=1)
    with torch.inference_mode():
        logits = policy.model(**full).logits[0, -len(cand.tokens):].float()
    logp = torch.log_softmax(logits, dim=-1)
    choice = logp + suppress_bias(suppress_ids, logp) if suppress_ids else logp
    tol = 1e-3 if policy.model.dtype == torch.float32 else 0.3
    for i, tok in enumerate(cand.tokens):
        best = int(choice[i].argmax())
        if tok != best and float(choice[i, best] - choice[i, tok]) > tol:
            return f"greedy token {i} is {tok} with the cache and {best} without"
        if abs(float(logp[i, tok]) - cand.logprobs[i]) > tol:
            return (f"the log-prob of token {i} is {cand.logprobs[i]:.4f} with the cache and "
                    f"{float(logp[i, tok]):.4f} without")
    return None
