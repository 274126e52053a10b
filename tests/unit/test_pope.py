"""POPE: split construction and metrics under each answer parser, worked by hand."""

from __future__ import annotations

import json

import pytest

from csr_vlm import yes_no
from csr_vlm.benchmarks import pope
from csr_vlm.cli import main

# first-seen order: person, dog, cat, car, bus, bench, apple
# frequency: person 3, dog 2, car 2, then 1 each -> popular order: person, dog, car, cat, bus, bench, apple
POOL = [
    {"image_id": 1, "image": "1.jpg", "objects": ["person", "dog", "cat"]},
    {"image_id": 2, "image": "2.jpg", "objects": ["person", "car", "bus", "bench"]},
    {"image_id": 3, "image": "3.jpg", "objects": ["person", "dog", "car", "apple"]},
]


def _negatives(questions, image):
    return [q["object"] for q in questions if q["image"] == image and q["label"] == "no"]


@pytest.mark.parametrize("split", yes_no.SPLITS)
def test_split_shape(split):
    """3 images x (3 positives + 3 negatives) = 18 questions, alternating yes/no; positives = first three objects;
    a negative is never in the image nor asked twice for it."""
    qs = pope.build_split(POOL, split, seed=0)
    assert len(qs) == 18 and [q["label"] for q in qs] == ["yes", "no"] * 9
    assert [q["question_id"] for q in qs] == list(range(1, 19))
    for im in POOL:
        pos = [q["object"] for q in qs if q["image"] == im["image"] and q["label"] == "yes"]
        neg = _negatives(qs, im["image"])
        assert pos == im["objects"][:3]
        assert not set(neg) & set(im["objects"]) and len(set(neg)) == 3
    assert all(q["category"] == split for q in qs)


def test_popular_split():
    """Popular: the most frequent object not in the image and not yet asked.
    image 1 (person, dog, cat): car, bus, bench; image 2 (person, car, bus, bench): dog, cat, apple;
    image 3 (person, dog, car, apple): cat, bus, bench."""
    qs = pope.build_split(POOL, "popular", seed=0)
    assert _negatives(qs, "1.jpg") == ["car", "bus", "bench"]
    assert _negatives(qs, "2.jpg") == ["dog", "cat", "apple"]
    assert _negatives(qs, "3.jpg") == ["cat", "bus", "bench"]


def test_adversarial_split():
    """Adversarial: the object co-occurring most with that positive.
    co-occurrence(person) = dog 2, car 2, cat/bus/bench/apple 1 -> image 1 (has dog): car; image 2 (has car): dog.
    image 2, positive car: co(car) = person 2, bus/bench/dog/apple 1 -> person, bus, bench in image, dog asked: apple.
    image 2, positive bus: co(bus) = person, car, bench, all in the image -> random fallback; the only valid
    object left is cat.
    image 3, positive person: dog, car in the image -> cat."""
    qs = pope.build_split(POOL, "adversarial", seed=0)
    assert _negatives(qs, "1.jpg")[:2] == ["car", "apple"]
    assert _negatives(qs, "2.jpg") == ["dog", "apple", "cat"]
    assert _negatives(qs, "3.jpg")[0] == "cat"


def test_sample_pool_and_template():
    """Images with < 3 objects are dropped; the sample is seeded; 'an' before vowels and no 'imange'."""
    inst = {"images": [{"id": i, "file_name": f"{i}.jpg"} for i in range(1, 6)],
            "categories": [{"id": 100 + k, "name": n} for k, n in enumerate(["apple", "dog", "cat", "oven"])],
            "annotations": [{"image_id": i, "category_id": 100 + k} for i in (1, 2, 3, 4) for k in range(4)]
            + [{"image_id": 5, "category_id": 101}, {"image_id": 5, "category_id": 102}]}
    pool = pope.sample_pool(inst, num_images=3, seed=1)
    assert len(pool) == 3 and 5 not in [im["image_id"] for im in pool]
    assert pool == pope.sample_pool(inst, num_images=3, seed=1)
    qs = pope.build_questions(inst, 3, seed=1, splits=["popular"])["popular"]
    assert qs[0]["text"] == "Is there an apple in the image?" and qs[0]["image_id"] == pool[0]["image_id"]
    assert not any("imange" in q["text"] for q in qs)
    assert yes_no.question_object("Is there an oven in the imange?") == "oven"


