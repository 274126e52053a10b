"""CLIP calibration: labelled present/absent sentences, their R_I, the threshold tau, and how well CLIP separates them.

`reward.normalize=center` needs tau, the R_I below which a sentence counts as naming something that
is not in the image. It is picked from R_I of a labelled file of {image, text, present} sentences
(`reward.tau_calibration`) by `pick_tau`: true_sd (mean - k sd of the present ones) or youden (the cut
maximising TPR - FPR). `auc` and `clip_summary` measure the scorer on the same file (`csr score clip`).

    records = read_calibration("worlds/toy-seed0/tau_calibration.jsonl")
    tau, stats = estimate_tau(ClipScorer("worlds/toy-seed0/clip"), records, rule="youden")
"""

from __future__ import annotations

import bisect
import logging
import statistics
from pathlib import Path

from .data import load_image, read_jsonl
from .errors import InputError
from .reward import image_relevance
from .schema import TAU_RULES

log = logging.getLogger(__name__)


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


def calibration_scores(scorer, records: list[dict], max_pixels: int = 50_000_000
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


def pick_tau(true_scores: list[float], false_scores: list[float], rule: str = "true_sd", sd: float = 3.0) -> float:
    """The CLIP threshold from labelled R_I values.

    true_sd: mean(true) - sd * stdev(true) (sample stdev); needs no absent sentences.
    youden: the cut that maximises TPR - FPR (a sentence passes when R_I >= tau), placed halfway
    between the lowest passing score and the highest score below it; needs absent sentences. It
    adapts to how far the absent scores reach up, which a rule on the true scores alone cannot.
    """
    if rule not in TAU_RULES:
        raise ValueError(f"tau rule {rule!r} is not one of {', '.join(TAU_RULES)}")
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


def estimate_tau(scorer, records: list[dict], sd: float = 3.0, max_pixels: int = 50_000_000,
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
        "auc": auc(true_scores, false_scores),
    }
    return tau, stats


def auc(pos: list[float], neg: list[float]) -> float | None:
    """P(a present sentence scores above an absent one), ties counting one half (Mann-Whitney); None if a side is
    empty. Exact: counted with a binary search per present score, not sampled."""
    if not pos or not neg:
        return None
    ordered = sorted(neg)
    wins = 0.0
    for p in pos:
        below, upto = bisect.bisect_left(ordered, p), bisect.bisect_right(ordered, p)
        wins += below + 0.5 * (upto - below)
    return wins / (len(pos) * len(neg))


def clip_summary(present: list[float], absent: list[float], tau: float | None, sd: float,
                 rule: str = "true_sd") -> dict:
    """The numbers of `csr score clip` from R_I values of present and absent sentences.

    Returns: {"present"/"absent": {n, mean, sd}, "auc", "tau_rule", "suggested_tau" (pick_tau), and
    fpr/tpr at tau (when given) and at the suggested tau}.
    """
    def stats(v):
        return {"n": len(v), "mean": statistics.fmean(v) if v else 0.0,
                "sd": statistics.stdev(v) if len(v) > 1 else 0.0}

    out = {"present": stats(present), "absent": stats(absent), "auc": auc(present, absent)}
    out["tau_rule"] = rule
    out["suggested_tau"] = pick_tau(present, absent, rule, sd)
    for name, t in (("tau", tau), ("suggested_tau", out["suggested_tau"])):
        if t is not None:
            out[f"fpr_at_{name}"] = sum(a >= t for a in absent) / len(absent) if absent else 0.0
            out[f"tpr_at_{name}"] = sum(p >= t for p in present) / len(present) if present else 0.0
    out["tau"] = tau
    return out
