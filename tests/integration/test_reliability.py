"""What happens when things go wrong: hostile inputs, out of memory, a killed training, two runs on one directory.

    .venv/bin/python -m pytest tests/integration/test_reliability.py
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import TINY_TRAIN, write_pairs

from csr_vlm.cli import main

SEARCH = ["search.num_candidates=2", "search.keep_top=1", "search.keep_bottom=1", "search.max_sentences=2",
          "search.max_new_tokens=4", "search.filters=[]"]


def _args(d: Path, out: Path, prompts: Path, *extra: str) -> list[str]:
    return [f"model.path={d / 'policy'}", f"reward.clip_path={d / 'clip'}", f"data.prompts={prompts}",
            f"data.image_root={d}", f"out={out}", *SEARCH, *extra]


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[2] / "src")
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}


# ---------------------------------------------------------------------------- hostile prompts


def hostile_prompts(tmp_path: Path) -> Path:
    """Line 1 ok; 2 Latin-1 bytes; 3 prompt is a list; 4 id is a list; 5 image is a number; 6 a 120,000-character
    prompt; 7 the image is a directory; 8 a JSON array, not an object; 9 ok."""
    good = {"id": "a", "image": "images/000.png", "prompt": "Describe this image."}
    lines = [json.dumps(good).encode(),
             '{"id": "latin", "image": "images/001.png", "prompt": "Un café."}'.encode("latin-1"),
             json.dumps({"id": "list", "image": "images/001.png", "prompt": ["not", "a", "string"]}).encode(),
             json.dumps({"id": ["x"], "image": "images/001.png", "prompt": "Describe."}).encode(),
             json.dumps({"id": "num", "image": 7, "prompt": "Describe."}).encode(),
             json.dumps({"id": "huge", "image": "images/002.png", "prompt": "describe the dog. " * 6667}).encode(),
             json.dumps({"id": "dir", "image": "images", "prompt": "Describe."}).encode(),
             b'["id", "image"]',
             json.dumps({**good, "id": "b", "image": "images/003.png"}).encode()]
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_hostile_prompts_cost_their_own_line_only(tiny_llava, tmp_path):
    """Every bad line is skipped with its line number (when there is no readable id) and its reason; the two good
    prompts are searched. The 120,000-character prompt is at least 120,005 / L tokens (L: the longest token's
    characters), past the tiny model's 2,048 positions."""
    out = tmp_path / "gen"
    assert main(["generate", *_args(tiny_llava, out, hostile_prompts(tmp_path))]) == 0
    assert [c["id"] for c in _lines(out / "candidates.jsonl")] == ["a", "b"]
    skipped = {s.get("id") or f"line {s['line']}": s for s in _lines(out / "skipped.jsonl")}
    assert skipped["line 2"]["reason"] == "not UTF-8 text (byte 0xe9 at column 61)"
    assert skipped["list"]["reason"] == "wrong field type(s): prompt is a list, not a string"
    assert skipped["line 4"]["reason"] == "wrong field type(s): id is a list, not a string or an integer"
    assert skipped["num"]["reason"] == "wrong field type(s): image is a number, not a string"
    assert skipped["line 8"]["reason"] == "entry is not an object (a list)"
    assert skipped["dir"]["reason"] == f"image is a directory, not a file: {tiny_llava / 'images'}"
    huge = skipped["huge"]["reason"]  # refused by its characters, before the tokenizer reads it
    assert huge.startswith("prompt too long (120005 characters, at least ") and huge.endswith(
        "+ up to 8 answer tokens > the model's context of 2048)")
    counts = json.loads((out / "stats.json").read_text())["counts"]
    assert (counts["inputs"], counts["prompts_valid"], counts["prompts_searched"]) == (9, 4, 2)


def test_max_prompt_tokens_caps_prompts_and_a_stage_with_no_pair_fails(tiny_llava, tmp_path, capsys):
    """data.max_prompt_tokens=10: every prompt (the image alone is 64 tokens) is skipped, with its length; a stage
    that made no pair exits 2 with one line naming the commonest skip and its count, and writes no DONE."""
    out = tmp_path / "gen"
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "a", "image": "images/000.png", "prompt": "Describe this image."}) + "\n")
    assert main(["generate", *_args(tiny_llava, out, prompts, "data.max_prompt_tokens=10")]) == 2
    (skip,) = _lines(out / "skipped.jsonl")
    assert skip["reason"].startswith("prompt too long (") and skip["reason"].endswith("> data.max_prompt_tokens=10)")
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("csr generate: error: generate: no pairs from 1 input(s) (commonest skip: prompt too long "
                   f"(1 of 1); every reason in {out / 'skipped.jsonl'})")
    assert not (out / "DONE").exists()


