"""`csr plan`: the projection's arithmetic by hand, and the command's output on the tiny llava (structure, not times).

    .venv/bin/python -m pytest tests/test_plan.py
"""

from __future__ import annotations

import json

import pytest

from csr_vlm.cli import main
from csr_vlm.plan import Measure, projection


def test_projection_by_hand():
    """Dry run: generate 5 s, 4 of them searching 4 prompts (fixed 1 s, 1 s a prompt, 50 tokens a prompt); train
    3 s, 2 of them on 4 pairs (fixed 1 s, 0.5 s a pair); eval 2 s, 1 of them on 10 jobs (fixed 1 s, 0.1 s a job,
    5 tokens a job). Whole data: 24 prompts, 24 pairs, 100 eval jobs, 2 ranks, 2 rounds.
    generate = 1 + 1 * 24 / 2 = 13 s, 1200 tokens; train = 1 + 0.5 * 24 / 2 = 7 s; eval (rank 0 alone, not
    split) = 1 + 0.1 * 100 = 11 s, 500 tokens. First use: eval 1 s (round 0), train 2 s (round 1). Round 0 = eval
    = 11 + 1 = 12 s; round 1 = 13 + 7 + 11 + 2 = 33 s, round 2 = 31 s, 1700 tokens each; whole run 12 + 33 + 31 =
    76 s, 500 + 2 * 1700 = 3900 tokens; peak = the largest stage's, 900 MiB.

    Per task (dev_eval: chair 4 jobs in 0.8 s, 40 tokens; pope 6 jobs in 0.2 s, 6 tokens; fixed 1 s), whole data
    chair 60 + pope 108: 1 + 0.2 * 60 + (0.2 / 6) * 108 = 1 + 12 + 3.6 = 16.6 s, 10 * 60 + 1 * 108 = 708 tokens."""
    measures = {"generate": Measure("generate", 5.0, 4.0, 4, 200, 500.0),
                "train": Measure("train", 3.0, 2.0, 4, 0, 900.0, first_use_s=2.0),
                "eval": Measure("eval", 2.0, 1.0, 10, 50, 400.0, first_use_s=1.0)}
    plan = projection(measures, {"generate": 24, "train": 24, "eval": 100}, rounds=2, ranks=2)
    dev = Measure("dev_eval", 2.0, 1.0, 10, 46, 400.0, parts={"chair": [0.8, 4, 40], "pope": [0.2, 6, 6]})
    by_task = projection({"dev_eval": dev}, {"dev_eval": {"chair": 60, "pope": 108}}, rounds=1, ranks=8)
    d = by_task["stages"]["dev_eval"]
    assert d["seconds"] == pytest.approx(16.6) and d["tokens"] == pytest.approx(708) and d["items"] == 168
    s = plan["stages"]
    assert s["generate"]["seconds"] == pytest.approx(13) and s["generate"]["tokens"] == pytest.approx(1200)
    assert s["generate"]["items_per_rank"] == 12
    assert s["train"]["seconds"] == pytest.approx(7) and s["train"]["per_item_s"] == pytest.approx(0.5)
    assert s["eval"]["seconds"] == pytest.approx(11) and s["eval"]["items_per_rank"] == 100
    assert [r["round"] for r in plan["rounds"]] == [0, 1, 2]
    assert plan["rounds"][0]["seconds"] == pytest.approx(12) and plan["rounds"][0]["stages"] == ["eval"]
    assert plan["rounds"][1]["seconds"] == pytest.approx(33) and plan["rounds"][1]["tokens"] == pytest.approx(1700)
    assert plan["rounds"][2]["seconds"] == pytest.approx(31)
    assert plan["total"]["seconds"] == pytest.approx(76) and plan["total"]["tokens"] == pytest.approx(3900)
    assert plan["total"]["peak_mb"] == 900


def test_plan_on_the_tiny_llava(tiny_llava, tmp_path, capsys):
    """8 prompts in the tiny prompts.jsonl, a dry run on 2, 2 ranks, 2 rounds, no evaluation: generate's items are 8
    (4 per rank) and its tokens 8 / 2 x the dry run's; train's items are the dry run's pairs per prompt x 8 x 1 epoch;
    each stage is fixed + per_item * items / 2; a round is generate + train, round 1 with their first-use costs."""
    out = tmp_path / "plan.json"
    rc = main(["plan", "--ranks", "2", "--prompts", "2", "--out", str(out), "--work", str(tmp_path / "dry"),
               f"model.path={tiny_llava / 'policy'}",
               f"reward.clip_path={tiny_llava / 'clip'}", f"data.prompts={tiny_llava / 'prompts.jsonl'}",
               f"data.image_root={tiny_llava}", f"out={tmp_path / 'run'}", "model.device=cpu", "loop.rounds=2",
               "loop.evaluate=false", "loop.select_on=", "search.num_candidates=2", "search.max_sentences=2",
               "search.max_new_tokens=6", "train.lora_r=4", "train.lora_alpha=8"])
    assert rc == 0
    plan = json.loads(out.read_text())
    assert "round 1 (generate + train)" in capsys.readouterr().out
    assert list(plan["stages"]) == ["generate", "train"] and plan["ranks"] == 2
    g, t = plan["stages"]["generate"], plan["stages"]["train"]
    assert g["dry"]["items"] == 2 and g["items"] == 8 and g["items_per_rank"] == 4
    assert g["tokens"] == pytest.approx(g["dry"]["tokens"] / 2 * 8)
    pairs_dry = len((tmp_path / "dry" / "generate" / "pairs.jsonl").read_text().splitlines())
    assert t["items"] == pytest.approx(pairs_dry / 2 * 8) and t["dry"]["items"] == min(pairs_dry, 1)
    for s in (g, t):
        assert s["seconds"] == pytest.approx(s["fixed_s"] + s["per_item_s"] * s["items"] / 2)
        assert s["fixed_s"] >= 0 and s["per_item_s"] > 0 and s["peak_mb"] > 0
    assert [r["round"] for r in plan["rounds"]] == [1, 2]
    first = g["first_use_s"] + t["first_use_s"]
    assert plan["rounds"][1]["seconds"] == pytest.approx(g["seconds"] + t["seconds"])
    assert plan["rounds"][0]["seconds"] == pytest.approx(plan["rounds"][1]["seconds"] + first)
    assert plan["total"]["seconds"] == pytest.approx(plan["rounds"][0]["seconds"] + plan["rounds"][1]["seconds"])
    assert not (tmp_path / "run").exists()  # a dry run writes nothing into the run's out
