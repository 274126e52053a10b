"""`csr generate` end to end: both families and modes, bad inputs, skip reasons, resume after a kill, 2 ranks, TRL DPO.

    .venv/bin/python -m pytest tests/integration/test_generate.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import assert_close
from PIL import Image

from csr_vlm.cli import main
from csr_vlm.sentence_pairs import ChatText

SEARCH = ["search.num_candidates=3", "search.keep_top=1", "search.keep_bottom=1", "search.max_sentences=2",
          "search.max_new_tokens=4", "search.filters=[]"]
N_PROMPTS = 20


def _args(d: Path, out: Path, *extra: str, prompts: Path | None = None) -> list[str]:
    return [f"model.path={d / 'policy'}", f"reward.clip_path={d / 'clip'}",
            f"data.prompts={prompts or d / 'prompts.jsonl'}", f"data.image_root={d}", f"out={out}", *SEARCH, *extra]


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _outputs(out: Path) -> dict[str, str]:
    return {name: (out / name).read_text() for name in ("candidates.jsonl", "pairs.jsonl", "skipped.jsonl")}


@pytest.fixture
def one_thread():
    """Runs compared across processes use one intra-op thread everywhere (torchrun sets OMP_NUM_THREADS=1)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("mode", ["paper", "official"])
def test_generate_writes_every_output(tiny_family, tmp_path, mode):
    config = "configs/tiny-gemma3.yaml" if "gemma3" in tiny_family.name else "configs/tiny.yaml"
    out = tmp_path / "gen"
    assert main(["generate", "--config", config, *_args(tiny_family, out, f"search.mode={mode}",
                                                         "data.max_prompts=2")]) == 0
    assert {p.name for p in out.iterdir()} >= {"candidates.jsonl", "pairs.jsonl", "skipped.jsonl", "stats.json",
                                               "config.yaml", "DONE"}
    cands = _lines(out / "candidates.jsonl")
    assert [c["id"] for c in cands] == ["000", "001"] and all(c["mode"] == mode for c in cands)
    for c in cands:
        assert set(c) >= {"id", "image", "prompt", "round", "answers", "chosen", "rejected"}
        assert all(set(a) >= {"text", "reward", "ended", "sentences"} for a in c["answers"])
        assert ("tree" in c) == (mode == "official")
    stats = json.loads((out / "stats.json").read_text())
    from transformers import AutoProcessor

    text = ChatText(AutoProcessor.from_pretrained(tiny_family / "policy"))
    assert stats["counts"]["prompts_searched"] == 2
    tokens = stats["tokens"]
    assert tokens["minimal"] == tokens["prompt"] + tokens["generated"]
    assert set(stats["time_s"]) >= {"prefill", "expand", "score"}
    pairs = _lines(out / "pairs.jsonl")
    assert len(pairs) + len(_lines(out / "skipped.jsonl")) == 2
    for p in pairs:
        assert isinstance(p["prompt"], str) and p["level"] == "response" and p["question"]  # curate.pair_tokens:
        for side in ("chosen", "rejected"):  # searched, the rows are the searched tokens' text
            assert p[side] == text.continuation([], p["ref_tokens"][side])
        assert p["margin"] == pytest.approx(p["chosen_reward"] - p["rejected_reward"]) and p["margin"] >= 0
        assert Path(p["images"][0]).is_file() and p["round"] == 1


