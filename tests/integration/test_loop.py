"""csr loop: stage wiring, resume after a kill, --from-round, dev selection with patience, on the tiny LLaVA."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from helpers import TINY_TRAIN as TINY
from helpers import write_annotations, write_pairs

from csr_vlm import layout, loop
from csr_vlm.cli import main
from csr_vlm.config import changed_settings, load_config, save_config
from csr_vlm.data import mark_done, write_json
from csr_vlm.errors import ConfigError, InputError

LOOP_TINY = [*TINY, "search.num_candidates=3", "search.keep_top=1", "search.keep_bottom=1", "search.max_sentences=2",
             "search.max_new_tokens=6", "search.filters=[]", "data.max_prompts=3"]


def tree_state(root: Path) -> dict[str, tuple[int, str]]:
    """mtime and sha1 of every file under root."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha1(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()}


def _dev(metric, values):
    return {k: {metric: v} for k, v in values.items()}


def test_pick_best_direction_and_ties():
    # chair_i: lower is better; round 2 ties round 1 (no strict gain), round 3 worse -> best 1, 2 rounds since
    assert loop.pick_best(_dev("chair_i", {0: 10.0, 1: 7.0, 2: 7.0, 3: 8.0}), "chair_i") == (1, 2)
    # pope_f1: higher is better; round 0 (base) stays best when training only hurts
    assert loop.pick_best(_dev("pope_f1", {0: 0.8, 1: 0.7, 2: 0.75}), "pope_f1") == (0, 2)
    assert loop.pick_best(_dev("recall", {0: 0.5, 1: 0.6}), "recall") == (1, 0)


def test_guards_keep_a_degenerate_round_from_being_picked():
    """chair_i 0.18 -> 0.12 -> 0.09, but round 2 repeats itself (dup 0.16 > 0.05): round 1 is picked, and
    round 2 counts as no improvement (since = 1). A recall floor (higher is better) of 0.9 rules out round 1
    too (0.85 < 0.9), leaving the base."""
    dev = {0: {"chair_i": 0.18, "dup_rate": 0.01, "recall": 0.95},
           1: {"chair_i": 0.12, "dup_rate": 0.03, "recall": 0.85},
           2: {"chair_i": 0.09, "dup_rate": 0.16, "recall": 0.95}}
    assert loop.pick_best(dev, "chair_i", {"dup_rate": 0.05}) == (1, 1)
    assert loop.pick_best(dev, "chair_i", {"dup_rate": 0.05, "recall": 0.9}) == (0, 2)
    assert loop.pick_best(dev, "chair_i") == (2, 0)


def test_relative_guard_is_a_multiple_of_the_base():
    """Base recall 0.95; {recall: 0.9} -> at least 0.855. Round 1 (0.85, mute-ish) fails, round 2 (0.90) passes:
    chair 0.0 of round 1 cannot win, round 2 (0.09) is picked. With the absolute guard {recall: 0.92} also
    given, the stricter bound (0.92) holds and round 2 fails too -> the base."""
    dev = {0: {"chair_i": 0.18, "recall": 0.95}, 1: {"chair_i": 0.0, "recall": 0.85},
           2: {"chair_i": 0.09, "recall": 0.90}}
    assert loop.guard_bounds(dev, None, {"recall": 0.9}) == {"recall": pytest.approx(0.855)}
    assert loop.pick_best(dev, "chair_i", loop.guard_bounds(dev, None, {"recall": 0.9})) == (2, 0)
    assert loop.pick_best(dev, "chair_i", loop.guard_bounds(dev, {"recall": 0.92}, {"recall": 0.9})) == (0, 2)


def test_stage_configs_chain_the_rounds(tmp_path):
    cfg = load_config(None, [f"out={tmp_path}", "model.path=base", "loop.dev={num_images: 7, prompt: dev prompt}"])
    gen2, train2 = loop.stage_cfg(cfg, 2, "generate"), loop.stage_cfg(cfg, 2, "train")
    assert gen2.model.path == str(tmp_path / "round_1" / "train" / "checkpoint")
    assert gen2.out == str(tmp_path / "round_2" / "generate")
    assert loop.stage_cfg(cfg, 1, "generate").model.path == "base"
    assert train2.train.pairs == str(tmp_path / "round_2" / "generate" / "pairs.jsonl")
    assert loop.stage_cfg(cfg, 2, "eval").model.path == str(tmp_path / "round_2" / "train" / "checkpoint")
    dev = loop.stage_cfg(cfg, 0, "dev_eval")
    assert (dev.model.path, dev.eval.num_images, dev.eval.prompt, dev.out) == ("base", 7, "dev prompt",
                                                                              str(tmp_path / "round_0" / "dev_eval"))
    assert cfg.eval.num_images == 500 and cfg.model.path == "base"  # the loop's own config is untouched
    with pytest.raises(ConfigError,
                       match="unknown config key 'loop.dev.num_imgs'; did you mean 'loop.dev.num_images'"):
        load_config(None, [f"out={tmp_path}", "model.path=base", "loop.dev={num_imgs: 7}"])


