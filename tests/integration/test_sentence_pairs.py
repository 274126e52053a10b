"""Sentence-level pairs (curate.pair_level): which siblings pair up, in which format, and that csr generate ->
csr train runs on them.

    .venv/bin/python -m pytest tests/integration/test_sentence_pairs.py
"""

from __future__ import annotations

import json

import pytest

from csr_vlm.cli import main
from csr_vlm.config import CurateConfig, RewardConfig
from csr_vlm.curate import shard_line
from csr_vlm.data import PromptRecord
from csr_vlm.search.types import Answer, SearchResult, Sentence, Siblings
from csr_vlm.sentence_pairs import ChatText, sentence_pairs

TAU = 60.0


@pytest.fixture(scope="module")
def chat(tiny_llava):
    from csr_vlm.models.processors import load_processor

    return ChatText(load_processor(str(tiny_llava / "policy")))


def _grow(chat: ChatText, prefix: Answer, text: str, r_i: float, r: float, r_t: float = -1.0) -> Answer:
    tokens = chat.tokenizer.encode((" " if prefix.tokens else "") + text, add_special_tokens=False)
    sent = Sentence(text=text, r_t=r_t, r_i=r_i, r=r)
    return Answer(sentences=prefix.sentences + [sent], tokens=prefix.tokens + tokens, reward=prefix.reward + r)


def _tree(chat: ChatText) -> SearchResult:
    """Depth 0 from the empty answer: "a red circle." (R_I 70, R 1.0), "a blue square." (65, 0.5), "a dog." (40,
    -2.0), "a cat." (50, -1.0, R_T -0.2). Depth 1 after the clean "a red circle.": "a dog." (45, -1.5) and
    "a table." (66, 0.6). Depth 1 after "a dog." (a doubted prefix): nothing may pair."""
    root = Answer()
    red, blue, dog, cat = (_grow(chat, root, "a red circle.", 70, 1.0), _grow(chat, root, "a blue square.", 65, 0.5),
                           _grow(chat, root, "a dog.", 40, -2.0), _grow(chat, root, "a cat.", 50, -1.0, r_t=-0.2))
    after_red = [_grow(chat, red, "a dog.", 45, -1.5), _grow(chat, red, "a table.", 66, 0.6)]
    after_dog = [_grow(chat, dog, "a red circle.", 70, 1.0), _grow(chat, dog, "a cat.", 30, -3.0)]
    siblings = [Siblings(0, root, [red, blue, dog, cat]), Siblings(1, red, after_red), Siblings(1, dog, after_dog)]
    return SearchResult("paper", [], None, None, {}, siblings=siblings)


RECORD = PromptRecord.of("p0", "img.png", "Describe this image.")


@pytest.mark.parametrize("rule, depth0_rejected", [("lowest", "a dog."), ("hardest", "a cat."), ("likeliest",
                                                                                                 "a cat.")])
def test_pairs_contrast_a_trusted_and_a_doubted_sibling_after_a_clean_prefix(chat, rule, depth0_rejected):
    """Depth 0: chosen = the trusted sibling with the highest R ("a red circle.", R 1.0 over "a blue square." 0.5);
    rejected among the doubted ("a dog." R -2.0 R_T -1; "a cat." R -1.0 R_T -0.2): lowest R -> "a dog.",
    hardest (highest R) -> "a cat.", likeliest (highest R_T) -> "a cat.". Depth 1 after "a red circle.":
    "a table." (66 >= tau) over "a dog." (45). The prefix "a dog." is doubted: no pair after it."""
    pairs = sentence_pairs(RECORD, 1, _tree(chat), CurateConfig(rejected=rule, max_sentence_pairs=5), TAU, chat)
    assert [(p["depth"], p["prefix"], p["chosen"].strip(), p["rejected"].strip()) for p in pairs] == [
        (0, "", "a red circle.", depth0_rejected), (1, "a red circle.", "a table.", "a dog.")]
    first = pairs[0]
    assert first["margin"] == pytest.approx(1.0 - {"a dog.": -2.0, "a cat.": -1.0}[depth0_rejected])
    assert (first["chosen_r_i"], first["level"], first["question"]) == (70, "sentence", "Describe this image.")


def test_the_prompt_holds_the_prefix_as_an_open_assistant_turn(chat):
    """prompt + chosen is the chat template's text of the question with the answer "a red circle. a table." so far:
    the assistant turn is open (no end-of-turn after the prefix), and the sentence continues it with its space.
    The prompt starts with the BOS text that the search's encoding adds (TRL adds no special tokens)."""
    pair = sentence_pairs(RECORD, 1, _tree(chat), CurateConfig(max_sentence_pairs=5), TAU, chat)[1]
    template = chat.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}],
        add_generation_prompt=True, tokenize=False)
    tok = chat.tokenizer
    if tok(template).input_ids[0] == tok.bos_token_id and not template.startswith(tok.bos_token):
        template = tok.bos_token + template
    assert pair["prompt"] == template + "a red circle."
    assert pair["prompt"] + pair["chosen"] == template + "a red circle. a table."
    assert pair["images"][0].endswith("img.png") and pair["rejected"] == " a dog."