def test_bad_inputs_are_skipped_with_a_reason(tiny_llava, tmp_path):
    img = tmp_path / "img"
    img.mkdir()
    base = Image.open(tiny_llava / "images" / "000.png").convert("RGB")
    base.save(img / "ok.png")
    base.convert("L").save(img / "gray.png")
    base.convert("CMYK").save(img / "cmyk.jpg")
    base.convert("RGBA").save(img / "rgba.png")
    base.convert("P").save(img / "palette.png")
    Image.new("RGB", (1000, 10)).save(img / "extreme.png")
    (img / "empty.png").write_bytes(b"")
    (img / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    rows = [{"id": n, "image": f"{n}.{'jpg' if n == 'cmyk' else 'png'}", "prompt": "Describe this image."}
            for n in ("ok", "gray", "cmyk", "rgba", "palette", "extreme", "empty", "corrupt", "missing")]
    lines = [json.dumps(r) for r in rows]
    lines += ['{"id": "broken", "image": ', json.dumps({"id": "blank", "image": "ok.png", "prompt": "  "}),
              json.dumps({"id": "ok", "image": "ok.png", "prompt": "Again."})]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(lines) + "\n")
    out = tmp_path / "gen"
    args = _args(tiny_llava, out, "search.max_sentences=1", "search.num_candidates=2", prompts=prompts)
    assert main(["generate", *args, f"data.image_root={img}"]) == 0
    searched = [c["id"] for c in _lines(out / "candidates.jsonl")]
    assert searched == ["ok", "gray", "cmyk", "rgba", "palette"]
    reasons = {(s["id"] or "line"): s["reason"] for s in _lines(out / "skipped.jsonl")}
    assert reasons["extreme"].startswith("image has an extreme size")
    assert reasons["empty"].startswith("image file is empty")
    assert reasons["corrupt"].startswith("image cannot be read")
    assert reasons["missing"].startswith("image not found")
    assert reasons["blank"] == "empty prompt" and reasons["ok"] == "duplicate id"
    assert reasons["line"].startswith("malformed JSON line")
    stats = json.loads((out / "stats.json").read_text())
    assert stats["counts"]["inputs"] == 12 and stats["skipped_by_reason"]["image not found"] == 1


@pytest.mark.parametrize("extra, reason", [
    (["curate.min_margin=1000000"], "margin below curate.min_margin"),
    (["search.filters=[short]", "search.min_sentence_chars=1000"], "no complete answer"),
    (["search.num_candidates=1"], "equal texts"),
])
def test_prompts_without_a_pair_are_logged(tiny_llava, tmp_path, extra, reason):
    out = tmp_path / "gen"
    # no pair at all: the stage fails (exit 2, no DONE), its skips written for the user to read
    assert main(["generate", *_args(tiny_llava, out, "search.max_sentences=1", "data.max_prompts=2", *extra)]) == 2
    assert not (out / "DONE").exists()
    skipped = _lines(out / "skipped.jsonl")
    assert [s["id"] for s in skipped] == ["000", "001"] and all(s["reason"].startswith(reason) for s in skipped)
    assert _lines(out / "pairs.jsonl") == []


def test_balance_yes_no_keeps_as_many_yes_as_no_pairs():
    """Yes/no pairs choosing "yes" with margins 3, 1, 2, one choosing "no" (margin 5), one caption pair.
    min(3 yes, 1 no) = 1 per side: "yes" keeps its largest margin (3) and drops 1 and 2; "no" and the caption
    pair stay; order is kept, and each drop gets a reason."""
    from csr_vlm.curate import balance_yes_no

    def pair(pid, question, chosen, margin):
        msg = lambda role, text: [{"role": role, "content": [{"type": "text", "text": text}]}]  # noqa: E731
        return {"id": pid, "prompt": msg("user", question), "chosen": msg("assistant", chosen),
                "rejected": msg("assistant", "no ." if chosen == "yes ." else "yes ."), "margin": margin}

    ask = "Is there a dog in the image? Please answer yes or no."
    pairs = [pair("y3", ask, "yes .", 3.0), pair("cap", "Describe the image.", "a dog .", 0.5),
             pair("y1", ask, "yes .", 1.0), pair("n5", ask, "no .", 5.0), pair("y2", ask, "Yes, there is.", 2.0)]
    questions = {"y3", "y1", "n5", "y2"}  # the records' task, read with the prompts
    kept, dropped = balance_yes_no(pairs, questions)
    assert [p["id"] for p in kept] == ["y3", "cap", "n5"]
    assert [d["id"] for d in dropped] == ["y1", "y2"]
    assert dropped[0]["reason"] == "curate.balance_yes_no (chosen 'yes': 3 pairs, the other answer 1)"
    kept, dropped = balance_yes_no(pairs[:2], questions)  # no pair chooses "no": min is 0, so the "yes" one goes too
    assert [p["id"] for p in kept] == ["cap"] and [d["id"] for d in dropped] == ["y3"]


