"""The toy world: determinism, annotations vs pixels, caption noise, tokenizer, quick build + model loading."""

from __future__ import annotations

import json
import random
import time
from dataclasses import replace

import numpy as np

from csr_vlm.toyworld import build, measure
from csr_vlm.toyworld import clip as toyclip
from csr_vlm.toyworld import llava as toyllava
from csr_vlm.toyworld import scenes as tw


def _split_files(d, split):
    names = [f"instances_{split}.json", f"captions_{split}.json", f"prompts_{split}.jsonl", f"scenes_{split}.jsonl"]
    files = {n: (d / n).read_bytes() for n in names}
    files.update({p.name: p.read_bytes() for p in sorted((d / "images" / split).glob("*.png"))})
    return files


def test_same_seed_same_files_other_seed_differs(tmp_path):
    p0, p1 = tw.WorldParams.make(0, True), tw.WorldParams.make(1, True)
    tw.write_split(tmp_path / "a", "dev", 12, p0, 100_000)
    tw.write_split(tmp_path / "b", "dev", 12, p0, 100_000)
    tw.write_split(tmp_path / "c", "dev", 12, p1, 100_000)
    a, b, c = (_split_files(tmp_path / x, "dev") for x in "abc")
    assert a == b and len(a) == 4 + 12
    assert a["instances_dev.json"] != c["instances_dev.json"]