@pytest.fixture
def fake_stages(monkeypatch, tiny_llava):
    """Real training; generate writes fixed pairs, evaluations report chair_i from a per-round table."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    chair_i = {0: 10.0, 1: 6.0, 2: 8.0, 3: 9.0, 4: 5.0}
    calls: list[str] = []

    def generate(cfg, k):
        calls.append(f"{k}/generate:{cfg.model.path}")
        write_pairs(Path(cfg.out) / "pairs.jsonl", tiny_llava / "images", n=2)
        mark_done(cfg.out, {"pairs": 2})
        return Path(cfg.out)

    def evaluate(cfg, k):
        calls.append(f"{k}/{Path(cfg.out).name}:{cfg.model.path}:{cfg.eval.num_images}")
        write_json(Path(cfg.out) / "metrics.json", {"flat": {"chair_i": chair_i[k], "recall": 0.5}})
        mark_done(cfg.out)
        return Path(cfg.out)

    from csr_vlm import train

    runners = {"generate": generate, "train": train.run, "eval": evaluate, "dev_eval": evaluate}
    monkeypatch.setattr(loop, "stage_runner", runners.__getitem__)
    yield calls
    torch.set_num_threads(before)


def test_loop_selects_on_dev_with_patience_and_resumes(tiny_llava, tmp_path, fake_stages, capsys):
    out = tmp_path / "loop"
    args = [f"out={out}", f"model.path={tiny_llava / 'policy'}", *TINY, "loop.rounds=4", "loop.select_on=chair_i",
            "loop.patience=2", "loop.dev={num_images: 3}", f"eval.annotations={write_annotations(tiny_llava)}"]
    loop.run(load_config(None, args))
    # chair_i 10 (base), 6, 8, 9: round 1 best, rounds 2 and 3 do not improve -> stop after round 3 (patience 2)
    assert not (out / "round_4").exists()
    best = json.loads((out / "best.json").read_text())
    assert best == {"round": 1, "checkpoint": str(out / "round_1" / "train" / "checkpoint"), "select_on": "chair_i",
                    "value": 6.0}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["best_round"] == 1 and manifest["seeds"] == {"seed": 0} and "trl" in manifest["versions"]
    stages = manifest["stages"]
    assert list(stages) == ["round_0/eval", "round_0/dev_eval"] + [
        f"round_{k}/{s}" for k in (1, 2, 3) for s in ("generate", "train", "eval", "dev_eval")]
    assert all(s["status"] == "done" and (Path(s["dir"]) / "DONE").is_file() for s in stages.values())
    assert "2/generate:" + str(out / "round_1" / "train" / "checkpoint") in fake_stages
    assert f"2/dev_eval:{out / 'round_2' / 'train' / 'checkpoint'}:3" in fake_stages  # dev overrides applied
    printed = capsys.readouterr().out
    assert "[round_1/train]" in printed and "train_loss=" in printed and "dev_chair_i" in printed
    # re-running skips every finished stage and changes nothing under round_1
    before, n_calls = tree_state(out / "round_1"), len(fake_stages)
    loop.run(load_config(None, args))
    assert tree_state(out / "round_1") == before and len(fake_stages) == n_calls
    assert "reused (already done)" in capsys.readouterr().out


def test_from_round_redoes_later_rounds_only(tiny_llava, tmp_path, fake_stages):
    out = tmp_path / "loop"
    args = [f"out={out}", f"model.path={tiny_llava / 'policy'}", *TINY, "loop.rounds=2", "loop.evaluate=false"]
    loop.run(load_config(None, args))
    assert json.loads((out / "best.json").read_text())["round"] == 2  # no select_on: the last round
    round1, round2 = tree_state(out / "round_1"), tree_state(out / "round_2")
    del fake_stages[:]
    assert main(["loop", *args, "--from-round", "2"]) == 0
    assert tree_state(out / "round_1") == round1
    after = tree_state(out / "round_2")
    assert set(after) == set(round2) and all(after[f][0] != round2[f][0] for f in after)  # every file rewritten
    assert [c.split(":")[0] for c in fake_stages] == ["2/generate"]
    with pytest.raises(InputError, match="--from-round"):
        loop.run(load_config(None, args), from_round=3)


def test_resume_under_another_config_is_refused(tiny_llava, tmp_path, fake_stages, caplog):
    """A finished round is reused only under the config that made it: train.beta 0.1 -> 0.5 stops the loop (and
    leaves config.yaml as it was); more rounds and another eval.batch_size resume; --from-round 2 redoes round 2
    under beta 0.5 with a warning that round 1 keeps 0.1."""
    out = tmp_path / "loop"
    args = [f"out={out}", f"model.path={tiny_llava / 'policy'}", *TINY, "loop.rounds=1", "loop.evaluate=false"]
    loop.run(load_config(None, args))
    del fake_stages[:]
    with pytest.raises(ConfigError, match=r"finished rounds of another config \(train.beta: 0.1 -> 0.5\)"):
        loop.run(load_config(None, [*args, "train.beta=0.5"]))
    assert fake_stages == [] and "beta: 0.1" in (out / "config.yaml").read_text()
    loop.run(load_config(None, [*args, "loop.rounds=2", "eval.batch_size=3"]))
    assert [c.split(":")[0] for c in fake_stages] == ["2/generate"]
    del fake_stages[:]
    loop.run(load_config(None, [*args, "loop.rounds=2", "train.beta=0.5"]), from_round=2)
    assert [c.split(":")[0] for c in fake_stages] == ["2/generate"]
    assert "rounds before 2 keep the saved one" in caplog.text and "beta: 0.5" in (out / "config.yaml").read_text()


def test_changed_settings_counts_a_missing_key_as_its_default(tmp_path):
    """A config.yaml written before curate.balance_yes_no existed reads as its default (false): no change; true is
    one."""
    cfg = load_config(None, ["model.path=base"])
    saved = save_config(cfg, tmp_path / "config.yaml")
    saved.write_text(saved.read_text().replace("  balance_yes_no: false\n", ""))
    assert "balance_yes_no" not in saved.read_text()
    assert changed_settings(saved, cfg) == []
    assert changed_settings(saved, load_config(None, ["model.path=base", "curate.balance_yes_no=true"])) == [
        "curate.balance_yes_no: False -> True"]
    assert changed_settings(saved, load_config(None, ["model.path=other"]), ignore=("model",)) == []
    assert changed_settings(tmp_path / "absent.yaml", cfg) == []


# ---------------------------------------------------------------------------- real stages


def real_args(tiny: Path, out: Path) -> list[str]:
    return [f"out={out}", f"model.path={tiny / 'policy'}", f"reward.clip_path={tiny / 'clip'}",
            f"data.prompts={tiny / 'prompts.jsonl'}", f"data.image_root={tiny}", *LOOP_TINY, "loop.rounds=2"]


def test_two_round_loop_with_evaluation(tiny_llava, tmp_path, capsys):
    import torch

    torch.set_num_threads(1)
    ann = write_annotations(tiny_llava)
    out = tmp_path / "loop"
    eval_args = [f"eval.annotations={ann}", f"eval.image_root={tiny_llava}", "eval.num_images=2",
                 "eval.max_new_tokens=6", "eval.pope_splits=[random]", "loop.select_on=chair_i",
                 "loop.dev={num_images: 3}"]
    loop.run(load_config(None, real_args(tiny_llava, out) + eval_args))
    for k in (0, 1, 2):
        for stage in ("eval", "dev_eval"):
            assert "chair_i" in json.loads((out / f"round_{k}" / stage / "metrics.json").read_text())["flat"]
    for k in (1, 2):
        assert all((out / f"round_{k}" / s / "DONE").is_file() for s in layout.STAGES)
        assert (out / f"round_{k}" / "train" / "checkpoint" / "model.safetensors").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    dev = {k: json.loads((out / f"round_{k}" / "dev_eval" / "metrics.json").read_text())["flat"]["chair_i"]
           for k in (0, 1, 2)}
    best = min(dev, key=lambda k: (dev[k], k))  # the lowest dev CHAIR_i; a tie keeps the earlier round
    assert len(manifest["stages"]) == 2 + 2 * 4 and manifest["best_round"] == best
    picked = json.loads((out / "best.json").read_text())
    assert (picked["round"], picked["value"]) == (best, dev[best])
    assert picked["checkpoint"] == (str(tiny_llava / "policy") if best == 0 else str(layout.checkpoint(out, best)))
    table = capsys.readouterr().out.split("round  ")[-1]
    assert "chair_i" in table and "pope_f1" in table and table.count("\n") >= 3


@pytest.mark.slow
def test_killed_during_round_2_training_resumes_there(tiny_llava, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "loop"
    # 15 epochs over <= 3 pairs keeps round 2's training busy for a few seconds: time to kill it mid-way
    cmd = [sys.executable, "-m", "csr_vlm", "loop", *real_args(tiny_llava, out), "loop.evaluate=false",
           "train.num_train_epochs=15"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    train2 = out / "round_2" / "train"
    with (tmp_path / "first.log").open("w") as log_fh:
        proc = subprocess.Popen(cmd, stdout=log_fh, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 120
        while not (train2.is_dir() and not (train2 / "DONE").exists()) and proc.poll() is None:
            assert time.time() < deadline, "round 2 training never started"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (train2 / "DONE").exists(), (tmp_path / "first.log").read_text()[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["round_2/train"]["status"] == "running" and manifest["finished"] is None
    round1, gen2 = tree_state(out / "round_1"), tree_state(out / "round_2" / "generate")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert tree_state(out / "round_1") == round1 and tree_state(out / "round_2" / "generate") == gen2
    assert (train2 / "DONE").is_file() and not (train2 / "checkpoint.tmp").exists()
    assert "[round_1/train] reused" in proc.stdout and "[round_2/generate] reused" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["round_2/train"]["status"] == "done" and manifest["best_round"] == 2