def test_unanimous_yes_no_question_pairs_with_the_other_verdict():
    """A yes/no question whose 2 sampled answers both say "yes." (no sampled pair), tau 60. First sentence
    R_I 70 > tau: CLIP backs "yes", so chosen = the sampled "yes.", rejected = the written "No." with R_I
    mirrored, 2 * 60 - 70 = 50. R_I 55 < tau: the written "No." is chosen (R_I 65), "yes." rejected. The
    unsampled side has no reward, so the margin is None. A caption prompt, mixed verdicts, R_I exactly
    tau, no tau or the option off give no such pair. With lam 0 the likelihood backs the sampled "yes." even at
    R_I 55, and without R_I the pair still forms (rejected R_I None)."""
    from csr_vlm.curate import other_verdict_pair, shard_line
    from csr_vlm.data import PromptRecord
    from csr_vlm.schema.generation import CurateConfig, RewardConfig
    from csr_vlm.search.types import Answer, SearchResult, Sentence

    def result(r_i, texts=("yes.", "yes.")):
        answers = [Answer(sentences=[Sentence(text=t, r_t=-0.1, r_i=r_i, r=1.0)], reward=1.0, ended=True, text=t)
                   for t in texts]
        return SearchResult(mode="paper", answers=answers, chosen=0, rejected=1, stats={})

    ask = PromptRecord.of("q", "a.png", "Is there a dog in the image? Please answer yes or no.")
    words = {"yes": "Yes.", "no": "No."}
    backed = other_verdict_pair(ask, 1, result(70.0), words, 60.0, 0.9)
    assert backed["chosen"][0]["content"][0]["text"] == "yes." and backed["rejected"][0]["content"][0]["text"] == "No."
    assert (backed["written"], backed["rejected_r_i"], backed["chosen_r_i"]) == ("rejected", 50.0, 70.0)
    assert backed["margin"] is None
    doubted = other_verdict_pair(ask, 1, result(55.0), words, 60.0, 0.9)
    assert doubted["chosen"][0]["content"][0]["text"] == "No."
    assert doubted["rejected"][0]["content"][0]["text"] == "yes."
    assert (doubted["written"], doubted["chosen_r_i"], doubted["chosen_reward"]) == ("chosen", 65.0, None)
    caption = PromptRecord.of("c", "a.png", "Describe the image.")
    assert other_verdict_pair(caption, 1, result(70.0), words, 60.0, 0.9) is None
    assert other_verdict_pair(ask, 1, result(70.0, ("yes.", "no.")), words, 60.0, 0.9) is None
    assert other_verdict_pair(ask, 1, result(60.0), words, 60.0, 0.9) is None
    assert other_verdict_pair(ask, 1, result(70.0), words, None, 0.9) is None
    assert other_verdict_pair(ask, 1, result(55.0), words, 60.0, 0.0)["written"] == "rejected"  # lam 0: likelihood
    assert other_verdict_pair(ask, 1, result(None), words, None, 0.0)["rejected_r_i"] is None
    line = shard_line(ask, 1, result(70.0), CurateConfig(yes_no_answers=words), RewardConfig(tau=60.0))
    assert line["skip"] is None and line["pair"]["written"] == "rejected"
    line = shard_line(ask, 1, result(70.0), CurateConfig(), RewardConfig(tau=60.0))
    assert line["pair"] is None and line["skip"]["reason"].startswith("equal texts")


def _answer(text, r_is, repeats=(), reward=1.0, r_t=-0.1):
    """A complete answer: one Sentence per ". "-separated part (R_I from r_is, each R_T r_t), then the end step."""
    from csr_vlm.search.types import Answer, Sentence

    sentences = [Sentence(text=t, r_t=r_t, r_i=r, r=0.0, repeat=i in repeats)
                 for i, (t, r) in enumerate(zip(text.split(". "), r_is))] if text else []
    sentences.append(Sentence(text="", r_t=0.0, r_i=None, r=0.0, end=True))
    return Answer(sentences=sentences, reward=reward, ended=True, text=text)


