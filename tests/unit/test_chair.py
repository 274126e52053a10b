"""CHAIR on hand-worked captions: every expected number is counted by hand in the docstring."""

from __future__ import annotations

import json

import pytest

from csr_vlm.benchmarks import chair
from csr_vlm.cli import main


@pytest.fixture(scope="module")
def vocab():
    return chair.load_vocabulary()


def _instances():
    """Image 7: person (cat id 101), dog (205). Image 9: toilet (330). Category ids are deliberately not 1..80."""
    return {
        "images": [{"id": 7, "file_name": "COCO_val2014_000000000007.jpg"}, {"id": 9, "file_name": "b.jpg"}],
        "categories": [{"id": 205, "name": "dog"}, {"id": 101, "name": "person"}, {"id": 330, "name": "toilet"}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 101}, {"id": 2, "image_id": 7, "category_id": 205},
                        {"id": 3, "image_id": 7, "category_id": 205}, {"id": 4, "image_id": 9, "category_id": 330}],
    }


def test_singularize_rules():
    cases = {"dogs": "dog", "horses": "horse", "buses": "bus", "glasses": "glass", "puppies": "puppy",
             "knives": "knife", "women": "woman", "policemen": "policeman", "benches": "bench", "mice": "mouse",
             "tomatoes": "tomato", "shoes": "shoe", "vases": "vase", "tennis": "tennis", "bus": "bus"}
    assert {w: chair.singularize(w) for w in cases} == cases


def test_tokenize_splits_punctuation_clitics_and_sentences():
    assert chair.tokenize("A dog's bone isn't here. Two hot-dogs!") == [
        "a", "dog", "'s", "bone", "is", "n't", "here", ".", "two", "hot-dogs", "!"]


@pytest.mark.parametrize("caption, nodes", [
    # synonyms + plurals: men->man->person, puppies->puppy->dog, sofas->sofa->couch
    ("Two men with puppies on sofas.", ["person", "dog", "couch"]),
    # "hot dog" is food, not a dog; "teddy bear" is not a bear
    ("A hot dog and a teddy bear.", ["hot dog", "teddy bear"]),
    # "traffic lights" -> traffic light (one object, one mention)
    ("Traffic lights over the street.", ["traffic light"]),
    # "baby elephant" -> elephant (baby is a person synonym, but not here)
    ("A baby elephant walks.", ["elephant"]),
    # "toilet seat" -> toilet; the later lone "seat" is dropped because "toilet" is present: no chair
    ("A toilet seat is up. The seat is white.", ["toilet"]),
    # without a toilet, a seat is a chair
    ("A seat by the window.", ["chair"]),
    # duplicates are kept: dog, dog, dog
    ("A dog. Another dog and a third dog.", ["dog", "dog", "dog"]),
    # phrases merged before the vocabulary: "wine glasses" -> wine glass, "dining table" -> dining table
    ("Wine glasses on a dining table.", ["wine glass", "dining table"]),
    ("", []),
])
def test_caption_to_words(vocab, caption, nodes):
    assert chair.caption_to_words(caption, vocab)[1] == nodes


def test_caption_mentions_point_at_the_words_the_caption_wrote(vocab):
    """The report marks mentions in the caption text: each span is what the caption wrote, with the table's word
    that matched and its object. "Puppies" -> puppy -> dog; "hot dogs" is one mention (food); "don't" splits into
    two tokens, so the spans after it still line up; "toilet seat" is one toilet and the later "seat" is dropped."""
    caption = "Two Puppies don't eat hot dogs near a toilet seat. The seat is white."
    got = [(caption[m.start:m.end], m.word, m.object) for m in chair.caption_mentions(caption, vocab)]
    assert got == [("Puppies", "puppy", "dog"), ("hot dogs", "hot dog", "hot dog"), ("toilet seat", "toilet",
                                                                                     "toilet")]
    assert chair.caption_to_words(caption, vocab) == (["puppy", "hot dog", "toilet"], ["dog", "hot dog", "toilet"])
    odd = "İ saw a café and two Dogs."  # "İ" lower-cases to two characters: the spans still point at the original
    assert [odd[m.start:m.end] for m in chair.caption_mentions(odd, vocab)] == ["Dogs"]


