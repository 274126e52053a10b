"""Every model family through the real code path: cached search == generate, the stages, TRL's log-probs, the guard.

Families: LLaVA-1.5, Gemma 3, Qwen2.5-VL, Qwen3-VL, Idefics3 (SmolVLM), LLaVA-NeXT, each a tiny random-weight
model built from its config (models/tiny/), saved and loaded back with the Auto classes.

    .venv/bin/python -m pytest tests/integration/test_families.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from csr_vlm.cli import main
from csr_vlm.config import ModelConfig, SearchConfig
from csr_vlm.models import load_policy
from csr_vlm.models.tiny import FAMILIES, REAL_VOCAB, build_tiny
from csr_vlm.search import hf_decode
from csr_vlm.search.hf_decode import RowBlock, TokenRules, concat_states, expand, expand_groups, prefill
from csr_vlm.search.types import TokenCounter

N_TOKENS = 24
PROMPTS = ["Describe this image.", "What do you see happening in this image, in a few words?"]


@pytest.fixture(scope="module")
def family_dir(tmp_path_factory):
    """family -> a built tiny model directory (policy/, clip/, images/, prompts.jsonl), each built once;
    Qwen2.5-VL with Qwen's real vocabulary and its 151,936 output rows (Qwen3-VL shares that tokenizer; it keeps
    the tiny one here, which halves the suite's real-vocabulary time: every test below runs on both)."""
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build_tiny(tmp_path_factory.mktemp(family), family=family, seed=0,
                                       real_vocab=family == REAL_VOCAB[0])
        return built[family]

    return get


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _images(d: Path) -> list:
    first = Image.open(d / "images" / "000.png").convert("RGB")
    second = Image.open(d / "images" / "001.png").convert("RGB").resize((80, 60))  # not square: other grids / tiles
    return [first, second]


def _reference(policy, image, prompt: str, suppress: list[int]):
    """model.generate from scratch (greedy, the same suppressed tokens) and, for its tokens, the mean raw log-prob
    from one full uncached forward over prompt + answer."""
    batch = policy.encode([image], [prompt])
    with torch.inference_mode():
        out = policy.model.generate(**batch, do_sample=False, max_new_tokens=N_TOKENS, min_new_tokens=N_TOKENS,
                                    suppress_tokens=suppress, pad_token_id=policy.tokenizer.pad_token_id)
        tokens = out[0, batch["input_ids"].shape[1]:].tolist()
        full = dict(batch)
        extra = torch.tensor([tokens[:-1]])
        for key in hf_decode.PER_TOKEN_KEYS:
            if key in full:
                fill = extra if key == "input_ids" else torch.ones_like(extra) if key == "attention_mask" else \
                    torch.zeros_like(extra)
                full[key] = torch.cat([full[key], fill], dim=1)
        logp = torch.log_softmax(policy.model(**full).logits[0, -len(tokens):].float(), dim=-1)
    return tokens, logp[torch.arange(len(tokens)), tokens].mean().item()


def _greedy(num: int = 1) -> SearchConfig:
    return SearchConfig(sampler="diverse_beam", num_candidates=num, diversity_penalty=0.0, max_new_tokens=N_TOKENS)


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_search_equals_generate_alone_and_batched(family_dir, family):
    """24 greedy tokens (EOS suppressed, no sentence stops) of two prompts of different lengths on two images:
    the cached search's tokens equal model.generate's from scratch, token for token, and R_T (mean raw log-prob)
    equals the one recomputed by a full forward to 1e-5, for each prompt alone and for both batched together."""
    d = family_dir(family)
    policy = load_policy(ModelConfig(path=str(d / "policy"), device="cpu", dtype="float32"))
    suppress = sorted(set(policy.suppressed_ids()) | set(policy.eos_ids))
    images = _images(d)
    refs = [_reference(policy, im, p, suppress) for im, p in zip(images, PROMPTS)]
    for (image, prompt), (tokens, r_t) in zip(zip(images, PROMPTS), refs):
        (cand,) = expand(policy, prefill(policy, image, prompt, TokenCounter()), _greedy(), TokenRules([], [],
                                                                                                       suppress), None,
                         TokenCounter())
        assert cand.tokens == tokens, f"{family}: first difference at {_first_difference(cand.tokens, tokens)}"
        assert sum(cand.logprobs) / len(cand.logprobs) == pytest.approx(r_t, abs=1e-5)
    state = concat_states([prefill(policy, im, p, TokenCounter()) for im, p in zip(images, PROMPTS)])
    blocks = [RowBlock(1, None, TokenCounter()), RowBlock(1, None, TokenCounter())]
    batched = expand_groups(policy, state, _greedy(), TokenRules([], [], suppress), blocks)
    for cand, (tokens, r_t) in zip(batched, refs):
        assert cand.tokens == tokens, f"{family} batched: first difference at {_first_difference(cand.tokens, tokens)}"
        assert sum(cand.logprobs) / len(cand.logprobs) == pytest.approx(r_t, abs=1e-5)


