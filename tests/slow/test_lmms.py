"""The lmms-eval hand-off on a CPU: the toy world's toy_pope task, its numbers beside csr's own POPE, failures.

    .venv/bin/python -m pytest tests/slow/test_lmms.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from csr_vlm.cli import main
from csr_vlm.config import ConfigError, load_config

pytestmark = pytest.mark.slow  # lmms-eval runs in a subprocess


def _eval_args(world: Path, out: Path, *extra: str) -> list[str]:
    questions = world / "lmms_tasks" / "toy_pope" / "questions.jsonl"
    return ["eval", f"model.path={world / 'policy'}", f"out={out}", "eval.tasks=[pope]",
            f"eval.pope_questions={questions}", f"eval.image_root={world}", "eval.pope_max_new_tokens=3",
            *extra]  # eval.pope_suffix: the default, " Please answer yes or no.", the world's own


@pytest.fixture(scope="module")
def lmms_eval_run(quick_world, tmp_path_factory, monkeypatch_module):
    out = tmp_path_factory.mktemp("lmms") / "eval"
    monkeypatch_module.setenv("HF_DATASETS_CACHE", str(out.parent / "datasets"))
    assert main(_eval_args(quick_world, out, "eval.lmms_tasks=[toy_pope]",
                           f"eval.lmms_include_path={quick_world / 'lmms_tasks'}")) == 0
    return out


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_lmms_eval_accuracy_equals_csr_pope_on_the_same_questions(quick_world, lmms_eval_run):
    """toy_pope is csr's adversarial POPE split of the test images, asked the same way and parsed by csr's own
    `default` parser: lmms-eval's accuracy equals csr eval's, question by question the answers are the same,
    and its numbers sit in metrics.json["lmms"] and "flat" (lmms_toy_pope_accuracy)."""
    m = json.loads((lmms_eval_run / "metrics.json").read_text())
    questions = [json.loads(x) for x in (quick_world / "lmms_tasks" / "toy_pope" / "questions.jsonl").read_text()
                 .splitlines()]
    assert m["lmms"]["toy_pope"]["n_samples"] == len(questions) == m["pope"]["adversarial"]["n"]
    assert m["lmms"]["toy_pope"]["accuracy"] == pytest.approx(m["pope"]["adversarial"]["accuracy"], abs=1e-12)
    assert m["flat"]["lmms_toy_pope_accuracy"] == m["lmms"]["toy_pope"]["accuracy"]
    ours = {(Path(s["image"]).name, s["prompt"]): s["answer"] for s in
            map(json.loads, (lmms_eval_run / "samples.jsonl").read_text().splitlines())}
    samples = next(Path(m["lmms"]["results_file"]).parent.glob("*_samples_toy_pope.jsonl"))
    for line in samples.read_text().splitlines():
        rec = json.loads(line)
        q = questions[rec["doc_id"]]
        theirs = rec["filtered_resps"][0] if isinstance(rec["filtered_resps"], list) else rec["filtered_resps"]
        assert theirs.strip() == ours[(Path(q["image"]).name, q["text"] + " Please answer yes or no.")]


def test_a_failed_lmms_eval_run_is_a_failed_stage(quick_world, tmp_path, capsys, monkeypatch):
    """lmms-eval exits 0 on an unknown task; the stage reads its files instead: one line, no DONE."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    out = tmp_path / "eval"
    capsys.readouterr()
    assert main(_eval_args(quick_world, out, "eval.lmms_tasks=[no_such_task]",
                           f"eval.lmms_include_path={quick_world / 'lmms_tasks'}")) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("csr eval")]
    assert len(err) == 1 and "eval.lmms_tasks: lmms-eval failed (" in err[0] and not (out / "DONE").exists()


def test_missing_lmms_eval_is_a_one_line_error_with_the_install_command(quick_world, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lmms_eval" else real(name, *a))
    capsys.readouterr()
    assert main(_eval_args(quick_world, tmp_path / "e", "eval.lmms_tasks=[toy_pope]")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "needs lmms-eval, which is not installed: pip install 'csr-vlm[lmms]'" in err


def test_select_on_may_name_an_lmms_metric():
    """An lmms-eval metric is known by name only once lmms-eval ran; the config accepts lmms_<task>_* of the dev
    tasks and still refuses other names."""
    cfg = load_config(None, ["loop.select_on=lmms_toy_pope_accuracy", "loop.dev={lmms_tasks: [toy_pope]}"])
    assert cfg.loop.select_on == "lmms_toy_pope_accuracy"
    with pytest.raises(ConfigError, match="not a metric of the dev tasks"):
        load_config(None, ["loop.select_on=lmms_mme_score"])