def test_curate_rejected_picks_the_lowest_hardest_or_likeliest_doubted_answer():
    """tau 60; chosen "a dog. a cat." (reward 2.0). The others, with R_I per sentence, reward and R_T per sentence:
    A "a dog. a bird. a car. a hat." (80, 40, 40, 40; -3.0; -2.0 each, summed -8.0: the sampling tail, lowest),
    B "a dog. a fox." (80, 58; 1.5; -0.5 each, -1.0), C "a dog. a bird." (80, 50; 1.0; -0.1 each, -0.2),
    D "a dog." (80; 1.8; -0.05: no sentence below 60, not doubted), E "" (says nothing).
    lowest -> A (the search's own); hardest -> the highest reward among A, B, C -> B (1.5; D's 1.8 is not
    doubted); likeliest -> the highest summed R_T among A, B, C -> C (-0.2 > -1.0 > -8.0). With only D beside
    the chosen answer nothing is doubted: the search's own rejected (D) stays, and curate.require_doubt drops it."""
    from csr_vlm.curate import shard_line
    from csr_vlm.data import PromptRecord
    from csr_vlm.schema.generation import CurateConfig, RewardConfig
    from csr_vlm.search.types import SearchResult

    answers = [_answer("a dog. a cat.", [80.0, 75.0], reward=2.0),
               _answer("a dog. a bird. a car. a hat.", [80.0, 40.0, 40.0, 40.0], reward=-3.0, r_t=-2.0),
               _answer("a dog. a fox.", [80.0, 58.0], reward=1.5, r_t=-0.5),
               _answer("a dog. a bird.", [80.0, 50.0], reward=1.0, r_t=-0.1),
               _answer("a dog.", [80.0], reward=1.8, r_t=-0.05),
               _answer("", [], reward=0.0)]
    caption = PromptRecord.of("c", "a.png", "Describe the image.")
    result = SearchResult(mode="paper", answers=answers, chosen=0, rejected=1, stats={})
    for rule, expected in {"lowest": 1, "hardest": 2, "likeliest": 3}.items():
        line = shard_line(caption, 1, result, CurateConfig(rejected=rule), RewardConfig(tau=60.0))
        assert line["candidate"]["rejected"] == expected
        assert line["pair"]["rejected"][0]["content"][0]["text"] == answers[expected].text
    undoubted = SearchResult(mode="paper", answers=answers[:1] + answers[4:5], chosen=0, rejected=1, stats={})
    line = shard_line(caption, 1, undoubted, CurateConfig(rejected="hardest"), RewardConfig(tau=60.0))
    assert line["pair"]["rejected"][0]["content"][0]["text"] == "a dog."
    line = shard_line(caption, 1, undoubted, CurateConfig(rejected="hardest", require_doubt=True),
                      RewardConfig(tau=60.0))
    assert line["pair"] is None and line["skip"]["reason"].startswith("curate.require_doubt")


def test_require_doubt_keeps_only_pairs_whose_rejected_answer_the_reward_doubts():
    """tau 60. Chosen "a dog. a cat." (R_I 80, 75) against three rejected answers: "a dog." (R_I 80: CLIP
    finds every sentence true, the pair is a longer true caption against a shorter one), "a dog. a bird."
    (R_I 80, 50: 50 < 60, doubted), "a dog. a dog." (R_I 80, 80, the second a repeat: doubted). The end step
    (R_I None) is never judged. With curate.require_doubt the first pair is skipped with its reason and
    the other two kept; with it off all three are kept."""
    from csr_vlm.curate import shard_line
    from csr_vlm.data import PromptRecord
    from csr_vlm.schema.generation import CurateConfig, RewardConfig
    from csr_vlm.search.types import SearchResult

    chosen = _answer("a dog. a cat.", [80.0, 75.0], reward=2.0)
    rejected = {"true": _answer("a dog.", [80.0]), "untrue": _answer("a dog. a bird.", [80.0, 50.0]),
                "repeat": _answer("a dog. a dog.", [80.0, 80.0], repeats=(1,))}
    caption = PromptRecord.of("c", "a.png", "Describe the image.")
    kept = {}
    for name, worse in rejected.items():
        result = SearchResult(mode="paper", answers=[chosen, worse], chosen=0, rejected=1, stats={})
        on = shard_line(caption, 1, result, CurateConfig(require_doubt=True), RewardConfig(tau=60.0))
        off = shard_line(caption, 1, result, CurateConfig(), RewardConfig(tau=60.0))
        assert off["pair"] is not None
        kept[name] = on["pair"] is not None
        if not kept[name]:
            assert on["skip"]["reason"].startswith("curate.require_doubt: no sentence of the rejected answer")
    assert kept == {"true": False, "untrue": True, "repeat": True}


