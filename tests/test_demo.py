"""`csr demo --quick` end to end: world (cached), two loop arms, report, summary.json and the table."""

from __future__ import annotations

import json

import pytest

from csr_vlm import demo
from csr_vlm import toyworld as tw


@pytest.fixture(scope="session")
def quick_world(tmp_path_factory):
    return tw.build(tmp_path_factory.getbasetemp() / "toy-quick-world", seed=0, quick=True)


def test_world_overrides_point_every_path_into_the_world(tmp_path):
    cfg = demo.arm_config(demo.CONFIG_DIR / "toy.yaml", tmp_path / "w", tmp_path / "out", 3, "lam0")
    w = str((tmp_path / "w").resolve())
    paths = [cfg.model.path, cfg.reward.clip_path, cfg.reward.tau_calibration, cfg.data.prompts, cfg.data.image_root,
             cfg.eval.annotations, cfg.eval.gt_captions, cfg.eval.image_root, cfg.eval.synonyms,
             cfg.loop.dev["annotations"], cfg.loop.dev["gt_captions"]]
    assert all(p.startswith(w) for p in paths)
    assert cfg.reward.lam == 0.0 and cfg.seed == 3 and cfg.out == str(tmp_path / "out" / "lam0")
    assert demo.arm_config(demo.CONFIG_DIR / "toy.yaml", tmp_path / "w", tmp_path, 0, "csr").reward.lam == 0.9


def test_demo_quick_end_to_end(quick_world, tmp_path, capsys):
    out = tmp_path / "demo"
    assert demo.cli(["--quick", "--out", str(out), "--world", str(quick_world), "--jobs", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["arms"]) == {"csr", "lam0"} and summary["seed"] == 0 and summary["seconds"] > 0
    for arm, rows in summary["arms"].items():
        assert [r["round"] for r in rows] == [0, 1, 2, 3]
        assert set(demo.COLUMNS) <= set(rows[0]) and rows[0]["pair_chosen_chair_i"] is None
        assert 0 <= summary["selected_round"][arm] <= 3
        assert all(0.0 <= r["chair_i"] <= 1.0 and 0.0 <= r["wellformed"] <= 1.0 for r in rows)
    printed = capsys.readouterr().out
    assert "CHAIR_i" in printed and "(selected on dev)" in printed and "summary.json" in printed
