"""`csr report` on a synthetic 2-round run directory written by the test, and `csr score pairs` on it."""

from __future__ import annotations

import json

import pytest

from csr_vlm.cli import main
from csr_vlm.data import read_jsonl, write_json, write_jsonl
from csr_vlm.report import collect, round_table


def _msg(role, text):
    return [{"role": role, "content": [{"type": "text", "text": text}]}]


def _pair(image, chosen, rejected, c_ri, r_ri, margin):
    return {"id": image, "images": [f"/data/{image}"], "prompt": _msg("user", "Describe."),
            "chosen": _msg("assistant", chosen), "rejected": _msg("assistant", rejected), "chosen_reward": margin,
            "rejected_reward": 0.0, "margin": margin, "chosen_r_i": c_ri, "rejected_r_i": r_ri, "round": 1}


def _eval(chair_s, chair_i, recall, f1):
    flat = {"chair_s": chair_s, "chair_i": chair_i, "recall": recall, "dup_rate": 0.0, "pope_f1": f1,
            "pope_acc": f1, "pope_yes_ratio": 0.5}
    return {"chair": {}, "pope": {}, "flat": flat,
            "protocol": {"prompt": "Describe.", "max_new_tokens": 64, "num_images": 2, "seed": 0, "parser": "default"}}


@pytest.fixture()
def run_dir(tmp_path):
    """round_0: eval only. round_1: pairs (R_I chosen 30, 32; rejected 25, 27; margins 0.5, 1.5), 3 train steps,
    eval. round_2: pairs (R_I chosen 33, 35; rejected 24, 24; margins 2, 2), eval, but no train output."""
    run = tmp_path / "run"
    write_json(run / "manifest.json", {"best_round": 2, "config": {"model": {"path": "tiny"}},
                                       "stages": {"round_1/train": {"status": "done", "seconds": 12.5,
                                                                    "peak_rss_mb": 900.0}},
                                       "versions": {"torch": "2.x"}})
    write_json(run / "round_0/eval/metrics.json", _eval(0.6, 0.30, 0.50, 0.70))
    write_jsonl(run / "round_1/generate/pairs.jsonl", [
        _pair("1.jpg", "A dog and a man.", "A dog and a cat.", 30.0, 25.0, 0.5),
        _pair("2.jpg", "A cat on a bed.", "A cat.", 32.0, 27.0, 1.5)])
    write_jsonl(run / "round_1/train/train_metrics.jsonl", [
        {"step": s, "loss": 0.69 - 0.1 * s, "rewards/accuracies": 0.5 + 0.1 * s, "rewards/margins": 0.1 * s}
        for s in (1, 2, 3)])
    write_json(run / "round_1/eval/metrics.json", _eval(0.5, 0.25, 0.52, 0.74))
    write_jsonl(run / "round_2/generate/pairs.jsonl", [
        _pair("1.jpg", "A man.", "A cat.", 33.0, 24.0, 2.0), _pair("2.jpg", "A cat.", "A dog.", 35.0, 24.0, 2.0)])
    write_json(run / "round_2/eval/metrics.json", _eval(0.4, 0.20, 0.55, 0.78))
    inst = {"images": [{"id": 1, "file_name": "1.jpg"}, {"id": 2, "file_name": "2.jpg"}],
            "categories": [{"id": 901, "name": "dog"}, {"id": 902, "name": "person"}, {"id": 903, "name": "cat"}],
            "annotations": [{"image_id": 1, "category_id": 901}, {"image_id": 1, "category_id": 902},
                            {"image_id": 2, "category_id": 903}]}
    write_json(tmp_path / "inst.json", inst)
    return run


def test_table_numbers(run_dir):
    """round 1: mean chosen R_I (30 + 32) / 2 = 31, rejected 26, margin 1.0; last train step: loss 0.69 - 0.3 = 0.39,
    accuracy 0.8. round 2: chosen 34, rejected 24, margin 2, no train numbers."""
    cols, rows = round_table(collect(run_dir))
    by = {row[0]: dict(zip(cols, row)) for row in rows}
    assert sorted(by) == [0, 1, 2]
    assert (by[1]["chosen_r_i"], by[1]["rejected_r_i"], by[1]["margin"]) == (31.0, 26.0, 1.0)
    assert by[1]["dpo_loss"] == pytest.approx(0.39) and by[1]["reward_acc"] == pytest.approx(0.8)
    assert (by[2]["chosen_r_i"], by[2]["rejected_r_i"], by[2]["dpo_loss"]) == (34.0, 24.0, None)
    assert by[0]["chair_i"] == 0.30 and by[0]["n_pairs"] is None


def test_report_files(run_dir):
    """Pair quality, round 1 (GT: 1.jpg = dog, person; 2.jpg = cat):
    chosen "A dog and a man." 0/2 hallucinated, "A cat on a bed." 1/2 (bed) -> chosen CHAIR_i = 1/4;
    rejected "A dog and a cat." 1/2, "A cat." 0/1 -> 1/3; chosen cleaner in pair 1 only -> rate 1/2."""
    assert main(["report", str(run_dir), "--instances", str(run_dir.parent / "inst.json")]) == 0
    md = (run_dir / "report.md").read_text()
    for png in ("report_metrics.png", "report_r_i.png", "report_margin.png", "report_train.png"):
        assert (run_dir / png).stat().st_size > 1000 and f"]({png})" in md
    assert "round 2: no train output" in md and "Best round" in md
    assert not list(run_dir.glob(".*.tmp*"))  # figures were renamed into place
    assert "| round_1/train | done | 12.5 | - | 900 |" in md
    assert "| round_1 | 2 | 0.2500 | 0.3333 |" in md and "| 0.5000 |" in md
    assert "| 1 | 0.5000 | 0.2500 | 0.5200 |" in md