def test_yes_no_anchor_replays_the_likeliest_answer_on_both_sides():
    """A yes/no question sampled "yes." (R_T -0.2), "no." (-1.5) and "no. yes." (-0.4 and -0.3, summed -0.7):
    the likeliest is "yes." (-0.2 > -0.7 > -1.5), written as both chosen and rejected, margin 0, anchor true,
    whatever the rewards or CLIP say (the judged pair would have chosen "no.", reward 2.0). A caption is paired
    as always. A question whose only answer says nothing is skipped with the option's reason."""
    from csr_vlm.curate import balance_yes_no, shard_line
    from csr_vlm.data import PromptRecord
    from csr_vlm.schema.generation import CurateConfig, RewardConfig
    from csr_vlm.search.types import SearchResult

    ask = PromptRecord.of("q", "a.png", "Is there a dog in the image? Please answer yes or no.")
    answers = [_answer("no.", [50.0], reward=2.0, r_t=-1.5), _answer("yes.", [70.0], reward=0.5, r_t=-0.2)]
    answers.append(_answer("no. yes.", [50.0, 70.0], reward=0.1))
    answers[2].sentences[0].r_t, answers[2].sentences[1].r_t = -0.4, -0.3
    result = SearchResult(mode="paper", answers=answers, chosen=0, rejected=2, stats={})
    line = shard_line(ask, 1, result, CurateConfig(yes_no_anchor=True), RewardConfig(tau=60.0))
    pair = line["pair"]
    assert pair["chosen"] == pair["rejected"] == [{"role": "assistant", "content": [{"type": "text", "text": "yes."}]}]
    assert (pair["margin"], pair["anchor"], line["skip"]) == (0.0, True, None)
    assert balance_yes_no([pair], {"q"}) == ([pair], [])  # an anchor is not a verdict to balance
    judged = shard_line(ask, 1, result, CurateConfig(), RewardConfig(tau=60.0))["pair"]
    assert judged["chosen"][0]["content"][0]["text"] == "no." and "anchor" not in judged
    caption = PromptRecord.of("c", "a.png", "Describe the image.")
    described = SearchResult(mode="paper", answers=[_answer("a dog.", [80.0], reward=1.0),
                                                    _answer("a cat.", [40.0], reward=-1.0)], chosen=0, rejected=1,
                             stats={})
    assert shard_line(caption, 1, described, CurateConfig(yes_no_anchor=True),
                      RewardConfig(tau=60.0))["pair"]["rejected"][0][
        "content"][0]["text"] == "a cat."
    silent = SearchResult(mode="paper", answers=[_answer("", [], reward=0.0)], chosen=None, rejected=None, stats={})
    skipped = shard_line(ask, 1, silent, CurateConfig(yes_no_anchor=True), RewardConfig(tau=60.0))
    assert skipped["pair"] is None and skipped["skip"]["reason"] == "curate.yes_no_anchor: no answer says something"


