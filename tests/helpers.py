"""Helpers shared by several test modules (not tests themselves): tiny training overrides, a pairs file, a
float-tolerant comparison, a small finished run for the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from csr_vlm.data import write_json, write_jsonl

TINY_TRAIN = ["train.lora_r=4", "train.lora_alpha=8", "train.learning_rate=1e-3", "train.max_length=256"]
"""Overrides that make `csr train` on the tiny models take a fraction of a second."""


def write_pairs(path: Path, images_dir: Path, n: int = 4, missing: int = 0) -> Path:
    """n pairs on the fixture's images (absolute paths) plus `missing` pairs whose image does not exist."""
    def pair(i, image):
        return {"id": f"p{i}", "images": [str(image)],
                "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe it."}]}],
                "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "a red circle on the left."}]}],
                "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "a dog on the grass."}]}],
                "chosen_reward": 1.0, "rejected_reward": 0.0, "margin": 1.0, "round": 1}

    rows = [pair(i, images_dir / f"{i:03d}.png") for i in range(n)]
    rows += [pair(n + i, images_dir / f"gone{i}.png") for i in range(missing)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def assert_close(a, b, path="result"):
    """Equal structures; floats (log-prob sums, rewards) within 1e-5: a batched forward rounds differently."""
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, abs=1e-5), f"{path}: {a} != {b}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def message(role: str, text: str) -> list[dict]:
    """One TRL conversational message."""
    return [{"role": role, "content": [{"type": "text", "text": text}]}]


def report_run(root: Path, images: bool = True) -> Path:
    """Test images 1 (GT dog, person) and 2 (GT cat). Base: "Two puppies and a man." (dog, person; no
    hallucination) and "A cat on a sofa." (couch hallucinated). Round 1: "A dog and a cat." on 1 (cat
    hallucinated: added; person lost) and "A cat." on 2 (couch removed). Round 1's pairs, all of prompt t-1
    (tau 25): a caption pair in TRL's conversational format whose answers candidates.jsonl scores per sentence
    (the rejected "A cat sits." at R_I 20 is doubted); a sentence-level pair in the standard format (shared
    prefix "A dog runs.", next sentences "A man walks." vs "A cat sits." at R_I 20); the caption pair again in
    the standard format, its answers followed by the template's "</s>". The last caption holds a '</script>'
    that must not end the page's data."""
    from csr_vlm.benchmarks.chair import compute_chair, load_vocabulary

    run = root / "run"
    vocab = load_vocabulary()
    gt = {1: {"dog", "person"}, 2: {"cat"}}
    if images:
        from PIL import Image

        for i, colour in ((1, "red"), (2, "blue")):
            Image.new("RGB", (640, 480), colour).save(root / f"{i}.jpg")
    for k, caps in ((0, ["Two puppies and a man.", "A cat on a sofa."]),
                    (1, ["A dog and a cat.", "A cat. </script><b>x</b>"])):
        rows = compute_chair([{"image_id": i, "caption": c} for i, c in zip((1, 2), caps)], gt, vocab)["per_caption"]
        write_jsonl(run / f"round_{k}/eval/chair_captions.jsonl", rows)
        write_jsonl(run / f"round_{k}/eval/samples.jsonl", [
            {"task": "chair", "image_id": i, "image": str(root / f"{i}.jpg"), "prompt": "Describe.", "answer": c}
            for i, c in zip((1, 2), caps)])
        write_json(run / f"round_{k}/eval/metrics.json", {"chair": {"words_per_caption": 4.5 - k},
                                                           "flat": {"chair_i": 0.25 - 0.1 * k, "recall": 0.9}})
    chosen, rejected = "A dog runs. A man walks.", "A dog runs. A cat sits."
    write_jsonl(run / "round_1/generate/candidates.jsonl", [{"id": "t-1", "answers": [
        {"text": chosen, "sentences": [{"text": "A dog runs.", "r_t": -1.0, "r_i": 30.0, "r": 1.0},
                                       {"text": "A man walks.", "r_t": -1.5, "r_i": 28.0, "r": 0.5}]},
        {"text": rejected, "sentences": [{"text": "A dog runs.", "r_t": -1.0, "r_i": 30.0, "r": 1.0},
                                         {"text": "A cat sits.", "r_t": -0.5, "r_i": 20.0, "r": -2.0}]}]}])
    write_jsonl(run / "round_1/generate/pairs.jsonl", [
        {"id": "t-1", "images": [str(root / "1.jpg")], "prompt": message("user", "Describe."),
         "chosen": message("assistant", chosen), "rejected": message("assistant", rejected), "margin": 1.5,
         "chosen_r_i": 29.0, "rejected_r_i": 25.0},
        {"id": "t-1", "images": [str(root / "1.jpg")], "prompt": "USER: <image>\nDescribe. ASSISTANT: A dog runs.",
         "chosen": " A man walks.", "rejected": " A cat sits.", "level": "sentence", "question": "Describe.",
         "prefix": "A dog runs.", "depth": 1, "chosen_reward": 0.5, "rejected_reward": -2.0, "margin": 2.5,
         "chosen_r_i": 28.0, "rejected_r_i": 20.0, "chosen_r_t": -1.5, "rejected_r_t": -0.5,
         "rejected_repeat": False},
        {"id": "t-1", "images": [str(root / "1.jpg")], "prompt": "USER: <image>\nDescribe. ASSISTANT:",
         "chosen": chosen + "</s>", "rejected": rejected + "</s>", "level": "response", "question": "Describe.",
         "margin": 1.5, "chosen_r_i": 29.0, "rejected_r_i": 25.0}])
    write_json(run / "round_1/generate/stats.json", {"tau": 25.0})
    write_json(run / "manifest.json", {"config": {"loop": {"select_on": "chair_i", "guards": {"dup_rate": 0.05}}},
                                       "rounds": {"1": {"chair_i": 0.1, "passes_guards": False}}, "best_round": 0})
    write_json(run / "round_1/dev_eval/metrics.json", {"flat": {"chair_i": 0.1}})
    return run


def write_annotations(tiny: Path) -> Path:
    """COCO instances for the fixture's first 3 images (POPE needs images with >= 3 objects and absent ones)."""
    cats = [{"id": c, "name": n} for c, n in enumerate(["dog", "car", "person", "cat", "chair"], 1)]
    objs = {0: [1, 2, 3], 1: [2], 2: [1, 3, 4]}
    anns = [{"id": 10 * i + c, "image_id": i, "category_id": c} for i, cs in objs.items() for c in cs]
    images = [{"id": i, "file_name": f"images/{i:03d}.png"} for i in objs]
    path = tiny / "instances_tiny.json"
    write_json(path, {"images": images, "annotations": anns, "categories": cats})
    return path
