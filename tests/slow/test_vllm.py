"""search.engine=vllm against search.engine=hf: greedy equality, sampled runs, a trained checkpoint served.

The vLLM side runs in .venv-vllm (`bash scripts/setup.sh --vllm`; the README's test set-up makes it): one
subprocess runs every vLLM stage below, the transformers side runs here. A missing vLLM environment is a
failure, never a skip.

    .venv/bin/python -m pytest tests/slow/test_vllm.py
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from csr_vlm.cli import main
from csr_vlm.config import load_config
from csr_vlm.toyworld.demo import world_overrides

pytestmark = pytest.mark.slow  # a subprocess with vLLM engines

REPO = Path(__file__).resolve().parents[2]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
GREEDY = ["search.temperature=0", "search.num_candidates=2", "search.offer_end=true", "search.keep_top=1",
          "search.keep_bottom=1", "search.filters=[]", "vllm.enforce_eager=true"]


def _tiny(d: Path, out: Path, *extra: str) -> list[str]:
    return [f"model.path={d / 'policy'}", f"reward.clip_path={d / 'clip'}", f"data.prompts={d / 'prompts.jsonl'}",
            f"data.image_root={d}", f"out={out}", "data.max_prompts=4", "search.max_sentences=3",
            "search.max_new_tokens=6", *extra]


def _toy(w: Path, out: Path, *extra: str) -> list[str]:
    """toy-quick.yaml with every world path pointed at `w` (as `csr demo` does), so no local world is read."""
    config = REPO / "configs" / "toy-quick.yaml"
    return ["--config", str(config), *world_overrides(w, load_config(config).loop.dev), f"out={out}",
            "data.max_prompts=8", *extra]


@pytest.fixture(scope="module")
def runs(tiny_llava, quick_world, tmp_path_factory):
    """Every stage of this module: the transformers ones here, the vLLM ones in one .venv-vllm subprocess.
    Returns {name: its output directory}."""
    if not VLLM_PYTHON.is_file():
        pytest.fail(f"{VLLM_PYTHON} is missing: run `bash scripts/setup.sh --vllm` (the README's test set-up does)")
    tmp = tmp_path_factory.mktemp("vllm")
    outs = {name: tmp / name for name in ("loop", "tiny_greedy", "toy_greedy", "tiny_sampled", "round_1", "hf_tiny",
                                          "hf_toy")}
    assert main(["loop", *_tiny(tiny_llava, outs["loop"], "loop.rounds=1", "loop.evaluate=false",
                                "search.num_candidates=3", "train.lora_r=4", "train.lora_alpha=8",
                                "train.learning_rate=1e-2")]) == 0
    sampled = ["search.engine=vllm", "search.num_candidates=4", "search.temperature=1.0", "search.filters=[]",
               "vllm.enforce_eager=true"]
    vllm_stages = [
        _tiny(tiny_llava, outs["tiny_greedy"], *GREEDY, "search.engine=vllm"),
        _toy(quick_world, outs["toy_greedy"], *GREEDY, "search.engine=vllm"),
        _tiny(tiny_llava, outs["tiny_sampled"], *sampled),
        _tiny(tiny_llava, outs["round_1"], *sampled,
              f"model.path={outs['loop'] / 'round_1' / 'train' / 'checkpoint'}"),
    ]
    code = ("import json, sys; from csr_vlm.cli import main; "
            "sys.exit(max(main(['generate', *args]) for args in json.loads(sys.argv[1])))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "VLLM_CACHE_ROOT": str(tmp / "vc")}
    proc = subprocess.run([str(VLLM_PYTHON), "-c", code, json.dumps(vllm_stages)], capture_output=True, text=True,
                          env=env, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert main(["generate", *_tiny(tiny_llava, outs["hf_tiny"], *GREEDY)]) == 0
    assert main(["generate", *_toy(quick_world, outs["hf_toy"], *GREEDY)]) == 0
    return outs


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.mark.parametrize("vllm_run, hf_run", [("tiny_greedy", "hf_tiny"), ("toy_greedy", "hf_toy")])
def test_greedy_vllm_equals_hf(runs, vllm_run, hf_run):
    """Temperature 0, one greedy candidate plus "stop here" (EOS with its raw log-prob) per answer, keep 1 + 1: the
    same complete answers, sentence for sentence, with R_T within 1e-4 (float32) and the same chosen/rejected."""
    ours, theirs = _lines(runs[vllm_run] / "candidates.jsonl"), _lines(runs[hf_run] / "candidates.jsonl")
    assert [c["id"] for c in ours] == [c["id"] for c in theirs] and ours
    for a, b in zip(ours, theirs):
        assert [x["text"] for x in a["answers"]] == [x["text"] for x in b["answers"]], a["id"]
        for x, y in zip(a["answers"], b["answers"]):
            assert [s["text"] for s in x["sentences"]] == [s["text"] for s in y["sentences"]]
            assert [s["r_t"] for s in x["sentences"]] == pytest.approx([s["r_t"] for s in y["sentences"]], abs=1e-4)
        assert (a["chosen"], a["rejected"]) == (b["chosen"], b["rejected"])


def test_sampled_vllm_run_gives_valid_pairs_and_reports_the_engine(runs):
    """4 prompts, 4 samples per answer at temperature 1: every prompt searched, every pair in TRL's format,
    and stats.json["engine"] has the prefix-cache hit rate and tokens/s (later depths reuse the prompt's blocks)."""
    out = runs["tiny_sampled"]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["counts"]["prompts_searched"] == 4
    pairs = _lines(out / "pairs.jsonl")
    assert len(pairs) + len([s for s in _lines(out / "skipped.jsonl") if "answers" in s]) == 4 and pairs
    for p in pairs:
        assert isinstance(p["prompt"], str) and p["level"] == "response" and p["ref_tokens"]["chosen"]
        assert p["margin"] == pytest.approx(p["chosen_reward"] - p["rejected_reward"]) and p["margin"] >= 0
    engine = stats["engine"]
    assert engine["engine"] == "vllm" and engine["requests"] > 4
    assert 0 < engine["prefix_cache_hit_rate"] < 1 and engine["generated_tokens_per_s"] > 0


def test_the_round_1_checkpoint_is_served_by_vllm(runs):
    """csr train writes transformers-5 weight names; the engine converts them once beside the checkpoint."""
    ckpt = runs["loop"] / "round_1" / "train" / "checkpoint"
    converted = ckpt.with_name("checkpoint-vllm")
    assert (converted / "csr_source.json").is_file() and (converted / "config.json").is_file()
    from safetensors import safe_open

    with safe_open(str(next(converted.glob("*.safetensors"))), "pt") as fh:
        assert any(k.startswith("vision_tower.vision_model.") or ".vision_tower.vision_model." in k for k in fh.keys())
    stats = json.loads((runs["round_1"] / "stats.json").read_text())
    assert stats["counts"]["prompts_searched"] == 4 and stats["engine"]["engine"] == "vllm"


def test_engine_bench_quick_builds_the_same_greedy_tree_on_both_engines(quick_world, tmp_path):
    """bench/engine_bench.py --quick (greedy only): the two engines generate the same tokens (the same tree), and
    vLLM's later depths reuse the prompt's cached blocks."""
    import sys

    out = tmp_path / "engine_bench.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "engine_bench.py"), "--quick", "--world",
                           str(quick_world), "--out", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {(r["mode"], r["engine"]): r for r in json.loads(out.read_text())["rows"]}
    assert rows[("greedy", "hf")]["tokens_generated"] == rows[("greedy", "vllm")]["tokens_generated"] > 0
    assert rows[("greedy", "hf")]["pairs"] == rows[("greedy", "vllm")]["pairs"]
    assert rows[("greedy", "vllm")]["prefix_cache_hit_rate"] > 0.5
    assert "| greedy   | vllm" in proc.stdout