def _first_difference(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


@pytest.mark.parametrize("family", FAMILIES)
def test_look_ahead_sentence_ends_keep_the_cached_search_exact(family_dir, family):
    """Greedy sentences cut by look-ahead ends (half the tokens generate writes end in a "delimiter", a third start
    with a "space"), decoded sentence after sentence from the cache for two prompts batched: every confirmed end feeds
    a look-ahead token whose cache column is then dropped, yet the sentences joined are generate's 24 greedy tokens
    and their mean log-prob is a full forward's (1e-5)."""
    from csr_vlm.search.boundaries import SPACED, SentenceBoundaries

    d = family_dir(family)
    policy = load_policy(ModelConfig(path=str(d / "policy"), device="cpu", dtype="float32"))
    suppress = sorted(set(policy.suppressed_ids()) | set(policy.eos_ids))
    images = _images(d)
    refs = [_reference(policy, im, p, suppress) for im, p in zip(images, PROMPTS)]
    written = sorted({t for tokens, _ in refs for t in tokens})
    bounds = SentenceBoundaries("text", frozenset(), {i: SPACED for i in written[::2]}, spaced=frozenset(written[::3]),
                                decode=policy.tokenizer.decode)
    state = concat_states([prefill(policy, im, p, TokenCounter()) for im, p in zip(images, PROMPTS)])
    blocks = [RowBlock(1, None, TokenCounter()), RowBlock(1, None, TokenCounter())]
    answers, sentences = [[], []], 0
    while min(len(a) for a in answers) < N_TOKENS:
        for answer, cand in zip(answers, expand_groups(policy, state, _greedy(), TokenRules(bounds, [], suppress),
                                                       blocks)):
            answer += list(zip(cand.tokens, cand.logprobs))
        sentences += 1
    assert sentences > 3, "sentences must end often for the test to bite"
    for answer, (tokens, r_t) in zip(answers, refs):
        got = [t for t, _ in answer[:N_TOKENS]]
        assert got == tokens, f"{family}: first difference at {_first_difference(got, tokens)}"
        assert sum(lp for _, lp in answer[:N_TOKENS]) / N_TOKENS == pytest.approx(r_t, abs=1e-5)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_without_the_m_rope_offset_qwen_decodes_wrong_and_the_guard_refuses_it(family_dir, family, monkeypatch,
                                                                             tmp_path, capsys):
    """Take the rope_deltas correction away (the engine as it was): the cached tokens leave generate's within the
    first few, and `csr generate` stops at once with one line naming the family; search.check_cache=false runs it."""
    d = family_dir(family)
    monkeypatch.setattr(hf_decode, "_rope_holder", lambda model: None)
    policy = load_policy(ModelConfig(path=str(d / "policy"), device="cpu", dtype="float32"))
    suppress = sorted(set(policy.suppressed_ids()) | set(policy.eos_ids))
    image = _images(d)[0]
    tokens, _ = _reference(policy, image, PROMPTS[0], suppress)
    (cand,) = expand(policy, prefill(policy, image, PROMPTS[0], TokenCounter()), _greedy(), TokenRules([], [],
                                                                                                       suppress), None,
                     TokenCounter())
    first = _first_difference(cand.tokens, tokens)
    assert first is not None and first < 6
    args = [f"model.path={d / 'policy'}", f"reward.clip_path={d / 'clip'}", f"data.prompts={d / 'prompts.jsonl'}",
            f"data.image_root={d}", "data.max_prompts=2", "search.num_candidates=2", "search.max_sentences=1",
            "search.max_new_tokens=4"]
    capsys.readouterr()
    assert main(["generate", *args, f"out={tmp_path / 'refused'}"]) == 2
    err = "\n".join(line for line in capsys.readouterr().err.splitlines() if line.startswith("csr generate"))
    assert "\n" not in err and f"the cached search does not support {family} (" in err
    assert "search.check_cache=false runs it anyway" in err and not (tmp_path / "refused" / "shards").exists()
    assert main(["generate", *args, f"out={tmp_path / 'forced'}", "search.check_cache=false"]) == 0


def _annotations(d: Path) -> Path:
    """COCO instances for the 8 sample images: 3 of 5 objects each (POPE needs images with 3 and absent ones)."""
    cats = [{"id": c, "name": n} for c, n in enumerate(["dog", "car", "person", "cat", "chair"], 1)]
    objs = {i: [1 + i % 5, 1 + (i + 1) % 5, 1 + (i + 2) % 5] for i in range(8)}
    anns = [{"id": 10 * i + c, "image_id": i, "category_id": c} for i, cs in objs.items() for c in cs]
    path = d / "instances.json"
    path.write_text(json.dumps({"images": [{"id": i, "file_name": f"{i:03d}.png"} for i in objs],
                                "annotations": anns, "categories": cats}))
    return path


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_train_eval_on_every_family(family_dir, family, tmp_path):
    """csr generate (3 prompts, the start-up cache check included) -> csr train (LoRA, merged) -> csr eval; the
    merged checkpoint loads with the Auto classes and answers."""
    from transformers import AutoModelForImageTextToText

    d = family_dir(family)
    gen, train, ev = tmp_path / "gen", tmp_path / "train", tmp_path / "eval"
    assert main(["generate", f"model.path={d / 'policy'}", f"reward.clip_path={d / 'clip'}", f"out={gen}",
                 f"data.prompts={d / 'prompts.jsonl'}", f"data.image_root={d}", "data.max_prompts=3",
                 "search.num_candidates=3", "search.keep_top=1", "search.keep_bottom=1", "search.max_sentences=2",
                 "search.max_new_tokens=5", "search.filters=[]", "search.temperature=1.5"]) == 0
    pairs = [json.loads(x) for x in (gen / "pairs.jsonl").read_text().splitlines()]
    assert pairs, f"{family}: no pair to train on"
    assert main(["train", f"model.path={d / 'policy'}", f"out={train}", f"train.pairs={gen / 'pairs.jsonl'}",
                 "train.lora_r=4", "train.lora_alpha=8", "train.learning_rate=1e-2"]) == 0
    ckpt = train / "checkpoint"
    assert json.loads((train / "DONE").read_text())["steps"] == len(pairs)
    assert main(["eval", f"model.path={ckpt}", f"out={ev}", f"eval.annotations={_annotations(d)}",
                 f"eval.image_root={d / 'images'}", "eval.num_images=4", "eval.max_new_tokens=6",
                 "eval.pope_max_new_tokens=2", "eval.pope_splits=[random]"]) == 0
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["chair"]["n_captions"] == 4 and metrics["pope"]["random"]["n"] > 0
    model = AutoModelForImageTextToText.from_pretrained(ckpt)
    base = AutoModelForImageTextToText.from_pretrained(d / "policy")
    from csr_vlm.train import language_model_prefix

    lm = language_model_prefix(base) + "."
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, base.state_dict()[k])]
    assert changed and all(k.startswith(lm) for k in changed)  # LoRA on the language model only
    policy = load_policy(ModelConfig(path=str(ckpt), device="cpu"))
    assert type(policy.model).__name__ == type(base).__name__


