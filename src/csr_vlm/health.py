"""Reward health: one line when the calibrated reward cannot tell clean answers from hallucinated ones.

CSR only cures what its reward can see. Two signals say when it cannot, each checked where it is known:
- the scorer's AUC on a labelled calibration file (present against absent objects): generate, whenever
  `reward.tau_calibration` is read, and `csr score clip`;
- the ground-truth CHAIR_i of a round's chosen answers against its rejected ones: `csr score pairs` and the
  toy demo, which have annotations for the training images.
A line is a warning, never an error: a weak reward still trains, it just cannot be expected to help.
"""
from __future__ import annotations

MIN_AUC = 0.7
"""Below this AUC of present against absent objects, the scorer is too close to chance for tau to mean much."""


def scorer_line(auc: float | None, source: str) -> str | None:
    """'reward health: ...' when the scorer's AUC on SOURCE (a calibration file) is below MIN_AUC, else None."""
    if auc is None or auc >= MIN_AUC:
        return None
    return (f"reward health: the image-text scorer separates present from absent objects with AUC {auc:.3f} on "
            f"{source} (below {MIN_AUC}): its R_I is close to chance, so the pairs will not be cleaner than the "
            f"model; use a scorer aligned with the model's vision tower (docs/calibration.md)")


def pairs_line(name: str, chosen_chair_i: float | None, rejected_chair_i: float | None) -> str | None:
    """'reward health: ...' when NAME's chosen answers hallucinate as much as or more than its rejected ones (pairs
    in which neither side hallucinates are healthy: there was nothing to separate)."""
    if chosen_chair_i is None or rejected_chair_i is None or chosen_chair_i < rejected_chair_i \
            or chosen_chair_i == rejected_chair_i == 0:
        return None
    return (f"reward health: {name}'s pairs prefer answers that hallucinate as much or more (ground-truth CHAIR_i "
            f"chosen {chosen_chair_i:.3f} >= rejected {rejected_chair_i:.3f}): the reward does not separate here, "
            f"and DPO on these pairs cannot lower hallucination")
