"""What the terminal shows: TRL's log dicts only with --verbose, one labelled line per stage (per arm in the demo).

    .venv/bin/python -m pytest tests/integration/test_console.py
"""

from __future__ import annotations

import json
from pathlib import Path

from helpers import TINY_TRAIN, write_pairs

from csr_vlm import loop
from csr_vlm.cli import main
from csr_vlm.config import load_config
from csr_vlm.console import LABEL_ENV, VERBOSE_ENV
from csr_vlm.data import mark_done, write_json


def test_train_keeps_trl_log_dicts_in_the_metrics_file_unless_verbose(tiny_llava, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(VERBOSE_ENV, "0")  # main(--verbose) sets it; monkeypatch puts it back afterwards
    pairs = write_pairs(tmp_path / "pairs.jsonl", tiny_llava / "images", n=2)
    args = [f"model.path={tiny_llava / 'policy'}", f"train.pairs={pairs}", *TINY_TRAIN]
    assert main(["train", *args, f"out={tmp_path / 'quiet'}"]) == 0
    captured = capsys.readouterr()
    assert "'loss'" not in captured.out + captured.err
    lines = [ln for ln in captured.out.splitlines() if ln.strip()]
    assert lines[-1].startswith("[train] ") and "pairs=2" in lines[-1] and "train_loss=" in lines[-1]
    logged = [json.loads(x) for x in (tmp_path / "quiet" / "train_metrics.jsonl").read_text().splitlines()]
    assert sum("loss" in r for r in logged) == 2  # one dict per step, in the file

    assert main(["train", "--verbose", *args, f"out={tmp_path / 'loud'}"]) == 0
    captured = capsys.readouterr()
    assert (captured.out + captured.err).count("'loss'") == 2


def test_a_demo_arm_labels_every_line_it_prints(tiny_llava, tmp_path, capsys, monkeypatch):
    """The demo runs its two arms side by side: every stage line, the round table and the best-round line of an
    arm carry the arm's name."""
    def stage(cfg, k):
        if Path(cfg.out).name == "generate":
            write_json(Path(cfg.out) / "stats.json", {"counts": {"pairs": 2, "anchors": 1, "skipped": 0}})
        mark_done(cfg.out, {"pairs": 2} if Path(cfg.out).name == "train" else {})
        return Path(cfg.out)

    monkeypatch.setattr(loop, "stage_runner", lambda name: stage)
    monkeypatch.setenv(LABEL_ENV, "lam0")
    loop.run(load_config(None, [f"out={tmp_path / 'arm'}", f"model.path={tiny_llava / 'policy'}", "loop.rounds=2",
                                "loop.evaluate=false"]))
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert lines and all(ln.startswith("[lam0") for ln in lines), lines
    assert "[lam0 round_1/generate]" in lines[0] and "pairs=2, anchors=1" in lines[0]
    assert lines[-1].startswith("[lam0 loop] best round: 2")