def test_at_most_max_sentence_pairs_earliest_first_and_none_for_yes_no_questions(chat):
    result = _tree(chat)
    assert [p["depth"] for p in sentence_pairs(RECORD, 1, result, CurateConfig(max_sentence_pairs=1), TAU,
                                               chat)] == [0]
    question = PromptRecord.of("q", "img.png", "Is there a dog in the image?")
    line = shard_line(question, 1, result, CurateConfig(pair_level="sentence"), RewardConfig(tau=TAU), text=chat)
    assert line["sentence_pairs"] == []


def test_shard_line_per_pair_level(chat):
    """response without the chat text: the whole-answer pair only, conversational; sentence: the sentence pairs
    only; both: the whole-answer pair as a standard row beside the sentence pairs, its sides the searched tokens'
    text (curate.pair_tokens=searched) or the chat template's reply with its end of turn (template)."""
    result = _tree(chat)
    good = _grow(chat, Answer(), "a red circle.", 70, 1.0)
    bad = _grow(chat, Answer(), "a dog.", 40, -2.0)
    for a in (good, bad):
        a.sentences.append(Sentence(text="", r_t=0.0, r_i=None, r=0.0, end=True))
        a.text, a.ended = a.sentences[0].text, True
    result.answers, result.chosen, result.rejected = [good, bad], 0, 1
    response = shard_line(RECORD, 1, result, CurateConfig(), RewardConfig(tau=TAU))
    assert isinstance(response["pair"]["prompt"], list) and "sentence_pairs" not in response
    sentence = shard_line(RECORD, 1, result, CurateConfig(pair_level="sentence"), RewardConfig(tau=TAU), text=chat)
    assert sentence["pair"] is None and len(sentence["sentence_pairs"]) == 2
    both = shard_line(RECORD, 1, result, CurateConfig(pair_level="both"), RewardConfig(tau=TAU), text=chat)
    assert both["pair"]["level"] == "response" and both["pair"]["prompt"] == sentence["sentence_pairs"][0]["prompt"]
    assert both["pair"]["chosen"] == chat.continuation([], good.tokens)  # pair_tokens=searched: the searched tokens
    assert len(both["sentence_pairs"]) == 2 and both["skip"] is None
    template = shard_line(RECORD, 1, result, CurateConfig(pair_level="both", pair_tokens="template"),
                          RewardConfig(tau=TAU), text=chat)["pair"]  # TRL's template: the reply and its end of turn
    assert template["chosen"].strip().startswith("a red circle.") and template["chosen"] != "a red circle."


def test_generate_then_train_on_sentence_pairs(tiny_llava, tmp_path):
    """csr generate with curate.pair_level=both on the tiny LLaVA writes one file of standard-format rows, both
    levels, that csr train trains on (one step per pair); csr score pairs reports the two kinds apart."""
    from helpers import TINY_TRAIN

    d = tiny_llava
    gen = tmp_path / "gen"
    assert main(["generate", f"model.path={d / 'policy'}", f"reward.clip_path={d / 'clip'}", f"out={gen}",
                 f"data.prompts={d / 'prompts.jsonl'}", f"data.image_root={d}", "data.max_prompts=4",
                 "search.num_candidates=4", "search.max_sentences=3", "search.max_new_tokens=6", "search.filters=[]",
                 "search.temperature=1.5", "reward.normalize=center", "reward.tau=0.0", "curate.pair_level=both",
                 "curate.max_sentence_pairs=3"]) == 0
    pairs = [json.loads(x) for x in (gen / "pairs.jsonl").read_text().splitlines()]
    levels = {p["level"] for p in pairs}
    assert pairs and all(isinstance(p["prompt"], str) and isinstance(p["chosen"], str) for p in pairs)
    assert levels <= {"response", "sentence"} and "sentence" in levels
    stats = json.loads((gen / "stats.json").read_text())
    assert stats["counts"]["sentence_pairs"] == sum(p["level"] == "sentence" for p in pairs)
    assert main(["train", f"model.path={d / 'policy'}", f"out={tmp_path / 'train'}",
                 f"train.pairs={gen / 'pairs.jsonl'}", *TINY_TRAIN]) == 0
    assert json.loads((tmp_path / "train" / "DONE").read_text())["steps"] == len(pairs)


def test_ending_the_answer_is_a_sibling_and_can_be_chosen(chat):
    """After the clean prefix "a red circle.": the end (EOS alone, R_I = tau = 60, R 0.0), "a table." (61, R -0.1),
    "a dog." (45, R -1.5). The trusted siblings are the end and "a table."; the end has the higher R, so the pair is
    "stop here" (the EOS token's text, "</s>") against "a dog."."""
    root = Answer()
    red = _grow(chat, root, "a red circle.", 70, 1.0)
    eos = chat.tokenizer.eos_token_id
    end = Answer(sentences=red.sentences + [Sentence(text="", r_t=-0.5, r_i=TAU, r=0.0, end=True)],
                 tokens=red.tokens + [eos], ended=True)
    children = [end, _grow(chat, red, "a table.", 61, -0.1), _grow(chat, red, "a dog.", 45, -1.5)]
    result = SearchResult("paper", [], None, None, {}, siblings=[Siblings(1, red, children)])
    (pair,) = sentence_pairs(RECORD, 1, result, CurateConfig(), TAU, chat)
    assert (pair["chosen"], pair["rejected"], pair["margin"]) == (chat.tokenizer.eos_token, " a dog.", 1.5)
