"""The calibrated sentence reward: CLIP image relevance R_I, self-score R_T and their mix, as plain numbers.

Paper (CSR, eq. 3-5): R_I(s) = max(100 * cos(CLIP_img, CLIP_txt(s)), 0), R_T(s) = log of the product of
the sentence's token probabilities, R(s) = lam * R_I + (1 - lam) * R_T. The two terms live on very
different scales, so `reward.normalize` offers ways to put them on one (per search step, within the
candidate set): none (the paper), center ((R_I - tau) / scale, the toy-world recipe), zscore, rank.
The official code instead ranks siblings after the search (`sibling_ranks`, `path_value`). R_I comes
from the scorer `reward.scorer` picks (scorer.py; CLIP by default, models/clip.py); tau from calibration.py.

    step_rewards([31.0, 18.0], [-0.4, -1.2], RewardConfig(normalize="center", tau=24.0))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from .schema import RewardConfig

# ---------------------------------------------------------------------------- paper reward terms


def image_relevance(raw_clip: float) -> float:
    """R_I = max(100 * cos, 0): the paper's clamp."""
    return max(float(raw_clip), 0.0)


def self_score(logprobs: Sequence[float], how: str = "mean") -> float:
    """R_T of one sentence from its raw token log-probs: sum (paper) or mean (official code's sequences_scores)."""
    if not logprobs:
        return 0.0
    total = float(sum(logprobs))
    return total if how == "sum" else total / len(logprobs)


def neutral_image_value(r_i: Sequence[float], cfg: RewardConfig) -> float:
    """The R_I that earns nothing: tau under normalize=center, else the mean R_I of the step's real sentences."""
    if cfg.normalize == "center":
        return float(cfg.tau or 0.0)
    return sum(r_i) / len(r_i) if r_i else 0.0


def step_rewards(r_i: Sequence[float], r_t: Sequence[float], cfg: RewardConfig) -> list[float]:
    """R for each candidate of one search step (the candidate set of one prompt at one depth).

    none:   lam * R_I + (1 - lam) * R_T
    center: lam * (R_I - tau) / scale + (1 - lam) * R_T
    zscore: lam * z(R_I) + (1 - lam) * z(R_T)          z over the candidate set (population sd; sd 0 -> 0)
    rank:   lam * q(R_I) + (1 - lam) * q(R_T)          q = (ascending rank - 1) / (n - 1), ties averaged, n 1 -> 0.5
    """
    lam = cfg.lam
    if cfg.normalize == "none":
        return [lam * i + (1 - lam) * t for i, t in zip(r_i, r_t)]
    if cfg.normalize == "center":
        tau = float(cfg.tau or 0.0)
        return [lam * (i - tau) / cfg.scale + (1 - lam) * t for i, t in zip(r_i, r_t)]
    if cfg.normalize == "zscore":
        return [lam * i + (1 - lam) * t for i, t in zip(zscores(r_i), zscores(r_t))]
    if cfg.normalize == "rank":
        return [lam * i + (1 - lam) * t for i, t in zip(fractional_ranks(r_i), fractional_ranks(r_t))]
    raise ValueError(f"reward.normalize: unknown mode {cfg.normalize!r}")


@lru_cache(maxsize=8)
def object_names(path: str) -> dict[str, str]:
    """reward.object_names read once: {object: how the yes/no statement names it} ({} for no file)."""
    if not path:
        return {}
    from .data import read_json
    from .errors import InputError

    names = read_json(Path(path), "reward.object_names")
    if not isinstance(names, dict) or not all(isinstance(v, str) for v in names.values()):
        raise InputError(f"reward.object_names: {path} must be a JSON object of names")
    return names


def yes_no_relevance(verdict: str, statement_r_i: float, tau: float) -> float:
    """R_I of a yes/no answer about an object, from R_I of the statement that the object is there: "yes" earns the
    statement's R_I, "no" its mirror image around tau (under normalize=center, +d for one is -d for the other)."""
    return statement_r_i if verdict == "yes" else 2.0 * tau - statement_r_i


def penalize_repeats(rewards: Sequence[float], repeats: Sequence[bool], penalty: float) -> list[float]:
    """R - penalty for the sentences that repeat the answer, R otherwise."""
    return [r - penalty if rep else r for r, rep in zip(rewards, repeats)]


def zscores(values: Sequence[float]) -> list[float]:
    """(v - mean) / population sd over the values; all 0 when the sd is 0."""
    n = len(values)
    if n == 0:
        return []
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
    return [0.0 if sd < 1e-12 else (v - mean) / sd for v in values]


def fractional_ranks(values: Sequence[float]) -> list[float]:
    """Ascending rank mapped to [0, 1] (best = 1), ties share their average rank; a single value gets 0.5."""
    n = len(values)
    if n == 1:
        return [0.5]
    order = sorted(range(n), key=lambda k: values[k])
    ranks = [0.0] * n
    pos = 0
    while pos < n:
        end = pos
        while end + 1 < n and values[order[end + 1]] == values[order[pos]]:
            end += 1
        for k in order[pos:end + 1]:
            ranks[k] = (pos + end) / 2 / (n - 1)
        pos = end + 1
    return ranks


def top_bottom(scores: Sequence[float], keep_top: int, keep_bottom: int) -> list[int]:
    """Indices of the keep_top highest and keep_bottom lowest scores (best first; ties keep input order)."""
    order = sorted(range(len(scores)), key=lambda k: -scores[k])
    if keep_top + keep_bottom >= len(order):
        return order
    return order[:keep_top] + (order[len(order) - keep_bottom:] if keep_bottom else [])


# ---------------------------------------------------------------------------- official-code ranking


def sibling_ranks(values: Sequence[float]) -> list[float]:
    """Official `calculate_ranks`: sort siblings descending, rank = (index + 1) / n (best 1/n, worst 1)."""
    n = len(values)
    order = sorted(range(n), key=lambda k: values[k], reverse=True)  # stable: ties keep sibling order
    ranks = [0.0] * n
    for index, k in enumerate(order):
        ranks[k] = (index + 1) / n
    return ranks


def path_value(lm_ranks: Sequence[float], clip_ranks: Sequence[float], lam: float) -> float:
    """Official `construct.py`: sum of (1 - lam) * rank + lam * clip_rank over the path, / (sentences + 1)."""
    total = sum((1 - lam) * r + lam * c for r, c in zip(lm_ranks, clip_ranks))
    return total / (len(lm_ranks) + 1)
