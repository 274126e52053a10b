"""Reward health lines: said when the reward cannot separate, silent when it can."""
from csr_vlm import health


def test_scorer_line_below_the_auc_floor_only():
    """The quick world of old had a CLIP at AUC 0.569: below 0.7, a line naming the file. 0.7 itself and the
    full world's 0.995 are healthy; no AUC (one side empty) says nothing."""
    line = health.scorer_line(0.569, "calib.jsonl")
    assert line.startswith("reward health:") and "0.569" in line and "calib.jsonl" in line
    assert health.scorer_line(0.7, "c") is None and health.scorer_line(0.995, "c") is None
    assert health.scorer_line(None, "c") is None


def test_pairs_line_when_chosen_is_not_cleaner():
    """Chosen CHAIR_i 0.958 against rejected 0.867 (the old quick world's round 1) and a tie at 0.5 are unhealthy;
    0.1 against 0.3 is healthy, and so are pairs in which neither side names an absent object (0 and 0)."""
    line = health.pairs_line("csr round 1", 0.958, 0.867)
    assert "csr round 1" in line and "0.958 >= rejected 0.867" in line
    assert health.pairs_line("r", 0.5, 0.5) is not None and health.pairs_line("r", 1.0, 0.0) is not None
    assert health.pairs_line("r", 0.1, 0.3) is None and health.pairs_line("r", 0.0, 0.0) is None
    assert health.pairs_line("r", None, 0.3) is None