@pytest.mark.parametrize("key", ["model.path", "reward.clip_path"])
def test_wrong_model_path_fails_before_any_work(tiny_llava, tmp_path, capsys, key):
    out = tmp_path / "gen"
    assert main(["generate", *_args(tiny_llava, out), f"{key}={tmp_path / 'nowhere'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and key in err and "Traceback" not in err
    assert not (out / "shards").exists()


@pytest.fixture(scope="module")
def many_prompts(tiny_llava, tmp_path_factory):
    """20 prompts over the 8 tiny images."""
    path = tmp_path_factory.mktemp("many") / "prompts.jsonl"
    rows = [{"id": f"p{i:02d}", "image": f"images/{i % 8:03d}.png", "prompt": "Describe this image."}
            for i in range(N_PROMPTS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def reference_run(tiny_llava, many_prompts, tmp_path_factory):
    """An uninterrupted single-process run (one thread) that the resumed and the 2-rank runs must equal."""
    import torch

    out = tmp_path_factory.mktemp("reference") / "gen"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["generate", *_args(tiny_llava, out, prompts=many_prompts)]) == 0
    finally:
        torch.set_num_threads(before)
    return out


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[2] / "src")
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}


@pytest.mark.slow
def test_resume_after_kill_equals_an_uninterrupted_run(tiny_llava, many_prompts, reference_run, tmp_path):
    out = tmp_path / "gen"
    cmd = [sys.executable, "-m", "csr_vlm", "generate", *_args(tiny_llava, out, prompts=many_prompts)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shard = out / "shards" / "rank-0.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if shard.exists() and shard.read_bytes().count(b"\n") >= 3:
            proc.kill()
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -9, "the run must be killed mid-way"
    done_before = shard.read_bytes().count(b"\n")
    assert 3 <= done_before < N_PROMPTS and not (out / "DONE").exists()
    with shard.open("ab") as fh:
        fh.write(b'{"id": "p19", "candidate": {"id"')  # what a kill inside a write leaves behind
    result = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert _outputs(out) == _outputs(reference_run)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["prompts_this_run"] == N_PROMPTS - done_before


@pytest.mark.slow
def test_two_ranks_equal_one_process(tiny_llava, many_prompts, reference_run, tmp_path):
    out = tmp_path / "gen"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "csr_vlm",
           "generate", *_args(tiny_llava, out, prompts=many_prompts)]
    result = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in (out / "shards").glob("*.jsonl")) == ["rank-0.jsonl", "rank-1.jsonl"]
    assert len(_lines(out / "shards" / "rank-1.jsonl")) == N_PROMPTS // 2
    assert _outputs(out) == _outputs(reference_run)
    assert json.loads((out / "stats.json").read_text())["world_size"] == 2


def test_pairs_load_with_datasets_and_train_with_trl(tiny_llava, reference_run, tmp_path):
    """pairs.jsonl -> datasets.load_dataset("json") -> TRL DPOTrainer, 2 steps with LoRA on the tiny LLaVA."""
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import DPOConfig, DPOTrainer

    ds = datasets.load_dataset("json", data_files=str(reference_run / "pairs.jsonl"), split="train")
    assert len(ds) >= 4 and {"images", "prompt", "chosen", "rejected", "margin"} <= set(ds.column_names)
    ds = ds.select_columns(["images", "prompt", "chosen", "rejected"])
    ds = ds.cast_column("images", datasets.List(datasets.Image()))
    model = AutoModelForImageTextToText.from_pretrained(tiny_llava / "policy")
    processor = AutoProcessor.from_pretrained(tiny_llava / "policy")
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=2, per_device_train_batch_size=2, bf16=False,
                     max_length=256, report_to="none", save_strategy="no", logging_steps=1, learning_rate=1e-3,
                     gradient_checkpointing=False)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=processor, peft_config=lora)
    trainer.train()
    assert trainer.state.global_step == 2
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(torch.isfinite(torch.tensor(x)) for x in losses)
    shutil.rmtree(tmp_path / "dpo", ignore_errors=True)


def test_centred_reward_with_estimated_tau_and_config_guard(tiny_llava, tmp_path, capsys):
    """normalize=center without tau: tau comes from reward.tau_calibration (relative images resolve beside the
    file) and every sentence gets R = 0.9 * (R_I - tau) / 10 + 0.1 * R_T. Re-running into the same out with
    another seed is refused instead of mixing two runs."""
    from csr_vlm.calibration import estimate_tau
    from csr_vlm.models import ClipScorer

    (tmp_path / "images").mkdir()
    for i in (0, 1):
        shutil.copy(tiny_llava / "images" / f"00{i}.png", tmp_path / "images" / f"00{i}.png")
    calib = [{"image": f"images/00{i}.png", "text": t, "present": p} for i in (0, 1)
             for t, p in (("a red square.", True), ("a blue square.", True), ("a dog.", False))]
    (tmp_path / "calib.jsonl").write_text("".join(json.dumps(r) + "\n" for r in calib))
    out = tmp_path / "gen"
    args = _args(tiny_llava, out, "reward.normalize=center", f"reward.tau_calibration={tmp_path / 'calib.jsonl'}",
                 "data.max_prompts=2")
    assert main(["generate", *args]) == 0
    for rec in calib:
        rec["image"] = str(tmp_path / rec["image"])
    tau, _ = estimate_tau(ClipScorer(str(tiny_llava / "clip")), calib, sd=3.0)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["tau"] == pytest.approx(tau) and stats["tau_calibration"]["n_true"] == 4
    for cand in _lines(out / "candidates.jsonl"):
        for s in (s for a in cand["answers"] for s in a["sentences"]):
            assert s["r"] == pytest.approx(0.9 * (s["r_i"] - tau) / 10 + 0.1 * s["r_t"], abs=1e-6)
    capsys.readouterr()
    assert main(["generate", *args, "seed=5"]) == 2
    assert "different config" in capsys.readouterr().err


