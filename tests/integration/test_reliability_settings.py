"""Settings and directories a careless or hostile user might give: nan/inf, an `out` that is not the run's own,
locks left by a full disk or a reused PID, SIGTERM, inputs changed under a finished stage.

    .venv/bin/python -m pytest tests/integration/test_reliability_settings.py
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from csr_vlm.cli import main
from csr_vlm.config import RunConfig, load_config
from csr_vlm.errors import ConfigError, InputError


def _float_keys(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, shape) of every field whose type holds a float: "scalar", "list" or "mapping"."""
    found = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            found += _float_keys(tp, f"{prefix}{f.name}.")
            continue
        text = str(tp)
        if "float" not in text or "float32" in text:
            continue
        shape = "mapping" if "dict" in text else "list" if "list" in text else "scalar"
        found.append((prefix + f.name, shape))
    return found


def test_every_float_setting_refuses_nan_and_inf():
    """Walks the schema, not a list: each float field (scalar, list item, mapping value) with nan, inf and -inf is a
    ConfigError naming its key. There are 19 of them today (a new one is covered without editing this test)."""
    keys = _float_keys()
    assert len(keys) >= 19 and ("train.beta", "scalar") in keys and ("loop.guards", "mapping") in keys
    for key, shape in keys:
        for bad in (".nan", ".inf", "-.inf"):
            value = {"scalar": bad, "list": f"[{bad}]", "mapping": f"{{m: {bad}}}"}[shape]
            name = {"scalar": key, "list": f"{key}[0]", "mapping": f"{key}.m"}[shape]
            with pytest.raises(ConfigError, match=rf"^{re.escape(name)} must be a finite"):
                load_config(None, [f"{key}={value}"])
    with pytest.raises(ConfigError, match=r"^train.trl_args.max_grad_norm must be a finite number, got nan$"):
        load_config(None, ["train.trl_args={max_grad_norm: .nan}"])
    with pytest.raises(ConfigError, match=r"^search.temperature must be a finite number, got inf$"):
        load_config(None, ["search.temperature=inf"])  # the string form is read as a float too


@pytest.mark.parametrize("value, why", [
    ("", "out is empty"), ("~", "out is empty"), ("null", "out is empty"), ("#x", "out is empty"),
    ("0755", "out: expected a path, got the int 493"), ("1.5", "out: expected a path, got the float 1.5"),
    ("[a]", "out: expected a path, got the list"), ("~/", "your home directory"), ("/", "the root"),
])
def test_out_that_names_no_directory_of_its_own_is_refused_when_the_config_loads(value, why):
    with pytest.raises(ConfigError, match=why):
        load_config(None, [f"out={value}"])


def test_out_holding_foreign_files_is_refused_and_nothing_in_it_is_touched(tiny_llava, tmp_path, capsys,
                                                                          monkeypatch):
    """A directory with the user's files (no .csr marker) is refused with one line naming them; the current
    directory (out=.) too. Its files are untouched. An empty directory, or one with only csr's own names, is
    accepted and marked."""
    from csr_vlm.outdir import claim

    mine = tmp_path / "project"
    (mine / "trainer").mkdir(parents=True)
    (mine / "trainer" / "notes.txt").write_text("keep")
    (mine / "paper.tex").write_text("keep")
    before = sorted(str(p.relative_to(mine)) for p in mine.rglob("*"))
    args = [f"model.path={tiny_llava / 'policy'}", f"train.pairs={tmp_path / 'p.jsonl'}"]
    (tmp_path / "p.jsonl").write_text("")
    assert main(["generate", f"out={mine}", f"reward.clip_path={tiny_llava / 'clip'}",
                 f"data.prompts={tiny_llava / 'prompts.jsonl'}", *args[:1]]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"csr generate: error: out: {mine} already holds files that csr did not make (paper.tex); a run "
                   "writes and deletes files in its out, so name a new or empty directory")
    monkeypatch.chdir(mine)
    with pytest.raises(InputError, match="already holds files that csr did not make"):
        claim(".")
    assert sorted(str(p.relative_to(mine)) for p in mine.rglob("*")) == before
    old = tmp_path / "old_run"  # an older csr's stage directory: only names csr writes
    (old / "shards").mkdir(parents=True)
    (old / "DONE").write_text("{}")
    assert claim(old) == old and claim(tmp_path / "new") == tmp_path / "new"


def test_a_rerun_deletes_only_what_its_stage_made(tmp_path):
    """generate overwrite=true clears its own shard files and train clears its checkpoint-<step> folders; a file of
    the user's in shards/ or trainer/ stays."""
    from csr_vlm import generate, train

    out = tmp_path / "gen"
    (out / "shards").mkdir(parents=True)
    for name in ("rank-0.jsonl", "engine-rank-0.json", "fingerprint.json", "mine.txt"):
        (out / "shards" / name).write_text("{}")
    generate._prepare_dir(out, load_config(None, [f"out={out}", "overwrite=true"]), {"x": 1})
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["fingerprint.json", "mine.txt"]
    trainer = tmp_path / "train" / "trainer"
    (trainer / "checkpoint-4").mkdir(parents=True)
    (trainer / "checkpoint-best").mkdir()
    (trainer / "notes.txt").write_text("keep")
    train._remove_trainer_checkpoints(trainer)
    assert sorted(p.name for p in trainer.iterdir()) == ["checkpoint-best", "notes.txt"]