def test_annotations_match_rendered_pixels(tmp_path):
    """Inside each annotated box >= 12 pixels are within 60 of the type's colour; empty quadrants have < 3.

    Background is (50,50,50) + N(0, 10): its distance to the nearest type colour (white at 235 or
    blue (50,90,235)) is > 150, so noise never reaches 60; the thinnest shape (ring/frame, width 3,
    r >= 6) still covers > 40 pixels, jitter +-20 keeps it within 35 of the nominal colour.
    """
    p = tw.WorldParams.make(0, True)
    scenes = tw.write_split(tmp_path, "test", 30, p, 300_000)
    inst = json.loads((tmp_path / "instances_test.json").read_text())
    assert {c["id"] for c in inst["categories"]} == set(range(101, 111))
    by_image = {}
    for a in inst["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    from PIL import Image

    for s in scenes:
        arr = np.asarray(Image.open(tmp_path / s["image"]), dtype=float)
        anns = by_image[s["image_id"]]
        assert sorted(a["category_id"] - 101 for a in anns) == sorted(o["type"] for o in s["objects"])
        for a in anns:
            x, y, w, h = a["bbox"]
            colour = np.array(tw.COLOURS[tw.TYPES[a["category_id"] - 101][0]])
            patch = arr[y:y + h + 1, x:x + w + 1]
            assert (np.linalg.norm(patch - colour, axis=-1) < 60).sum() >= 12
        used = {o["quadrant"] for o in s["objects"]}
        for q in set(range(4)) - used:
            quad = arr[(q // 2) * 24:(q // 2) * 24 + 24, (q % 2) * 24:(q % 2) * 24 + 24]
            near = min((np.linalg.norm(quad - np.array(c), axis=-1) < 60).sum() for c in tw.COLOURS.values())
            assert near < 3
    caps = json.loads((tmp_path / "captions_test.json").read_text())["annotations"]
    for cap, s in zip(caps, scenes):  # reference captions are truthful: exactly the scene's nouns
        assert sorted(measure.parse_answer(cap["caption"])[1]) == sorted(tw.TYPES[o["type"]][1] for o in s["objects"])


def test_caption_noise_rate():
    """An object whose partner is absent is followed by the partner in 80% of noisy captions (+-3 pt).

    2,000 anchors of type 0 (red circle) without its partner: the binomial sd of the rate is
    sqrt(0.8 * 0.2 / 2000) = 0.9 pt, so +-3 pt is > 3 sd. Clean captions never name it.
    """
    p = tw.WorldParams()
    rng = random.Random(0)
    named = sum("blue square" in tw.caption([0], rng, p) for _ in range(2000))
    assert abs(named / 2000 - 0.8) < 0.03
    assert not any("square" in tw.caption([0, 8], rng, p, noisy=False) for _ in range(200))
    assert tw.caption([0, 1], random.Random(1), p, noisy=False).count(".") == 2


def test_tokenizers_dot_single_token_and_clip_eos():
    clip_tok, lm_tok = toyclip.make_tokenizer(clip=True), toyclip.make_tokenizer(clip=False)
    ids = clip_tok("there is a red circle.").input_ids
    assert ids[-1] == clip_tok.eos_token_id != 2 and ids[0] == clip_tok.bos_token_id
    assert len(ids) == 2 + 6  # <s> there is a red circle . </s>
    assert lm_tok("circle.").input_ids[1:] == lm_tok("circle .").input_ids[1:]  # spacing never changes ids
    assert len(lm_tok(".", add_special_tokens=False).input_ids) == 1
    assert lm_tok.decode(lm_tok("i see a blue ring.").input_ids, skip_special_tokens=True) == "i see a blue ring ."


def test_renderer_memo_returns_the_rendering_and_fresh_lists():
    """A memoised example equals a fresh chat-template rendering, and mutating it never changes the memo."""
    model, processor = toyllava.build_llava(toyclip.build_clip(48)[0], 48)
    renderer = toyllava.Renderer(processor, 48)
    question = "Is there a red circle in the image?" + tw.POPE_SUFFIX
    first = renderer.example(question, "yes.")
    assert first == renderer._render(question, "yes.")
    first[0].append(-1)
    first[1].clear()
    assert renderer.example(question, "yes.") == renderer._render(question, "yes.")
    assert renderer.example(question, "no.")[1] != renderer.example(question, "yes.")[1]


def test_score_answers_by_hand(tmp_path):
    """Image 7: red circle + white tee. Answer 1 names circle, square (absent), circle again.

    mentions 3 + 1 = 4; hallucinated 1 -> CHAIR_i 0.25; CHAIR_s 1/2; recall: answer 1 finds
    circle (1 of 2), answer 2 finds tee (1 of 2) -> 2/4; dup 1/4; well-formed: answer 2 is not.
    """
    tw.write_synonyms(tmp_path)
    cats = [{"id": 101 + t, "name": n} for t, (_, n) in enumerate(tw.TYPES)]
    anns = [{"id": 1, "image_id": 7, "category_id": 101}, {"id": 2, "image_id": 7, "category_id": 109}]
    (tmp_path / "instances_x.json").write_text(json.dumps({"images": [{"id": 7}], "annotations": anns,
                                                            "categories": cats}))
    answers = ["there is a red circle . i see a blue square . a red circle is here .", "a white tee"]
    m = measure.score_answers(answers, [7, 7], tmp_path, "x")
    assert (m["chair_i"], m["chair_s"], m["recall"], m["dup_rate"], m["wellformed"]) == (0.25, 0.5, 0.5, 0.25, 0.5)


def test_select_checkpoint_rule():
    m = [{"chair_i": 0.30, "wellformed": 1.0, "recall": 0.99}, {"chair_i": 0.20, "wellformed": 0.97, "recall": 0.90},
         {"chair_i": 0.16, "wellformed": 0.99, "recall": 0.93}, {"chair_i": 0.18, "wellformed": 0.90, "recall": 0.99}]
    assert toyllava.select_checkpoint(m) == 2  # in band and fluent: highest recall
    assert toyllava.select_checkpoint(m[:1] + m[3:]) == 0  # none qualifies: nearest the band among fluent
    m[2]["pope_acc"] = 0.65  # yes/no below 0.7: not a base
    assert toyllava.select_checkpoint(m) == 1
    m[1]["dup_rate"] = 0.06  # repeats above 5%: not a base either -> the fallback, nearest the band
    assert not toyllava.passes(m[1]) and toyllava.select_checkpoint(m) == 1


def test_select_checkpoint_fallback_skips_mute_and_prefers_pope():
    """No checkpoint qualifies (band middle (0.12 + 0.25) / 2 = 0.185). A mute one (no mentions: CHAIR_i 0,
    0.185 away) is nearer than a talking one at 0.45 (0.265 away), yet must not be picked; among talking
    ones, POPE >= 0.7 beats a nearer CHAIR_i (0.12: 0.065 away, POPE 0.5) -> index 3 (0.30, 0.115 away)."""
    mute = {"chair_i": 0.0, "wellformed": 1.0, "recall": 0.0, "mentions_per_caption": 0.0, "pope_acc": 0.8}
    talk = {"chair_i": 0.45, "wellformed": 1.0, "recall": 0.9, "mentions_per_caption": 2.0, "pope_acc": 0.8}
    assert toyllava.select_checkpoint([mute, talk]) == 1
    near = {"chair_i": 0.12, "wellformed": 1.0, "recall": 0.9, "mentions_per_caption": 2.0, "pope_acc": 0.5}
    far = {"chair_i": 0.30, "wellformed": 1.0, "recall": 0.9, "mentions_per_caption": 2.0, "pope_acc": 0.75}
    assert toyllava.select_checkpoint([mute, talk, near, far]) == 3


def test_clip_is_reused_only_when_its_parameters_match(tmp_path, monkeypatch):
    """_clip trains once, reuses the CLIP when only LLaVA parameters change, retrains when clip_steps, its
    geometry or the thread count (a build is deterministic per thread count) does."""
    trained = []

    def fake_train(out, p):
        (out / "clip").mkdir(parents=True)
        trained.append(p.clip_steps)
        return {"tau": float(p.clip_steps)}

    monkeypatch.setattr(toyclip, "train_clip", fake_train)
    p = replace(tw.WorldParams.make(0, True), clip_steps=30)
    assert build._clip(tmp_path, p) == {"tau": 30.0}
    assert build._clip(tmp_path, replace(p, llava_steps=99, qa_fraction=0.1)) == {"tau": 30.0}
    assert trained == [30]
    assert build._clip(tmp_path, replace(p, clip_steps=31)) == {"tau": 31.0} and trained == [30, 31]
    assert build._clip(tmp_path, replace(p, clip_steps=31, threads=1)) == {"tau": 31.0} and trained == [30, 31, 31]
    assert build._clip(tmp_path, replace(p, clip_steps=31, threads=1, clip_patch=6)) == {"tau": 31.0}
    assert trained == [30, 31, 31, 31]
    assert p.digest() != replace(p, llava_steps=99).digest()
    assert tw.WorldParams.make(0, False).threads == 2, "the build's thread count is pinned, whatever the cores"


def test_reused_world_names_the_libraries_that_changed_since_its_build(tmp_path, caplog):
    """world.json records the versions it was built with; reused under another torch, the build says which."""
    import logging

    from csr_vlm.manifest import versions

    now = versions()
    (tmp_path / "world.json").write_text(json.dumps({"versions": {**now, "torch": "0.0.1"}}))
    with caplog.at_level(logging.WARNING):
        build.warn_if_other_versions(tmp_path)
    assert f"torch 0.0.1 -> {now['torch']}" in caplog.text and "transformers" not in caplog.text
    caplog.clear()
    (tmp_path / "world.json").write_text(json.dumps({"versions": now}))
    build.warn_if_other_versions(tmp_path)
    assert caplog.text == ""


def test_garbled_sentences_name_no_object():
    """The CLIP's negatives: 400 draws, none names a noun, several template kinds occur (incl. spliced ones)."""
    rng = random.Random(0)
    junk = [tw.garbled_sentence(rng) for _ in range(400)]
    assert not any(measure.parse_answer(j)[1] for j in junk)
    assert "i see a is here." in junk and "there is a ." in junk and len(set(junk)) > 50


def test_quick_world_builds_caches_and_loads(quick_world):
    from csr_vlm.config import ModelConfig
    from csr_vlm.models import load_clip, load_policy

    info = json.loads((quick_world / "world.json").read_text())
    assert info["split_sizes"] == {"train": 96, "dev": 100, "test": 200, "calib": 60}
    selected = next(m for m in info["llava"]["checkpoints"] if m["step"] == info["llava"]["selected_step"])
    assert info["llava"]["dev"] == selected  # the saved base is the checkpoint the rule picked
    assert "tau" in info["clip"] and "auc" in info["llava"]["clip_on_hallucinations"]
    assert (quick_world / "synonyms.txt").read_text().split() == [n for _, n in tw.TYPES]
    assert len(quick_world.joinpath("prompts_train.jsonl").read_text().splitlines()) == 96
    calib = [json.loads(x) for x in (quick_world / "tau_calibration.jsonl").read_text().splitlines()]
    assert all(r["image"].startswith("images/calib/") and (quick_world / r["image"]).is_file() for r in calib)
    assert {"python", "torch", "transformers", "trl"} <= set(info["versions"])
    start, done = time.time(), (quick_world / "DONE").stat().st_mtime_ns
    build.build(quick_world, seed=0, quick=True)  # cached: nothing rebuilt
    assert time.time() - start < 5 and (quick_world / "DONE").stat().st_mtime_ns == done

    policy = load_policy(ModelConfig(device="cpu"), str(quick_world / "policy"))
    clip, processor = load_clip(str(quick_world / "clip"), device="cpu")
    import torch

    tower = policy.model.model.vision_tower.state_dict()
    for k, v in clip.vision_model.state_dict().items():
        assert torch.equal(tower[next(t for t in tower if t.endswith(k))], v)
    from PIL import Image

    image = Image.open(quick_world / "images/dev/200000.png").convert("RGB")
    assert torch.allclose(processor(images=[image], return_tensors="pt").pixel_values, toyclip.pixels([image]))
    ids = policy.encode([image], [tw.DESCRIBE_PROMPT])["input_ids"][0].tolist()
    assert ids.count(policy.model.config.image_token_index) == 36  # the quick CLIP's (48 / 8)^2 patches, CLS dropped