def test_official_prompt_list_with_image_prefix(tiny_llava, tmp_path):
    """The official CSR JSON list ({id, image, input} with <image> markers) and data.image_prefix."""
    (tmp_path / "COCO_train2014_000.png").write_bytes((tiny_llava / "images" / "000.png").read_bytes())
    prompts = tmp_path / "csr.json"
    prompts.write_text(json.dumps([{"id": "7", "image": "000.png", "input": "<image>\nDescribe the image."}]))
    out = tmp_path / "gen"
    args = _args(tiny_llava, out, "search.max_sentences=1", prompts=prompts)
    assert main(["generate", *args, f"data.image_root={tmp_path}", "data.image_prefix=COCO_train2014_"]) == 0
    (cand,) = _lines(out / "candidates.jsonl")
    assert cand["prompt"] == "Describe the image." and cand["image"].endswith("COCO_train2014_000.png")


def test_prompt_batches_equal_one_at_a_time(tiny_llava, many_prompts, reference_run, tmp_path, one_thread,
                                            monkeypatch):
    """search.prompt_batch_size=8 over 20 prompts (chunks of 8, 8, 4): the same candidates, pairs and skips as
    the one-at-a-time reference run, floats within 1e-5 (the wider batch rounds differently), and the same
    minimal token count."""
    import csr_vlm.search.driver as driver

    sizes, batched = [], driver.search_prompts
    def spy(engine, scorer, images, *rest):
        sizes.append(len(images))
        return batched(engine, scorer, images, *rest)

    monkeypatch.setattr(driver, "search_prompts", spy)
    out = tmp_path / "gen"
    assert main(["generate", *_args(tiny_llava, out, "search.prompt_batch_size=8", prompts=many_prompts)]) == 0
    assert sizes == [8, 8, 4]
    for name in ("candidates.jsonl", "pairs.jsonl", "skipped.jsonl"):
        ours, ref = _lines(out / name), _lines(reference_run / name)
        assert [c["id"] for c in ours] == [c["id"] for c in ref]
        assert_close(ours, ref, name)
    assert len(_lines(out / "pairs.jsonl")) >= 4
    stats, ref = (json.loads((d / "stats.json").read_text())["tokens"] for d in (out, reference_run))
    assert stats["minimal"] == ref["minimal"] and stats["forwarded"] >= ref["forwarded"]


def test_max_prompts_and_max_mix_prompts_cut_each_file_then_join(tmp_path):
    """Captions c0..c3 and questions q0..q2 plus a question reusing id c1: max_prompts=3 keeps c0 c1 c2,
    max_mix_prompts=2 keeps the first two valid mix lines (q0, c1), c1 is skipped as a duplicate id, so the
    round searches c0 c1 c2 q0 (4 prompts, 1 skip)."""
    from csr_vlm.config import load_config
    from csr_vlm.generate import _read_all_prompts

    def write(name, ids):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"id": i, "image": "x.png", "prompt": "p"}) + "\n" for i in ids))
        return path

    captions, mix = write("c.jsonl", ["c0", "c1", "c2", "c3"]), write("q.jsonl", ["q0", "c1", "q1", "q2"])
    cfg = load_config(None, [f"data.prompts={captions}", f"data.mix_prompts={mix}", "data.max_prompts=3",
                             "data.max_mix_prompts=2"])
    records, skipped = _read_all_prompts(cfg)
    assert [r.id for r in records] == ["c0", "c1", "c2", "q0"]
    assert [s["id"] for s in skipped] == ["c1"]
    cfg = load_config(None, [f"data.prompts={captions}", f"data.mix_prompts={mix}"])
    assert len(_read_all_prompts(cfg)[0]) == 4 + 3