def test_compute_chair_hand_worked(vocab):
    """GT: image 7 = {person, dog} (instances) + {frisbee} (reference caption); image 9 = {toilet}.

    caption 1 (img 7): "A man and a woman play with a dog and a frisbee. The dog runs to a cat."
        mentions: person, person, dog, frisbee, dog, cat -> 6 mentions, 1 hallucinated (cat);
        frisbee is named only in the reference caption, so it is not a hallucination.
        duplicates: person x2, dog x2 -> 2 repeated mentions. words: 12 + 6 = 18.
    caption 2 (img 9): "A toilet seat next to a sink and hot dogs." -> toilet, sink, hot dog:
        3 mentions, 2 hallucinated (sink, hot dog). words 10.
    caption 3 (img 9): "" -> 0 mentions, not hallucinated. words 0.
    caption 4 (img 555, unknown): counted as unknown, not scored.
    CHAIR_s = 2/3; CHAIR_i = (1 + 2) / (6 + 3) = 1/3; recall = (3 + 1 + 0) / (3 + 1 + 1) = 4/5;
    dup_rate = 2/9; mentions/caption = 9/3 = 3; words/caption = (18 + 10 + 0)/3 = 28/3.
    """
    gt = chair.ground_truth(_instances(), vocab, {"annotations": [{"image_id": 7, "caption": "Kids and a frisbee."}]})
    assert gt[7] == {"person", "dog", "frisbee"} and gt[9] == {"toilet"}
    caps = [
        {"image_id": 7, "caption": "A man and a woman play with a dog and a frisbee. The dog runs to a cat."},
        {"image_id": "9", "caption": "A toilet seat next to a sink and hot dogs."},
        {"image_id": 9, "caption": ""},
        {"image_id": 555, "caption": "A dog."},
    ]
    r = chair.compute_chair(caps, gt, vocab)
    assert r["n_captions"] == 3 and r["n_unknown_images"] == 1
    assert r["chair_s"] == pytest.approx(2 / 3)
    assert r["chair_i"] == pytest.approx(1 / 3)
    assert r["recall"] == pytest.approx(4 / 5)
    assert r["dup_rate"] == pytest.approx(2 / 9)
    assert r["mentions_per_caption"] == pytest.approx(3.0)
    assert r["words_per_caption"] == pytest.approx(28 / 3)
    assert r["per_caption"][0]["hallucinated"] == ["cat"]
    assert r["per_caption"][1]["hallucinated"] == ["sink", "hot dog"]


def test_toy_table_phrases(tmp_path):
    """A non-COCO table: multi-word entries are matched as phrases, plurals included.

    "two red circles and a blue square; one red circle" -> red circle, blue square, red circle.
    "circle" alone is not an entry, so "a circle" names nothing.
    """
    table = tmp_path / "toy.txt"
    table.write_text("red circle, crimson circle\nblue square, azure square\n")
    v = chair.load_vocabulary(table)
    assert chair.caption_to_words("Two red circles and a blue square; one red circle. A circle.", v)[1] == [
        "red circle", "blue square", "red circle"]
    assert chair.caption_to_words("An azure square.", v)[1] == ["blue square"]


def test_read_captions_formats_and_cli(tmp_path, capsys):
    """JSONL and the original imgToEval JSON read the same; `csr score chair` writes the JSON.

    Caption "A dog and a cat." on image 7 (GT person, dog): 2 mentions, 1 hallucinated ->
    CHAIR_i = 1/2, CHAIR_s = 1, recall = 1/2.
    """
    inst = tmp_path / "inst.json"
    inst.write_text(json.dumps(_instances()))
    jl = tmp_path / "caps.jsonl"
    jl.write_text(json.dumps({"image_id": 7, "caption": "A dog and a cat."}) + "\n{bad line\n")
    orig = tmp_path / "orig.json"
    entry = {"image_id": 7, "caption": "A dog and a cat."}
    orig.write_text(json.dumps({"overall_metrics": {}, "imgToEval": {"7": entry}}))
    assert chair.read_captions(jl) == chair.read_captions(orig) == [{"image_id": 7, "caption": "A dog and a cat."}]
    out = tmp_path / "m.json"
    assert main(["score", "chair", "--captions", str(jl), "--instances", str(inst), "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert (m["chair_i"], m["chair_s"], m["recall"]) == (0.5, 1.0, 0.5)
    assert "chair_i" in capsys.readouterr().out


@pytest.mark.parametrize("drop, entry, reason", [("images", "images[1]", "has no id"),
                                                 ("annotations", "annotations[0]", "has no image_id / category_id")])
def test_load_instances_skips_the_bad_entry_with_its_reason(tmp_path, drop, entry, reason):
    data = _instances()
    if drop == "images":
        del data["images"][1]["id"]
    else:
        data["annotations"][0] = {"id": 1}
    path = tmp_path / "inst.json"
    path.write_text(json.dumps(data))
    skipped: list[dict] = []
    clean = chair.load_instances(path, skipped)
    assert skipped == [{"source": str(path), "entry": entry, "reason": reason}]
    assert len(clean[drop]) == len(data[drop]) - 1


def test_score_chair_without_usable_caption_fails(tmp_path, capsys):
    """Captions only for image 99 (not in the instances file): exit 2, not an all-zero table."""
    inst, caps = tmp_path / "inst.json", tmp_path / "caps.jsonl"
    inst.write_text(json.dumps(_instances()))
    caps.write_text(json.dumps({"image_id": 99, "caption": "A dog."}) + "\n")
    assert main(["score", "chair", "--captions", str(caps), "--instances", str(inst)]) == 2
    assert "no caption matches" in capsys.readouterr().err


@pytest.mark.parametrize("word, canonical", [
    ("taxis", "car"), ("corgis", "dog"), ("broccolis", "broccoli"), ("tvs", "tv"), ("zebus", "cow"),
    ("magpies", "bird"), ("men", "person"), ("vases", "vase"), ("buses", "bus"), ("glasses", None), ("skis", "skis"),
])
def test_plurals_the_table_knows(word, canonical):
    """A plural whose stem (minus s / es) is a synonym-table word maps to its object; -is / -us words that the
    rules keep whole ("this", "bus") stay safe. "glasses" is not an object (no "glass" entry alone)."""
    vocab = chair.load_vocabulary()
    nodes = chair.caption_to_words(f"There are two {word} here.", vocab)[1]
    assert nodes == ([canonical] if canonical else [])