def test_report_on_empty_dir(tmp_path, capsys):
    """Not a run directory: a one-line error, exit 2, no report.md. A bare manifest gives a report with notes."""
    assert main(["report", str(tmp_path)]) == 2
    assert "not a CSR run directory" in capsys.readouterr().err and not (tmp_path / "report.md").exists()
    (tmp_path / "manifest.json").write_text("{}")
    assert main(["report", str(tmp_path)]) == 0
    assert "No round_<k>/ directories found." in (tmp_path / "report.md").read_text()


def test_score_pairs_cli(run_dir, tmp_path, capsys):
    """Round 2 vs GT: chosen "A man." 0/1, "A cat." 0/1 -> 0; rejected "A cat." on 1.jpg 1/1, "A dog." on 2.jpg 1/1
    -> 1; chosen cleaner 2/2. A third, yes/no pair names no object: left out (counted), so still 2/2, not 2/3.
    Greedy file: "A dog and a cat." on 1.jpg (1/2) and "A cat." on 2.jpg (0/1):
    round 1 chosen (0, 1/2) beats greedy (1/2, 0) once in 2 pairs -> 0.5."""
    yes_no = _pair("1.jpg", "no .", "yes .", 80.0, 20.0, 1.0)
    yes_no["prompt"] = _msg("user", "Is there a cat in the image? Please answer yes or no.")
    with open(run_dir / "round_2/generate/pairs.jsonl", "a") as f:
        f.write(json.dumps(yes_no) + "\n")
    greedy = tmp_path / "samples.jsonl"
    write_jsonl(greedy, [{"task": "chair", "image_id": i, "image": f"/x/{i}.jpg", "prompt": "p", "answer": a}
                         for i, a in ((1, "A dog and a cat."), (2, "A cat."))])
    out = tmp_path / "pairs.json"
    assert main(["score", "pairs", str(run_dir), "--instances", str(tmp_path / "inst.json"), "--greedy", str(greedy),
                 "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert (m["round_2"]["chosen_chair_i"], m["round_2"]["rejected_chair_i"]) == (0.0, 1.0)
    assert m["round_2"]["chosen_cleaner_rate"] == 1.0
    assert (m["round_2"]["n_pairs"], m["round_2"]["n_yes_no_pairs"]) == (2, 1)
    assert m["round_1"]["chosen_cleaner_than_greedy_rate"] == 0.5
    printed = capsys.readouterr().out  # chosen cleaner in both rounds (0.25 < 0.333, 0 < 1): no health line
    assert "reward health" not in printed
    round_2 = run_dir / "round_2/generate/pairs.jsonl"
    write_jsonl(round_2, [dict(p, chosen=p["rejected"], rejected=p["chosen"]) for p in read_jsonl(round_2)])
    # now chosen 1.0, rejected 0.0
    assert main(["score", "pairs", str(run_dir), "--instances", str(tmp_path / "inst.json")]) == 0
    printed = capsys.readouterr().out
    assert "reward health: round_2's pairs" in printed and "round_1's pairs" not in printed


def test_clip_summary_hand_worked():
    """present R_I 30, 32, 34 (mean 32, sample sd 2); absent 25, 31, 33.
    AUC: pairs present > absent: 30 > 25; 32 > 25, 31; 34 > all 3 -> 6 of 9 -> 2/3.
    suggested tau (sd=1) = 32 - 2 = 30: FPR = absent >= 30 -> 31, 33 -> 2/3; at tau=32: 33 -> 1/3."""
    from csr_vlm.calibration import clip_summary

    s = clip_summary([30.0, 32.0, 34.0], [25.0, 31.0, 33.0], tau=32.0, sd=1.0)
    assert s["auc"] == pytest.approx(2 / 3) and s["suggested_tau"] == pytest.approx(30.0)
    assert s["fpr_at_suggested_tau"] == pytest.approx(2 / 3) and s["fpr_at_tau"] == pytest.approx(1 / 3)
    # youden: TPR - FPR is 1/3 at cuts 30, 32 and 34 (0 elsewhere); the lowest, 30, sits above 25 -> 27.5
    assert clip_summary([30.0, 32.0, 34.0], [25.0, 31.0, 33.0], None, 1.0, "youden")["suggested_tau"] == 27.5
    assert s["tpr_at_tau"] == pytest.approx(2 / 3)


def test_score_clip_cli(tiny_llava, tmp_path):
    """`csr score clip` on the tiny CLIP: its present mean equals ClipScorer's own scores of those sentences."""
    from csr_vlm.data import load_image
    from csr_vlm.models import ClipScorer
    from csr_vlm.reward import image_relevance

    img = str(tiny_llava / "images" / "000.png")
    recs = [{"image": img, "text": "a red circle.", "present": True},
            {"image": img, "text": "a dog.", "present": True},
            {"image": "images/001.png", "text": "a blue square.", "present": False}]
    calib = tmp_path / "calib.jsonl"
    write_jsonl(calib, recs)
    out = tmp_path / "clip.json"
    argv = ["score", "clip", "--clip", str(tiny_llava / "clip"), "--calibration", str(calib), "--image-root",
            str(tiny_llava), "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    m = json.loads(out.read_text())
    scorer = ClipScorer(str(tiny_llava / "clip"), device="cpu")
    emb = scorer.image_embedding(load_image(img))
    want = [image_relevance(v) for v in scorer.score(emb, ["a red circle.", "a dog."])]
    assert m["present"]["n"] == 2 and m["absent"]["n"] == 1
    assert m["present"]["mean"] == pytest.approx(sum(want) / 2, abs=1e-4)
