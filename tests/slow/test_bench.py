"""The bench/ scripts run in --quick mode, print their table and write their JSON (no timing is asserted).

All five start together in subprocesses (one torch thread each) so the file takes about as long as the
slowest script. Token counts are checked against the tree arithmetic in the docstrings below.

    .venv/bin/python -m pytest tests/slow/test_bench.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # subprocesses

BENCH = Path(__file__).resolve().parents[2] / "bench"
SCRIPTS = ("search_bench", "scaling_bench", "train_bench", "round_bench", "gpu_bench")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{script: (returncode, stdout + stderr, parsed JSON or None)} for every script run with --quick."""
    tmp = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    procs = {}
    for name in SCRIPTS:
        cmd = [sys.executable, str(BENCH / f"{name}.py"), "--quick", "--out", str(tmp / f"{name}.json")]
        procs[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                       cwd=tmp)
    out = {}
    for name, proc in procs.items():
        text, _ = proc.communicate(timeout=300)
        path = tmp / f"{name}.json"
        out[name] = (proc.returncode, text, json.loads(path.read_text()) if path.is_file() else None)
    return out


def _ok(runs, name):
    rc, text, data = runs[name]
    assert rc == 0, text[-3000:]
    assert data is not None and data["env"]["cpu_count"] == os.cpu_count() and data["env"]["torch_threads"] == 1
    assert data["command"].startswith(f"python bench/{name}.py --quick")
    return text, data


def test_search_bench_same_tree_for_both(runs):
    """Tree: 1 root expansion of 5, then 3 kept x 5 at each of the 5 later depths, 20 tokens per sentence:
    sentences = 5 + 5 * 15 = 80, tokens generated = 80 * 20 = 1600 on both sides. The baseline makes
    1 + 5 * 3 = 16 generate calls. Ours forwards at most the minimal count (prompt + generated): the last
    token of a pruned sentence is never fed."""
    text, data = _ok(runs, "search_bench")
    assert "| wall time / search (s)" in text and "CLIP sentences/s" in text
    assert data["sentences"] == {"ours": 80, "baseline": 80}
    tok = data["tokens"]
    assert tok["ours_generated"] == tok["baseline_generated"] == 1600
    assert data["baseline_calls"] == 16
    assert tok["ours_forwarded"] <= tok["minimal"] < tok["baseline_forwarded"]
    assert data["geometry"]["image_tokens"] == 64


def test_search_bench_ragged_tree_forwards_the_rows_still_writing(runs):
    """The ragged tree (a sentence ends at 1 token id in 12): finished rows leave the batch, so the tokens
    forwarded are within 5 % of the minimal count, where forwarding every row to the step's end costs more
    (token counts, not times)."""
    text, data = _ok(runs, "search_bench")
    g = data["ragged"]
    assert "ragged tree" in text and 1 < g["mean_sentence_tokens"] < g["max_new_tokens"]
    assert g["ours_forwarded_over_minimal"] <= 1.05 < g["whole_rows_forwarded_over_minimal"]
    for run in g["runs"]:  # compaction changes which rows go through the model, not what the search writes
        assert run["ours"]["tokens_generated"] == run["ours_whole_rows"]["tokens_generated"]
        assert run["ours"]["tokens_minimal"] == run["ours_whole_rows"]["tokens_minimal"]


def test_scaling_bench_rows(runs):
    """Sentences S with K=5, keep 1 + 2, 20 tokens: (5 + 15 * (S - 1)) * 20 -> S=2: 400, S=4: 1000, S=6: 1600.
    K=2, S=6: 1 row -> 2 (all kept), 2 rows -> 4 (keep 3), then 3 rows -> 6 at depths 3..6:
    (2 + 4 + 4 * 6) * 20 = 600. Image tokens change nothing in the tree: 1600 at 16 and 64."""
    text, data = _ok(runs, "scaling_bench")
    assert "ms/tok" in text and "time per generated token" in text
    by = {(r["axis"], r["candidates"], r["sentences"], r["image_tokens"]): r["tokens_generated"] for r in data["rows"]}
    assert by[("sentences", 5, 2, 64)] == 400 and by[("sentences", 5, 4, 64)] == 1000
    assert by[("candidates", 2, 6, 64)] == 600 and by[("candidates", 5, 6, 64)] == 1600
    assert by[("image_tokens", 5, 6, 16)] == by[("image_tokens", 5, 6, 64)] == 1600


def test_train_bench_trains_the_same_as_plain_trl(runs):
    """4 pairs, batch 1, one epoch -> 4 optimizer steps on both sides. Same seed, data and LoRA: the same losses;
    the first is log 2 = 0.6931 (a fresh LoRA adapter has B = 0, so the policy equals its reference)."""
    text, data = _ok(runs, "train_bench")
    assert "pairs/s" in text and data["pairs"] == 4
    ours, plain = data["runs"]["ours"][0], data["runs"]["plain_trl"][0]
    assert ours["steps"] == plain["steps"] == 4
    assert ours["losses"][0] == pytest.approx(0.693147, abs=1e-5)
    assert ours["losses"] == pytest.approx(plain["losses"], abs=1e-5)
    searched = data["runs"]["ours_searched_reference"][0]  # the reference read from the pairs: the same losses
    assert searched["losses"] == pytest.approx(plain["losses"], abs=1e-5)


def test_round_bench_reads_the_manifest(runs):
    """--quick: 2 prompts, each searched; one DPO step per pair (batch 1, one epoch)."""
    text, data = _ok(runs, "round_bench")
    assert "round_1/generate" in text
    assert list(data["stages"]) == ["round_1/generate", "round_1/train"]
    generate, train = data["stages"]["round_1/generate"], data["stages"]["round_1/train"]
    assert generate["status"] == train["status"] == "done"
    assert generate["numbers"]["prompts_searched"] == 2
    assert train["numbers"]["steps"] == train["numbers"]["pairs"] == generate["numbers"]["pairs"]


def test_gpu_bench_quick_runs_the_gpu_code_on_the_cpu(runs):
    """--quick: both families at tiny geometry on the CPU (same builders, search, DPO and projection code as on a
    GPU). Hours of a round on g GPUs = (12,856 x s per prompt + 12,856 pairs / pairs per s) / g / 3600."""
    text, data = _ok(runs, "gpu_bench")
    assert "h, 8 GPUs" in text and data["device"] == "cpu" and data["round_prompts"] == 12856
    assert [m["family"] for m in data["models"]] == ["llava", "qwen2_5_vl"]
    for m in data["models"]:
        assert set(m["search"]) == {"ours", "official"}  # vLLM only on a GPU run
        assert m["dpo"]["lora"]["r"] == 128 and m["dpo"]["pairs_per_s"] > 0
        for kind, s in m["search"].items():
            assert s["s_per_prompt"] > 0 and s["tokens_per_prompt"] > 0 and s["peak_gpu_gib"] is None
            one = (12856 * s["s_per_prompt"] + 12856 / m["dpo"]["pairs_per_s"]) / 3600
            assert m["round_hours"][kind]["1_gpu"] == pytest.approx(one)
            assert m["round_hours"][kind]["8_gpu"] == pytest.approx(one / 8)