# ---------------------------------------------------------------------------- locks and signals


def _lock(out: Path, holder: dict | str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / ".lock").write_text(holder if isinstance(holder, str) else json.dumps(holder))


def test_stale_locks_are_taken_over(tmp_path, caplog):
    """Empty (a full disk), unparsable, a live PID that now runs another program (its start time differs from the
    one recorded), and an old lock without a start time whose PID runs no csr: all stale. A live csr-looking holder
    with the right start time is not."""
    from csr_vlm.lock import acquire, process_start, release

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = socket.gethostname()
        cases = {"empty": "", "garbage": '{"pid": 12', "reused": {"pid": other.pid, "host": host,
                                                                   "pid_start": process_start(other.pid) + 1},
                 "legacy": {"pid": other.pid, "host": host}}
        for name, holder in cases.items():
            _lock(tmp_path / name, holder)
            path = acquire(tmp_path / name)
            assert json.loads(path.read_text())["pid"] == os.getpid(), name
            release(path)
            assert not path.exists()
        _lock(tmp_path / "held", {"pid": other.pid, "host": host, "pid_start": process_start(other.pid)})
        with pytest.raises(InputError, match=f"is in use by another run \\(PID {other.pid} on {host}"):
            acquire(tmp_path / "held")
    finally:
        other.kill()
        other.wait()
    reasons = " | ".join(r.getMessage() for r in caplog.records)
    assert "the lock file is empty or unreadable" in reasons and "now belongs to another process" in reasons
    assert "now runs something else" in reasons


def test_sigterm_stops_like_ctrl_c_releases_the_lock_and_resumes(tiny_llava, tmp_path, capsys, monkeypatch):
    """SIGTERM (SLURM, Kubernetes, systemd) arrives after the first of 3 prompts: exit 143 with one line, the lock
    removed, the finished prompt kept; the same command resumes and searches the other 2 only."""
    from csr_vlm import generate

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "image": f"images/{i:03d}.png", "prompt": "Describe it."})
                               + "\n" for i in range(3)))
    out = tmp_path / "gen"
    args = ["generate", f"model.path={tiny_llava / 'policy'}", f"reward.clip_path={tiny_llava / 'clip'}",
            f"data.prompts={prompts}", f"data.image_root={tiny_llava}", f"out={out}", "search.num_candidates=2",
            "search.keep_top=1", "search.keep_bottom=1", "search.max_sentences=1", "search.max_new_tokens=4",
            "search.filters=[]", "search.check_cache=false"]
    real, calls = generate._process_chunk, []

    def then_terminated(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # delivered to the handler main() installed
        return real(*a, **k)

    with monkeypatch.context() as m:
        m.setattr(generate, "_process_chunk", then_terminated)
        assert main(args) == 143
    assert capsys.readouterr().err.strip().endswith("csr generate: terminated (SIGTERM); re-run the same command to "
                                                     "resume")
    assert not (out / ".lock").exists() and not (out / "DONE").exists()
    assert [json.loads(x)["id"] for x in (out / "shards" / "rank-0.jsonl").read_text().splitlines()] == ["p0"]
    assert signal.getsignal(signal.SIGTERM) is not None and main(args) == 0
    assert json.loads((out / "stats.json").read_text())["prompts_this_run"] == 2


def test_a_finished_stage_notices_its_prompts_changed(tiny_llava, tmp_path, capsys):
    """Edit the prompts file after a finished generate: the same command refuses with one line naming it (no stale
    'complete'); overwrite=true redoes the stage on the new prompts."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "a", "image": "images/000.png", "prompt": "Describe it."}) + "\n")
    out = tmp_path / "gen"
    args = ["generate", f"model.path={tiny_llava / 'policy'}", f"reward.clip_path={tiny_llava / 'clip'}",
            f"data.prompts={prompts}", f"data.image_root={tiny_llava}", f"out={out}", "search.num_candidates=2",
            "search.keep_top=1", "search.keep_bottom=1", "search.max_sentences=1", "search.max_new_tokens=4",
            "search.filters=[]", "search.check_cache=false"]
    assert main(args) == 0
    prompts.write_text(prompts.read_text().replace("Describe it.", "What is in it?"))
    capsys.readouterr()
    assert main(args) == 2
    assert "the content of data.prompts changed since" in capsys.readouterr().err
    assert main([*args, "overwrite=true"]) == 0
    assert json.loads((out / "candidates.jsonl").read_text().splitlines()[0])["prompt"] == "What is in it?"