def test_parsers():
    assert [yes_no.parse_llava(t) for t in ("Yes, there is.", "No.", "NO", "", "There is not.")] == \
        ["yes", "no", "yes", "yes", "no"]
    assert [yes_no.parse_vlmevalkit(t) for t in ("Yes.", "no!", "Yes and no", "maybe")] == \
        ["yes", "no", "unknown", "unknown"]
    assert [yes_no.parse_default(t) for t in ("Yes, no dog.", "NO.", "I see a dog")] == ["yes", "no", "unknown"]


@pytest.mark.parametrize("parser, expected", [
    # preds yes, no, yes, yes, no -> TP 2, FP 1, TN 2, FN 0: acc 4/5, P 2/3, R 1, F1 4/5, yes 3/5
    ("llava", (4 / 5, 2 / 3, 1.0, 4 / 5, 3 / 5)),
    # preds yes, no, no, unknown, unknown -> TP 1, FN 1, FP 0, TN 3: acc 4/5, P 1, R 1/2, F1 2/3, yes 1/5
    ("vlmevalkit", (4 / 5, 1.0, 1 / 2, 2 / 3, 1 / 5)),
    # preds yes, no, no, unknown, yes -> TP 1, FN 1, FP 1, TN 2: acc 3/5, P 1/2, R 1/2, F1 1/2, yes 2/5
    ("default", (3 / 5, 1 / 2, 1 / 2, 1 / 2, 2 / 5)),
])
def test_score_cli_under_each_parser(tmp_path, parser, expected):
    """random split: labels yes, no, yes, no, no (+ one yes without an answer, + one malformed line):
    answers "Yes, there is a dog." / "No." / "NO" / "I cannot tell." / "Yes and no.".
    popular split: "yes" (yes), "no" (no): all metrics 1, yes-ratio 1/2 -> mean F1 = (F1_random + 1) / 2."""
    rq, ra = tmp_path / "coco_pope_random.json", tmp_path / "ans_random.jsonl"
    labels = ["yes", "no", "yes", "no", "no", "yes"]
    texts = ["Yes, there is a dog.", "No.", "NO", "I cannot tell.", "Yes and no."]
    lines = [json.dumps({"question_id": i + 1, "image": "x.jpg", "text": "Is there an apple in the imange?",
                         "label": lab}) for i, lab in enumerate(labels)]
    rq.write_text("\n".join(lines[:2] + ["{not json"] + lines[2:]) + "\n")
    ra.write_text("".join(json.dumps({"question_id": i + 1, "text": t}) + "\n" for i, t in enumerate(texts)))
    pq, pa = tmp_path / "coco_pope_popular.json", tmp_path / "ans_popular.jsonl"
    pq.write_text("".join(json.dumps({"question_id": i, "image": "x.jpg", "text": f"Is there a {o} in the image?",
                                      "label": lab}) + "\n" for i, o, lab in ((1, "dog", "yes"), (2, "cat", "no"))))
    pa.write_text(json.dumps({"question_id": 1, "text": "yes"}) + "\n" + json.dumps({"question_id": 2, "text": "no"}))
    out = tmp_path / "m.json"
    argv = ["score", "pope", "--questions", str(rq), str(pq), "--answers", str(ra), str(pa), "--parser", parser,
            "--out", str(out)]
    assert main(argv) == 0
    m = json.loads(out.read_text())
    r = m["random"]
    assert (r["n"], r["n_missing"]) == (5, 1)
    assert [r[k] for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")] == pytest.approx(list(expected))
    assert m["popular"]["f1"] == 1.0 and m["popular"]["yes_ratio"] == 0.5
    assert m["mean"]["f1"] == pytest.approx((expected[3] + 1.0) / 2)
    assert m["parser"] == parser


def test_score_without_matching_answers_fails(tmp_path, capsys):
    """Answers whose question_ids match none of the questions: exit 2, not an all-zero table."""
    q, a = tmp_path / "q.jsonl", tmp_path / "a.jsonl"
    q.write_text(json.dumps({"question_id": 1, "image": "x.jpg", "text": "Is there a dog?", "label": "yes"}) + "\n")
    a.write_text(json.dumps({"question_id": 7, "text": "yes"}) + "\n")
    assert main(["score", "pope", "--questions", str(q), "--answers", str(a)]) == 2
    assert "no answer matches" in capsys.readouterr().err