# ---------------------------------------------------------------------------- out of memory


@pytest.fixture
def four_prompts(tmp_path):
    path = tmp_path / "four.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "image": f"images/{i:03d}.png", "prompt": "Describe this."})
                            + "\n" for i in range(4)))
    return path


def _oom_once(monkeypatch, times: int):
    """Make the HF engine's expansion raise torch.OutOfMemoryError on its first `times` calls (the runs below
    skip the start-up check of the cached search, which would take the first call)."""
    import torch

    import csr_vlm.search.hf_engine as hf

    real, calls = hf.expand_groups, {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= times:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(hf, "expand_groups", flaky)
    return calls


def test_an_out_of_memory_batch_is_retried_one_prompt_at_a_time(tiny_llava, tmp_path, four_prompts, monkeypatch):
    """Batch of 4 fails once with OOM -> each prompt alone: the same candidates and pairs as a run that never
    failed."""
    ref = tmp_path / "ref"
    assert main(["generate", *_args(tiny_llava, ref, four_prompts, "search.prompt_batch_size=4")]) == 0
    _oom_once(monkeypatch, times=1)
    out = tmp_path / "gen"
    assert main(["generate", *_args(tiny_llava, out, four_prompts, "search.prompt_batch_size=4",
                                    "search.check_cache=false")]) == 0
    from helpers import assert_close

    for name in ("candidates.jsonl", "pairs.jsonl"):
        assert_close(_lines(out / name), _lines(ref / name), name)
    assert _lines(out / "skipped.jsonl") == _lines(ref / "skipped.jsonl")


def test_a_prompt_that_still_runs_out_of_memory_is_skipped(tiny_llava, tmp_path, four_prompts, monkeypatch):
    """The batch and then the first prompt alone fail (2 OOMs): p0 is skipped with the reason, p1..p3 searched."""
    _oom_once(monkeypatch, times=2)
    out = tmp_path / "gen"
    assert main(["generate", *_args(tiny_llava, out, four_prompts, "search.prompt_batch_size=4",
                                    "search.check_cache=false")]) == 0
    assert [c["id"] for c in _lines(out / "candidates.jsonl")] == ["p1", "p2", "p3"]
    (skip,) = [s for s in _lines(out / "skipped.jsonl") if s["id"] == "p0"]
    assert skip["reason"] == "search failed (OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB)"


# ---------------------------------------------------------------------------- two runs, one directory


def test_a_second_run_on_a_locked_directory_refuses_at_once(tiny_llava, tmp_path, four_prompts, capsys):
    """A live process holds out/.lock: the second run exits 2 with one line naming the holder, and writes nothing."""
    out = tmp_path / "gen"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        from csr_vlm.lock import process_start

        (out / ".lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                               "started": "2026-12-02 10:00:00", "command": "csr generate ...",
                                               "pid_start": process_start(holder.pid)}))
        assert main(["generate", *_args(tiny_llava, out, four_prompts)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"csr generate: error: out: {out} is in use by another run (PID {holder.pid} on "
                       f"{socket.gethostname()}, since 2026-12-02 10:00:00: csr generate ...): {out / '.lock'}")
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    finally:
        holder.kill()
        holder.wait()
    assert main(["generate", *_args(tiny_llava, out, four_prompts)]) == 0  # the holder is gone: a stale lock
    assert not (out / ".lock").exists() and (out / "DONE").is_file()


# ---------------------------------------------------------------------------- bad annotations, long eval prompts


def test_eval_skips_bad_annotation_entries_and_prompts_too_long(tiny_llava, tmp_path):
    """Images 0-3 with 3 objects each; a wrongly typed image, an annotation without category_id and a category
    that is a string are skipped with their reason; the file also holds a Latin-1 byte in a category name.
    A caption prompt past the context is skipped (no caption at all: the stage fails); POPE alone still runs:
    each image has 3 objects of the 4 in the pool, so 3 positives and only 1 valid negative -> 4 x 4 = 16."""
    cats = [{"id": k, "name": n} for k, n in enumerate(["dog", "cat", "person", "car", "bus"], 1)]
    images = [{"id": i, "file_name": f"{i:03d}.png"} for i in range(4)] + [{"id": [9], "file_name": "x.png"}]
    anns = [{"id": 10 * i + c, "image_id": i, "category_id": c} for i in range(4) for c in (1 + i % 2, 3, 4)]
    anns.append({"id": 99, "image_id": 0})
    data = json.dumps({"images": images, "annotations": anns, "categories": cats + ["bird"]}).encode()
    data = data.replace(b'"bus"', '"bús"'.encode("latin-1"))
    (tmp_path / "inst.json").write_bytes(data)
    out = tmp_path / "eval"
    long_prompt = "describe the dog. " * 6000
    assert main(["eval", f"model.path={tiny_llava / 'policy'}", f"out={out}",
                 f"eval.annotations={tmp_path / 'inst.json'}",
                 f"eval.image_root={tiny_llava / 'images'}", "eval.num_images=4", "eval.max_new_tokens=4",
                 "eval.pope_max_new_tokens=2", "eval.pope_splits=[random]", f"eval.prompt={long_prompt}"]) == 2
    skipped = _lines(out / "skipped.jsonl")
    entries = {s["entry"]: s["reason"] for s in skipped if "entry" in s}
    assert entries == {"images[4]": "wrong type of id", "annotations[12]": "has no category_id",
                       "categories[5]": "not an object"}
    too_long = [s for s in skipped if s.get("task") == "chair"]
    assert len(too_long) == 4 and all(s["reason"].startswith("prompt too long (") for s in too_long)
    assert main(["eval", f"model.path={tiny_llava / 'policy'}", f"out={out}",
                 f"eval.annotations={tmp_path / 'inst.json'}",
                 f"eval.image_root={tiny_llava / 'images'}", "eval.num_images=4", "eval.max_new_tokens=4",
                 "eval.pope_max_new_tokens=2", "eval.pope_splits=[random]", "eval.tasks=[pope]"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["pope"]["random"]["n"] == 16 and m["protocol"]["skipped_annotation_entries"] == 3


# ---------------------------------------------------------------------------- a killed training resumes


@pytest.mark.slow
def test_training_killed_mid_way_resumes_from_its_checkpoint(tiny_llava, tmp_path):
    """8 pairs x 3 epochs, batch 1 = 24 steps, a checkpoint every 4. Killed (-9) after checkpoint-8, run again:
    it resumes from the last complete checkpoint, redoes only the steps after it, and its merged checkpoint and
    DONE's loss equal an uninterrupted run's to float tolerance."""
    import torch
    from safetensors.torch import load_file

    pairs = write_pairs(tmp_path / "pairs.jsonl", tiny_llava / "images", n=8)
    common = ["train", f"model.path={tiny_llava / 'policy'}", f"train.pairs={pairs}", *TINY_TRAIN,
              "train.num_train_epochs=3", "train.save_steps=4", "train.lora_dropout=0.1"]
    ref, out = tmp_path / "ref", tmp_path / "resumed"
    done = subprocess.run([sys.executable, "-m", "csr_vlm", *common, f"out={ref}"], env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    proc = subprocess.Popen([sys.executable, "-m", "csr_vlm", *common, f"out={out}"], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (out / "trainer" / "checkpoint-8" / "trainer_state.json").is_file():
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -9, "the training must be killed mid-way"
    killed_at = max(json.loads(line)["step"] for line in (out / "train_metrics.jsonl").read_text().splitlines())
    resumed = subprocess.run([sys.executable, "-m", "csr_vlm", *common, f"out={out}"], env=_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from checkpoint-" in resumed.stderr
    info = json.loads((out / "DONE").read_text())
    assert info["steps"] == 24 and info["resumed_from_step"] >= 8 and killed_at >= info["resumed_from_step"]
    # the loss of the whole training, not of the steps redone after the resume
    assert info["train_loss"] == pytest.approx(json.loads((ref / "DONE").read_text())["train_loss"], abs=1e-5)
    steps = [json.loads(line)["step"] for line in (out / "train_metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == list(range(1, 25))  # each step logged once: the ones after the checkpoint were redone
    a, b = load_file(ref / "checkpoint" / "model.safetensors"), load_file(out / "checkpoint" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert not list((out / "trainer").glob("checkpoint-*"))  # resume points are gone once the stage is done
    shutil.rmtree(ref, ignore_errors=True)


def _write_many(path: str) -> None:
    from csr_vlm.data import write_jsonl

    for i in range(200):
        write_jsonl(path, [{"i": i, "pad": "x" * 1000}] * 20)


def test_two_processes_writing_one_file_do_not_collide(tmp_path):
    """Two `csr demo` runs starting on one world both write its files: each writer renames its own tmp file into
    place (a shared `x.tmp` let one process rename the other's away: "No such file or directory")."""
    import multiprocessing

    path = tmp_path / "questions.jsonl"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(str(path),)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    lines = path.read_text().splitlines()
    assert len(lines) == 20 and not list(tmp_path.glob("*.tmp"))
