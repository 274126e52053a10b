"""The calibrated reward: hand-worked R_I clamp, lam mix, normalisations, selection, official ranks, tau; ClipScorer.

    .venv/bin/python -m pytest tests/integration/test_reward.py
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from PIL import Image

from csr_vlm.calibration import estimate_tau, pick_tau
from csr_vlm.config import RewardConfig
from csr_vlm.errors import InputError
from csr_vlm.models import ClipScorer
from csr_vlm.reward import (
    fractional_ranks,
    image_relevance,
    neutral_image_value,
    path_value,
    penalize_repeats,
    self_score,
    sibling_ranks,
    step_rewards,
    top_bottom,
    zscores,
)


def test_image_relevance_clamps_negative_cosines():
    """R_I = max(100 cos, 0): -3.2 -> 0, 27.5 -> 27.5."""
    assert image_relevance(-3.2) == 0.0
    assert image_relevance(27.5) == 27.5


def test_self_score_sum_and_mean():
    """log-probs [-0.5, -1.0, -1.5]: sum -3.0, mean -3.0 / 3 = -1.0."""
    assert self_score([-0.5, -1.0, -1.5], "sum") == pytest.approx(-3.0)
    assert self_score([-0.5, -1.0, -1.5], "mean") == pytest.approx(-1.0)


def test_lam_mix_without_normalisation():
    """lam 0.9: 0.9 * 30 + 0.1 * (-1) = 26.9 ; 0.9 * 20 + 0.1 * (-3) = 17.7."""
    cfg = RewardConfig(lam=0.9, normalize="none")
    assert step_rewards([30.0, 20.0], [-1.0, -3.0], cfg) == pytest.approx([26.9, 17.7])


def test_center_normalisation():
    """tau 25, scale 10, lam 0.9: 0.9 * (30 - 25) / 10 + 0.1 * (-1) = 0.45 - 0.1 = 0.35 ;
    0.9 * (20 - 25) / 10 + 0.1 * (-3) = -0.45 - 0.3 = -0.75."""
    cfg = RewardConfig(lam=0.9, normalize="center", tau=25.0, scale=10.0)
    assert step_rewards([30.0, 20.0], [-1.0, -3.0], cfg) == pytest.approx([0.35, -0.75])


def test_zscore_normalisation():
    """R_I [10, 20, 30]: mean 20, sd sqrt(200 / 3) = 8.1650 -> z [-1.2247, 0, 1.2247].
    R_T [-1, -1, -4]: mean -2, sd sqrt((1 + 1 + 4) / 3) = 1.4142 -> z [0.7071, 0.7071, -1.4142].
    lam 0.5: [(-1.2247 + 0.7071) / 2, (0 + 0.7071) / 2, (1.2247 - 1.4142) / 2] = [-0.2588, 0.3536, -0.0947]."""
    cfg = RewardConfig(lam=0.5, normalize="zscore")
    assert step_rewards([10.0, 20.0, 30.0], [-1.0, -1.0, -4.0], cfg) == pytest.approx([-0.2588, 0.3536, -0.0947],
                                                                                     abs=1e-4)
    assert zscores([5.0, 5.0]) == [0.0, 0.0]


def test_rank_normalisation():
    """R_I [5, 9, 9, 1]: ascending ranks 1 (0-based), 2.5, 2.5, 0 (ties averaged) / (n - 1 = 3) -> [1/3, 5/6, 5/6, 0].
    R_T [-1, -2, -3, -4] -> [1, 2/3, 1/3, 0]. lam 0.75:
    0.75/3 + 0.25 = 0.5 ; 0.75 * 5/6 + 0.25 * 2/3 = 0.7917 ; 0.625 + 0.25/3 = 0.7083 ; 0."""
    cfg = RewardConfig(lam=0.75, normalize="rank")
    assert fractional_ranks([5.0, 9.0, 9.0, 1.0]) == pytest.approx([1 / 3, 5 / 6, 5 / 6, 0.0])
    assert step_rewards([5.0, 9.0, 9.0, 1.0], [-1.0, -2.0, -3.0, -4.0], cfg) == pytest.approx(
        [0.5, 0.791667, 0.708333, 0.0], abs=1e-6)
    assert fractional_ranks([3.0]) == [0.5]


def test_neutral_value_is_tau_when_centred_else_step_mean():
    """center: tau = 28 ; none: mean(20, 30, 40) = 30."""
    assert neutral_image_value([20.0, 30.0, 40.0], RewardConfig(normalize="center", tau=28.0)) == 28.0
    assert neutral_image_value([20.0, 30.0, 40.0], RewardConfig(normalize="none")) == 30.0


def test_repeat_penalty_makes_repeating_worse_than_ending():
    """Centred step, lam 0.9, tau 60, scale 20: a repeat gets neutral R_I (= tau) -> 0.9 * 0 + 0.1 * (-0.2) = -0.02;
    the end step (R_I = tau, R_T -0.1) -> -0.01; with repeat_penalty 0.5 the repeat drops to -0.52 < -0.01."""
    cfg = RewardConfig(lam=0.9, normalize="center", tau=60.0, scale=20.0)
    rewards = step_rewards([60.0, 60.0], [-0.2, -0.1], cfg)
    assert rewards == pytest.approx([-0.02, -0.01])
    assert penalize_repeats(rewards, [True, False], 0.5) == pytest.approx([-0.52, -0.01])
    assert penalize_repeats(rewards, [True, False], 0.0) == pytest.approx(rewards)


def test_top_and_bottom_selection():
    """scores [3, 9, 1, 7, 5] sorted desc: idx 1 (9), 3 (7), 4 (5), 0 (3), 2 (1).
    top 1 + bottom 2 -> [1, 0, 2]; top 2 + bottom 2 of 3 scores keeps all, best first."""
    assert top_bottom([3.0, 9.0, 1.0, 7.0, 5.0], 1, 2) == [1, 0, 2]
    assert top_bottom([3.0, 9.0, 1.0, 7.0, 5.0], 2, 0) == [1, 3]
    assert top_bottom([1.0, 3.0, 2.0], 2, 2) == [1, 2, 0]


def test_official_sibling_ranks():
    """Scores [-1.2, -0.5, -2.0] sorted desc: idx 1 -> 1/3, idx 0 -> 2/3, idx 2 -> 3/3; an only child gets 1."""
    assert sibling_ranks([-1.2, -0.5, -2.0]) == pytest.approx([2 / 3, 1 / 3, 1.0])
    assert sibling_ranks([4.0]) == [1.0]
    assert sibling_ranks([2.0, 2.0]) == [0.5, 1.0]  # ties keep sibling order, as Python's stable sort


def test_official_path_value_divides_by_sentences_plus_one():
    """lam 0.9, ranks [1/3, 1], clip ranks [2/3, 1/2]:
    (0.1/3 + 0.9 * 2/3) + (0.1 * 1 + 0.9 * 0.5) = 0.63333 + 0.55 = 1.18333 ; / (2 + 1) = 0.39444."""
    assert path_value([1 / 3, 1.0], [2 / 3, 0.5], 0.9) == pytest.approx(0.394444, abs=1e-6)


class _FakeScorer:
    """Scores given per (image, text), so tau arithmetic can be checked by hand."""

    def __init__(self, table):
        self.table = table

    def image_embedding(self, image):
        return image.getpixel((0, 0))

    def score(self, emb, texts):
        return [self.table[(emb, t)] for t in texts]


def test_estimate_tau_is_true_mean_minus_sd(tmp_path):
    """present R_I [30, 28, 26]: mean 28, sample sd 2 -> tau (sd 3) = 28 - 6 = 22.
    absent [25, -4 -> clamped 0]: 25 >= 22 passes -> pass rate 1/2; no true sentence is below 22.
    AUC: every present score (26 the lowest) beats both absent ones (25, 0) -> 6 / 6 = 1."""
    Image.new("RGB", (8, 8), (1, 1, 1)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 8), (2, 2, 2)).save(tmp_path / "b.png")
    a, b = (1, 1, 1), (2, 2, 2)
    scorer = _FakeScorer({(a, "dog"): 30.0, (a, "cat"): 25.0, (a, "grass"): 28.0, (b, "car"): 26.0, (b, "cow"): -4.0})
    records = [{"image": str(tmp_path / "a.png"), "text": "dog", "present": True},
               {"image": str(tmp_path / "a.png"), "text": "cat", "present": False},
               {"image": str(tmp_path / "a.png"), "text": "grass", "present": True},
               {"image": str(tmp_path / "b.png"), "text": "car", "present": True},
               {"image": str(tmp_path / "b.png"), "text": "cow", "present": False}]
    tau, stats = estimate_tau(scorer, records, sd=3.0)
    assert tau == pytest.approx(22.0)
    assert stats["miss_rate_true"] == 0.0 and stats["pass_rate_false"] == 0.5 and stats["mean_false"] == 12.5
    assert stats["auc"] == 1.0


def test_pick_tau_youden_cuts_where_tpr_minus_fpr_peaks():
    """true [30, 28, 26, 20], false [25, 22, 5].
    cut 26: TPR 3/4, FPR 0 -> J 0.75; cut 20: TPR 1, FPR 2/3 -> 0.33; cut 22: 3/4 - 1/3; cut 28: 1/2.
    Best cut 26; the highest score below it is 25 -> tau = 25.5. true_sd (sd 1): mean 26,
    sample sd sqrt((16 + 4 + 0 + 36) / 3) = 4.32 -> 21.68."""
    true, false = [30.0, 28.0, 26.0, 20.0], [25.0, 22.0, 5.0]
    assert pick_tau(true, false, "youden") == pytest.approx(25.5)
    assert pick_tau(true, false, "true_sd", sd=1.0) == pytest.approx(26 - (56 / 3) ** 0.5)
    with pytest.raises(InputError, match="present=false"):
        pick_tau(true, [], "youden")
    with pytest.raises(ValueError, match="tau rule 'midpoint'"):
        pick_tau(true, false, "midpoint")


def test_clip_scorer_is_100_cos_batched_and_truncated(tiny_llava):
    import torch

    scorer = ClipScorer(str(tiny_llava / "clip"), batch_size=2)
    image = Image.open(tiny_llava / "images" / "000.png").convert("RGB")
    emb = scorer.image_embedding(image)
    assert float(emb.norm()) == pytest.approx(1.0, abs=1e-5)
    texts = ["a red circle.", "a dog on the grass.", "a man is riding a bicycle.", "a train.", "a cat " * 200]
    scores = scorer.score(emb, texts)  # 3 batches of <= 2; the last text is far past 77 tokens
    model, proc = scorer.model, scorer.processor
    enc = proc(text=texts[:4], images=[image], return_tensors="pt", padding=True)
    with torch.inference_mode():
        logits = model(**enc).logits_per_image[0]  # logit_scale.exp() * cos
    expected = (100 * logits / model.logit_scale.exp()).tolist()
    assert scores[:4] == pytest.approx(expected, abs=1e-3)
    assert len(scores) == 5 and -100 <= scores[4] <= 100


def test_clip_whose_tokenizer_cannot_encode_is_refused(tiny_llava, monkeypatch):
    import csr_vlm.models.clip as models

    model, processor = models.load_clip(str(tiny_llava / "clip"))

    def broken(*args, **kwargs):
        raise ValueError("no vocabulary")

    monkeypatch.setattr(models, "load_clip", lambda *a, **k: (model, SimpleNamespace(tokenizer=broken)))
    with pytest.raises(InputError, match="has no tokenizer that encodes text") as info:
        ClipScorer(str(tiny_llava / "clip"))
    assert "\n" not in str(info.value)


def test_wrong_clip_path_is_one_line_error(tmp_path):
    with pytest.raises(InputError, match="reward.clip_path: no model directory"):
        ClipScorer(str(tmp_path / "nope"))