@pytest.mark.parametrize("family", FAMILIES)
def test_trl_logs_the_log_probs_of_a_forward_with_every_input(family_dir, family, tmp_path, monkeypatch):
    """One DPO step (LoRA, so at step 1 the policy is the reference: B = 0). TRL's logged logps/chosen equals the
    summed completion log-prob of our own forward of the collated batch with every key the processor returned
    (mm_token_type_ids for Qwen, token_type_ids for Gemma 3, image_grid_thw, image_sizes, pixel_attention_mask)."""
    from helpers import write_pairs

    from csr_vlm import train
    from csr_vlm.config import load_config

    d = family_dir(family)
    pairs = write_pairs(tmp_path / "pairs.jsonl", d / "images", n=1)
    cfg = load_config(None, [f"model.path={d / 'policy'}", f"out={tmp_path / 'train'}", f"train.pairs={pairs}",
                             "train.lora_r=4", "train.lora_alpha=8", "train.learning_rate=1e-3"])
    dataset, _ = train.load_pairs(pairs)
    policy = train.load_model(cfg)
    trainer = train.build_trainer(cfg, policy, dataset, tmp_path / "metrics.jsonl")
    batch = trainer.data_collator([dataset[0]])
    trainer.train()
    logged = next(json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if "logps/chosen"
                  in x)
    base = load_policy(ModelConfig(path=str(d / "policy"), device="cpu", dtype="float32")).model
    inputs = {k: v for k, v in batch.items() if k != "completion_mask"}
    with torch.inference_mode():
        logits = base(**inputs).logits.float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    chosen = (logp[0] * batch["completion_mask"][0, 1:]).sum().item()
    assert logged["logps/chosen"] == pytest.approx(chosen, abs=1e-4)
    assert ("mm_token_type_ids" in batch) == family.startswith("qwen")


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_trl_scores_a_sentence_pair_as_the_continued_answer(family_dir, family, tmp_path):
    """A sentence pair (sentence_pairs.py: the question plus the prefix "a red circle." as the open assistant turn,
    chosen " a blue square.") through the unpatched DPOTrainer: its batch holds the whole text tokenized in one go
    (no end of turn after the prefix), and its logged logps/chosen equals the summed log-prob of the sentence's
    tokens in our own forward of image + prompt + prefix + sentence (LoRA at step 1: the policy is the base)."""
    from csr_vlm import train
    from csr_vlm.config import load_config
    from csr_vlm.sentence_pairs import ChatText

    d = family_dir(family)
    policy = load_policy(ModelConfig(path=str(d / "policy"), device="cpu", dtype="float32"))
    chat = ChatText(policy.processor)
    encode = lambda s: policy.tokenizer.encode(s, add_special_tokens=False)
    prefix, sentence, other = encode("a red circle."), encode(" a blue square."), encode(" a dog.")
    row = {"id": "s0", "images": [str(d / "images" / "000.png")], "prompt": chat.prompt("Describe this image.",
                                                                                        prefix),
           "chosen": chat.continuation(prefix, sentence), "rejected": chat.continuation(prefix, other),
           "level": "sentence"}
    assert row["prompt"].endswith("a red circle.") and row["chosen"] == " a blue square."
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps(row) + "\n")
    cfg = load_config(None, [f"model.path={d / 'policy'}", f"out={tmp_path / 'train'}", f"train.pairs={pairs}",
                             "train.lora_r=4", "train.lora_alpha=8", "train.learning_rate=1e-3"])
    dataset, _ = train.load_pairs(pairs)
    trainer = train.build_trainer(cfg, train.load_model(cfg), dataset, tmp_path / "metrics.jsonl")
    batch = trainer.data_collator([dataset[0]])
    trainer.train()
    logged = next(json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if "logps/chosen"
                  in x)
    image = Image.open(d / "images" / "000.png").convert("RGB")
    whole = policy.processor(images=[[image]], text=[row["prompt"] + row["chosen"]], return_tensors="pt",
                             add_special_tokens=False)
    ids = whole["input_ids"][0]
    assert batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist() == ids.tolist()
    with torch.inference_mode():
        logits = policy.model(**whole).logits[0].float()
    logp = torch.log_softmax(logits[:-1], dim=-1).gather(-1, ids[1:, None]).squeeze(-1)
    assert logged["logps/chosen"] == pytest.approx(logp[-len(sentence):].sum().item(), abs=1e-4)


