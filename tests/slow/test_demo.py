"""`csr demo --quick` end to end: world (cached), the csr arm's loop, report, summary.json and the table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from csr_vlm.toyworld import demo


def test_the_toy_configs_ship_inside_the_package():
    """`csr demo` from an installed wheel finds its configs: they are package data, and configs/ links to them."""
    from importlib import resources

    shipped = resources.files("csr_vlm.toyworld").joinpath("configs")
    assert demo.CONFIG_DIR == Path(str(shipped)) and (demo.CONFIG_DIR / "toy-quick.yaml").is_file()
    repo_configs = Path(__file__).resolve().parents[2] / "configs"
    for name in ("toy.yaml", "toy-quick.yaml"):
        assert (repo_configs / name).resolve() == (demo.CONFIG_DIR / name).resolve()
    import fnmatch

    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["csr_vlm"]
    package = demo.CONFIG_DIR.parents[1]
    for config in demo.CONFIG_DIR.glob("*.yaml"):  # what a wheel holds: the package-data globs decide
        assert any(fnmatch.fnmatch(str(config.relative_to(package)), p) for p in patterns), config.name


def test_world_overrides_point_every_path_into_the_world(tmp_path):
    cfg = demo.arm_config(demo.CONFIG_DIR / "toy.yaml", tmp_path / "w", tmp_path / "out", 3, "lam0")
    w = str((tmp_path / "w").resolve())
    paths = [cfg.model.path, cfg.reward.clip_path, cfg.reward.tau_calibration, cfg.data.prompts, cfg.data.image_root,
             cfg.eval.annotations, cfg.eval.gt_captions, cfg.eval.image_root, cfg.eval.synonyms,
             cfg.loop.dev["annotations"], cfg.loop.dev["gt_captions"]]
    assert all(p.startswith(w) for p in paths)
    assert cfg.reward.lam == 0.0 and cfg.seed == 3 and cfg.out == str(tmp_path / "out" / "lam0")
    assert demo.arm_config(demo.CONFIG_DIR / "toy.yaml", tmp_path / "w", tmp_path, 0, "csr").reward.lam == 0.9
    assert cfg.data.mix_prompts == f"{w}/prompts_yesno_train.jsonl" and cfg.curate.yes_no_anchor
    quick = demo.arm_config(demo.CONFIG_DIR / "toy-quick.yaml", tmp_path / "w", tmp_path, 0, "csr")
    assert quick.data.mix_prompts == f"{w}/prompts_yesno_train.jsonl"
    captions_only = tmp_path / "captions-only.yaml"
    captions_only.write_text((demo.CONFIG_DIR / "toy.yaml").read_text().replace("  mix_prompts:", "  # mix_prompts:")
                             .replace("  yes_no_anchor: true", "  yes_no_anchor: false"))
    assert demo.arm_config(captions_only, tmp_path / "w", tmp_path, 0, "csr").data.mix_prompts == ""


@pytest.mark.slow
def test_demo_quick_end_to_end(quick_demo):
    out, printed = quick_demo
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["arms"]) == {"csr"} and summary["seed"] == 0  # --quick: the csr arm alone
    for arm, rows in summary["arms"].items():
        assert [r["round"] for r in rows] == [0, 1, 2]
        assert set(demo.COLUMNS) <= set(rows[0]) and rows[0]["pair_chosen_chair_i"] is None
        best = json.loads((out / arm / "best.json").read_text())
        assert summary["selected_round"][arm] == best["round"]
        for r in rows:  # the table is the rounds' own test metrics
            flat = json.loads((out / arm / f"round_{r['round']}" / "eval" / "metrics.json").read_text())["flat"]
            assert (r["chair_i"], r["recall"], r["pope_f1"]) == (flat["chair_i"], flat["recall"], flat["pope_f1"])
    for arm in summary["arms"]:
        d = summary["delta_chair_i"][arm]
        assert d["ci95"][0] <= d["ci95"][1] and d["resamples"] == 2000 and d["n_images"] == 200
        p = summary["delta_pope_f1"][arm]
        assert p["ci95"][0] <= p["ci95"][1] and p["resamples"] == 2000
    pairs = [json.loads(line) for line in (out / "csr" / "round_1" / "generate" / "pairs.jsonl").open()]
    anchors = [p for p in pairs if p.get("anchor")]  # curate.yes_no_anchor rows went through TRL's trainer
    assert anchors and all(p["chosen"] == p["rejected"] and p["margin"] == 0.0 for p in anchors)
    assert len(anchors) < len(pairs) and (out / "csr" / "round_1" / "train" / "checkpoint").is_dir()
    for arm in summary["arms"]:  # csr report wrote the arm's page
        assert (out / arm / "report.html").stat().st_size > 10_000 and f"{out / arm / 'report.html'}" in printed
    assert "CHAIR_i" in printed and "(selected on dev)" in printed and "summary.json" in printed
    assert "dCHAIR_i vs base [95% CI]" in printed
    world = json.loads((Path(summary["world"]) / "world.json").read_text())
    assert world["clip"]["auc_all"] >= 0.9 and world["llava"]["dev"]["chair_i"] >= 0.1  # CLIP separates, base errs
    rows = summary["arms"]["csr"]
    assert all(r["pair_chosen_chair_i"] < r["pair_rejected_chair_i"] for r in rows[1:])  # the reward separates
    weak_clip = world["clip"]["auc_all"] < 0.7  # health.MIN_AUC
    assert any("separates present from absent" in line for line in summary["health"]) == weak_clip
    assert all(line in printed for line in summary["health"])


def test_paired_bootstrap_by_hand():
    """Image 1: base 1 of 2 mentions hallucinated, new 0 of 2; image 2: 0 of 2 on both sides.

    Point: base 1/4, new 0 -> -0.25, relative -1. A resample holds image 1 twice (p 1/4, base 2/4:
    diff -0.5), once (p 1/2: -0.25) or never (p 1/4: 0, relative undefined and dropped), so the 95%
    interval is [-0.5, 0] and the relative one [-1, -1]. Image 3 (only in base) is not paired: ignored.
    """
    d = demo.paired_bootstrap({1: (2, 1), 2: (2, 0), 3: (1, 1)}, {1: (2, 0), 2: (2, 0)}, n=2000, seed=0)
    assert d["point"] == -0.25 and d["relative"] == -1.0 and d["n_images"] == 2
    assert d["ci95"] == [-0.5, 0.0] and d["relative_ci95"] == [-1.0, -1.0]


def test_pope_f1_bootstrap_by_hand():
    """One split, two images, a yes and a no question each. Base: image 1 both right (tp), image 2 both wrong
    (fn on its yes, fp on its no): F1 = 2 tp / (2 tp + fp + fn) = 2 / 4 = 0.5. New: all right, F1 1 -> +0.5.
    A resample holds image 1 twice (p 1/4: base F1 1, diff 0), image 2 twice (p 1/4: base tp 0, F1 0, diff 1) or
    one of each (p 1/2: diff 0.5), so the 95% interval is [0, 1]."""
    base = [(1, "random", "yes", "yes"), (1, "random", "no", "no"), (2, "random", "yes", "no"), (2, "random", "no",
                                                                                                 "yes")]
    new = [(1, "random", "yes", "yes"), (1, "random", "no", "no"), (2, "random", "yes", "yes"), (2, "random", "no",
                                                                                                 "no")]
    d = demo.pope_f1_bootstrap(base, new, n=2000, seed=0)
    assert d["point"] == 0.5 and d["ci95"] == [0.0, 1.0] and d["n_images"] == 2
