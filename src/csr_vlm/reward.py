"""The calibrated sentence reward: CLIP image relevance R_I, self-score R_T, their mix, and tau calibration.

Paper (CSR, eq. 3-5): R_I(s) = max(100 * cos(CLIP_img, CLIP_txt(s)), 0), R_T(s) = log of the product of
the sentence's token probabilities, R(s) = lam * R_I + (1 - lam) * R_T. The two terms live on very
different scales, so `reward.normalize` offers ways to put them on one (per search step, within the
candidate set): none (the paper), center ((R_I - tau) / scale, the toy-world recipe), zscore, rank.
The official code instead ranks siblings after the search (`sibling_ranks`, `path_value`).

    scorer = ClipScorer("openai/clip-vit-large-patch14-336")
    emb = scorer.image_embedding(pil_image)
    scorer.score(emb, ["A dog on the grass.", "A red car."])   # [23.1, 17.4]
"""

from __future__ import annotations

import bisect
import logging
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import RewardConfig
from .data import InputError, load_image, read_jsonl

log = logging.getLogger(__name__)

NORMALIZE_MODES = ("none", "center", "zscore", "rank")


class ClipScorer:
    """Image-text relevance as 100 * cosine of CLIP (or SigLIP) embeddings, batched, one image embedding per image."""

    def __init__(self, path: str, device: str = "auto", dtype: str = "auto", batch_size: int = 64):
        from .models import load_clip

        self.model, self.processor = load_clip(path, device=device, dtype=dtype)
        self.path = str(path)
        self.batch_size = max(1, int(batch_size))
        self.tokenizer = getattr(self.processor, "tokenizer", None)
        self.max_length = self._max_length()
        self._check_tokenizer()

    @property
    def device(self):
        return self.model.device

    def _max_length(self) -> int:
        limits = [getattr(getattr(self.model.config, "text_config", None), "max_position_embeddings", None)]
        limits.append(getattr(self.tokenizer, "model_max_length", None))
        limits = [n for n in limits if isinstance(n, int) and 0 < n < 100_000]
        return min(limits) if limits else 77

    def _check_tokenizer(self) -> None:
        """A CLIP whose tokenizer cannot encode text must fail now, not mid-run."""
        vocab = getattr(getattr(self.model.config, "text_config", None), "vocab_size", None)
        try:
            ids = self.tokenizer(["a photo of a dog."], truncation=True, max_length=self.max_length)["input_ids"][0]
        except Exception as exc:  # noqa: BLE001 - any tokenizer failure is the same user problem
            raise InputError(f"reward.clip_path: {self.path} has no tokenizer that encodes text "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        if not ids or (vocab and max(ids) >= vocab):
            raise InputError(f"reward.clip_path: {self.path}: tokenizer ids do not fit the text model's vocabulary")

    def image_embedding(self, image) -> Any:
        """Unit-norm image embedding (D,) for one PIL image."""
        import torch

        pixels = self.processor(images=[image], return_tensors="pt")["pixel_values"].to(self.device, self.model.dtype)
        with torch.inference_mode():
            emb = _features(self.model.get_image_features(pixel_values=pixels))[0].float()
        return emb / emb.norm()

    def score(self, image_embedding, texts: Sequence[str]) -> list[float]:
        """Raw 100 * cos(image, text) per text (no clamp); texts truncated to CLIP's max length."""
        import torch

        out: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            chunk = [t if t.strip() else " " for t in texts[start:start + self.batch_size]]
            enc = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            with torch.inference_mode():
                emb = _features(self.model.get_text_features(**enc)).float()  # (n, D)
            emb = emb / emb.norm(dim=-1, keepdim=True)
            out.extend((100.0 * emb @ image_embedding.to(emb.device)).tolist())
        return out


def _features(output):
    """transformers 5 returns a ModelOutput from get_*_features; older versions a tensor."""
    return output.pooler_output if hasattr(output, "pooler_output") else output


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
    raise InputError(f"reward.normalize: unknown mode {cfg.normalize!r}; choose from {', '.join(NORMALIZE_MODES)}")


def penalize_repeats(rewards: Sequence[float], repeats: Sequence[bool], penalty: float) -> list[float]:
    """R - penalty for the sentences that repeat the answer, R otherwise."""
    return [r - penalty if rep else r for r, rep in zip(rewards, repeats)]


def zscores(values: Sequence[float]) -> list[float]:
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


# ---------------------------------------------------------------------------- tau calibration


def read_calibration(path: str | Path, image_root: str = "") -> list[dict]:
    """Labelled sentences [{"image", "text", "present"}] for tau and for `csr score clip`.

    A relative image resolves against image_root when given, else as written if it exists, else
    beside the calibration file (so a world directory can be moved with its calibration file).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"reward.tau_calibration: file not found: {path}")
    records = list(read_jsonl(path, strict=True))
    for lineno, rec in enumerate(records, 1):
        if not {"image", "text", "present"} <= rec.keys():
            raise InputError(f"{path}: record {lineno} needs image, text and present")
        image = Path(str(rec["image"]))
        if not image.is_absolute():
            image = Path(image_root) / image if image_root else image if image.exists() else path.parent / image
        rec["image"] = str(image)
    return records


def calibration_scores(scorer: ClipScorer, records: list[dict], max_pixels: int = 50_000_000
                       ) -> tuple[list[float], list[float]]:
    """R_I of the present and of the absent sentences; each image is embedded once, unreadable ones are skipped."""
    from tqdm import tqdm

    by_image: dict[str, list[dict]] = {}
    for rec in records:
        by_image.setdefault(str(rec["image"]), []).append(rec)
    present, absent = [], []
    for image, recs in tqdm(by_image.items(), desc="CLIP calibration", unit="image", leave=False):
        try:
            emb = scorer.image_embedding(load_image(image, max_pixels))
        except InputError as exc:
            log.warning("calibration: skipping %d sentence(s): %s", len(recs), exc)
            continue
        for rec, raw in zip(recs, scorer.score(emb, [str(r["text"]) for r in recs])):
            (present if rec["present"] else absent).append(image_relevance(raw))
    return present, absent


TAU_RULES = ("true_sd", "youden")


def pick_tau(true_scores: list[float], false_scores: list[float], rule: str = "true_sd", sd: float = 3.0) -> float:
    """The CLIP threshold from labelled R_I values.

    true_sd: mean(true) - sd * stdev(true) (sample stdev); needs no absent sentences.
    youden: the cut that maximises TPR - FPR (a sentence passes when R_I >= tau), placed halfway
    between the lowest passing score and the highest score below it; needs absent sentences. It
    adapts to how far the absent scores reach up, which a rule on the true scores alone cannot.
    """
    if rule not in TAU_RULES:
        raise InputError(f"reward.tau_rule: unknown rule {rule!r} (choose from {', '.join(TAU_RULES)})")
    if len(true_scores) < 2:
        raise InputError("reward.tau_calibration: needs at least 2 sentences with present=true")
    if rule == "true_sd":
        return statistics.fmean(true_scores) - sd * statistics.stdev(true_scores)
    if not false_scores:
        raise InputError("reward.tau_rule=youden: the calibration file needs sentences with present=false")
    cuts = sorted(set(true_scores) | set(false_scores))
    true_sorted, false_sorted = sorted(true_scores), sorted(false_scores)

    def youden(cut: float) -> int:
        """(TPR - FPR) * n_true * n_false, in integers so that ties are exact."""
        true_pass = len(true_sorted) - bisect.bisect_left(true_sorted, cut)
        false_pass = len(false_sorted) - bisect.bisect_left(false_sorted, cut)
        return true_pass * len(false_sorted) - false_pass * len(true_sorted)

    best = max(range(len(cuts)), key=lambda i: (youden(cuts[i]), -i))
    return (cuts[best] + cuts[best - 1]) / 2 if best > 0 else cuts[0]


def estimate_tau(scorer: ClipScorer, records: list[dict], sd: float = 3.0, max_pixels: int = 50_000_000,
                 rule: str = "true_sd"):
    """tau by `pick_tau(rule)` from CLIP's R_I of the calibration sentences.

    records: read_calibration's. Returns (tau, stats) with the miss rate of true sentences and the
    pass rate of absent ones at that tau.
    """
    true_scores, false_scores = calibration_scores(scorer, records, max_pixels)
    tau = pick_tau(true_scores, false_scores, rule, sd)
    stats = {
        "tau": tau, "rule": rule, "sd": sd, "n_true": len(true_scores), "n_false": len(false_scores),
        "mean_true": statistics.fmean(true_scores), "std_true": statistics.stdev(true_scores),
        "mean_false": sum(false_scores) / len(false_scores) if false_scores else None,
        "miss_rate_true": sum(v < tau for v in true_scores) / len(true_scores),
        "pass_rate_false": sum(v >= tau for v in false_scores) / len(false_scores) if false_scores else None,
    }
    return tau, stats