def test_qwen_processor_without_torchvision_loads_for_images_and_saves_as_the_real_class(family_dir, tmp_path):
    """Without torchvision, AutoProcessor cannot load a Qwen checkpoint (its video processor needs it): it loads
    for images and text only, refuses videos, and a re-save writes the real class and its video settings."""
    from transformers.utils import is_torchvision_available

    from csr_vlm.models.processors import load_processor

    d = family_dir("qwen2_5_vl") / "policy"
    saved = json.loads((d / "processor_config.json").read_text())
    assert saved["processor_class"] == "Qwen2_5_VLProcessor" and saved["video_processor"]["patch_size"] == 14
    processor = load_processor(str(d))
    if is_torchvision_available():
        assert type(processor).__name__ == "Qwen2_5_VLProcessor"
        return
    assert type(processor).__name__ == "Qwen2_5_VLProcessorImagesOnly"
    with pytest.raises(ImportError, match="needs torchvision to process videos"):
        processor(text=["x"], videos=[[Image.new("RGB", (28, 28))]])
    processor.save_pretrained(tmp_path)
    again = json.loads((tmp_path / "processor_config.json").read_text())
    assert again["processor_class"] == "Qwen2_5_VLProcessor" and again["video_processor"] == saved["video_processor"]


@pytest.mark.parametrize("damage", ["config", "weights"])
def test_a_broken_checkpoint_is_a_one_line_error(family_dir, tmp_path, capsys, damage):
    import shutil

    bad = tmp_path / "policy"
    shutil.copytree(family_dir("qwen3_vl") / "policy", bad)
    if damage == "config":
        (bad / "config.json").write_text("{not json")
    else:
        (bad / "model.safetensors").write_bytes(b"garbage")
    d = family_dir("qwen3_vl")
    capsys.readouterr()
    assert main(["generate", f"model.path={bad}", f"reward.clip_path={d / 'clip'}", f"out={tmp_path / 'gen'}",
                 f"data.prompts={d / 'prompts.jsonl'}", f"data.image_root={d}"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("csr generate")]
    assert len(err) == 1 and err[0].startswith(f"csr generate: error: model.path: cannot load {bad} (")


def _clean_words_only(monkeypatch, processor) -> None:
    """Let the search write only whole words of the tiny corpus (one token each), "." and EOS, so that its answers
    read back as the same tokens (random weights otherwise sample bytes that no text re-tokenizes to)."""
    from csr_vlm.models import policy as policy_module
    from csr_vlm.models.tiny import CORPUS

    tok = processor.tokenizer
    words = {w for s in CORPUS for w in s.replace(".", " ").replace("!", " ").split()}
    keep = {ids[0] for w in words if len(ids := tok.encode(" " + w, add_special_tokens=False)) == 1}
    keep |= set(tok.encode(".", add_special_tokens=False)[-1:])
    original = policy_module.suppressed_token_ids

    def only_words(tokenizer, eos_ids, vocab_rows=None):
        rows = vocab_rows or len(tokenizer)
        return sorted((set(range(rows)) - keep - set(eos_ids)) | set(original(tokenizer, eos_ids, vocab_rows)))

    monkeypatch.setattr(policy_module, "suppressed_token_ids", only_words)


@pytest.mark.parametrize("family", FAMILIES)
def test_search_reference_equals_trls_reference_pass(family_dir, family, tmp_path, monkeypatch):
    """train.reference=search: every pair's searched reference log-probs (csr generate, response and sentence
    pairs) that csr train takes as exact equal TRL's own reference pass (compute_ref_log_probs, float32) within
    1e-4; the others are those whose TRL tokens differ from the searched ones; whole-answer rows are among the
    exact ones on every family (their text is the searched tokens': the prompt with the BOS the search encoded,
    the answer's end token written out)."""
    from csr_vlm import search_reference, train
    from csr_vlm.config import load_config
    from csr_vlm.data import read_entries
    from csr_vlm.pairs import read_pairs, to_dataset

    d = family_dir(family)
    gen = tmp_path / "gen"
    _clean_words_only(monkeypatch, load_policy(ModelConfig(path=str(d / "policy"), device="cpu")).processor)
    assert main(["generate", f"model.path={d / 'policy'}", f"reward.clip_path={d / 'clip'}", f"out={gen}",
                 f"data.prompts={d / 'prompts.jsonl'}", f"data.image_root={d}", "data.max_prompts=2",
                 "search.num_candidates=4", "search.keep_top=1", "search.keep_bottom=1", "search.max_sentences=2",
                 "search.max_new_tokens=4", "search.filters=[]", "search.temperature=1.5", "model.dtype=float32",
                 "curate.pair_level=both", "reward.normalize=center", "reward.tau=0.0"]) == 0
    pairs = gen / "pairs.jsonl"
    cfg = load_config(None, [f"model.path={d / 'policy'}", f"out={tmp_path / 'train'}", f"train.pairs={pairs}",
                             "train.lora_r=4", "train.lora_alpha=8"])
    policy = train.load_model(cfg)
    rows, _ = read_pairs(pairs)
    values, reasons = search_reference.plan(cfg, rows, pairs, policy.processor)
    dataset = to_dataset([{**r, search_reference.ROW: i} for i, r in enumerate(rows)], extra=(search_reference.ROW,))
    trainer = train.build_trainer(cfg, policy, dataset, tmp_path / "metrics.jsonl")
    trl = search_reference._trl_reference(trainer, list(range(len(rows))))
    exact = [(v, t) for v, t in zip(values, trl) if v is not None]
    worst = max((abs(a - b) for v, t in exact for a, b in zip(v, t)), default=0.0)
    print(f"{family}: {len(exact)}/{len(rows)} pairs exact, max |search - TRL| {worst:.2e}, fallback {dict(reasons)}")
    assert worst < 1e-4
    assert set(reasons) <= {"TRL's tokenization differs from the searched tokens"}
    level = {e.line: e.value.get("level") for e in read_entries(pairs, "pairs")}
    levels = {level[row["line"]] for row, v in zip(rows, values) if v is not None}
    assert "response" in levels  # whole answers as searched (curate.pair_tokens=searched): BOS and end token kept
