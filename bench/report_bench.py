"""How long `csr report` takes to write report.html on a large run, and how big the page is.

    .venv/bin/python bench/report_bench.py [--images 1000] [--pairs 13000] [--rounds 3] [--dir /tmp/csr-report-bench]

Writes a synthetic run directory of that size (COCO objects, 640x480 JPEG test images, captions of ~5
sentences / ~70 words scored by CHAIR itself, every pair with its candidates' per-sentence rewards), then
times report_html.write_html on it (the data, 1,000 thumbnails, the page) and prints the seconds, the page's
size and the share of it that is thumbnails. Nothing is downloaded; the directory is reused when it exists.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

from csr_vlm.data import write_json, write_jsonl
from csr_vlm.eval.chair import compute_chair, load_vocabulary

OBJECTS = ["person", "dog", "cat", "car", "bicycle", "chair", "dining table", "cup", "bottle", "bench", "bird",
           "horse", "truck", "umbrella", "handbag", "laptop", "tv", "couch", "potted plant", "clock", "book", "vase"]
FILLER = ["the scene is bright and calm", "there is a wall in the background", "the photo is taken outdoors",
          "light comes from the left", "the colours are warm"]


def sentence(rng: random.Random, objs: list[str]) -> str:
    picks = rng.sample(objs, min(len(objs), rng.randint(1, 2)))
    return f"In the image there is a {' and a '.join(picks)} near {rng.choice(FILLER)}."


def caption(rng: random.Random, gt: list[str], n: int = 5) -> str:
    pool = gt + rng.sample(OBJECTS, 3)  # some true objects, some that may be hallucinated
    return " ".join(sentence(rng, pool) for _ in range(n))


def msg(role: str, text: str) -> list[dict]:
    """One TRL conversational message."""
    return [{"role": role, "content": [{"type": "text", "text": text}]}]


def make_run(root: Path, n_images: int, n_pairs: int, rounds: int, seed: int = 0) -> Path:
    """A finished-looking loop directory: round_0..rounds eval, round_1..rounds generate + train."""
    from PIL import Image

    rng = random.Random(seed)
    run, img_dir = root / "run", root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    gts = {i: rng.sample(OBJECTS, rng.randint(2, 5)) for i in range(1, n_images + 1)}
    for i in gts:
        path = img_dir / f"{i:012d}.jpg"
        if not path.is_file():
            Image.new("RGB", (640, 480), tuple(rng.randrange(256) for _ in range(3))).save(path, quality=85)
    vocab = load_vocabulary()
    gt_sets = {i: set(v) for i, v in gts.items()}
    for k in range(rounds + 1):
        caps = [{"image_id": i, "caption": caption(rng, gts[i])} for i in gts]
        result = compute_chair(caps, gt_sets, vocab)
        write_jsonl(run / f"round_{k}/eval/chair_captions.jsonl", result.pop("per_caption"))
        write_jsonl(run / f"round_{k}/eval/samples.jsonl",
                    [{"task": "chair", "image_id": i, "image": str(img_dir / f"{i:012d}.jpg"), "prompt": "Describe.",
                      "answer": c["caption"]} for i, c in zip(gts, caps)])
        flat = {m: result[m] for m in ("chair_s", "chair_i", "recall", "dup_rate")}
        write_json(run / f"round_{k}/eval/metrics.json", {"chair": result, "flat": flat, "protocol": {}})
    per_round = n_pairs // max(rounds, 1)
    for k in range(1, rounds + 1):
        pairs, cands = [], []
        for n in range(per_round):
            image = rng.choice(list(gts))
            answers = []
            for _ in range(4):
                sents = [sentence(rng, gts[image] + rng.sample(OBJECTS, 2)) for _ in range(4)]
                answers.append({"text": " ".join(sents), "reward": rng.uniform(-2, 2), "ended": True, "sentences": [
                    {"text": s, "r_t": rng.uniform(-3, 0), "r_i": rng.gauss(25, 3), "r": rng.uniform(-2, 2)}
                    for s in sents]})
            pid = f"train-{k}-{n}"
            cands.append({"id": pid, "image": str(img_dir / f"{image:012d}.jpg"), "prompt": "Describe the image.",
                          "round": k, "answers": answers, "chosen": 0, "rejected": 3})
            pairs.append({"id": pid, "images": [str(img_dir / f"{image:012d}.jpg")],
                          "prompt": msg("user", "Describe the image."), "chosen": msg("assistant", answers[0]["text"]),
                          "rejected": msg("assistant", answers[3]["text"]), "margin": rng.uniform(0, 3),
                          "chosen_r_i": rng.gauss(27, 2), "rejected_r_i": rng.gauss(23, 2), "round": k})
        write_jsonl(run / f"round_{k}/generate/pairs.jsonl", pairs)
        write_jsonl(run / f"round_{k}/generate/candidates.jsonl", cands)
        write_json(run / f"round_{k}/generate/stats.json", {"tau": 24.0})
        write_jsonl(run / f"round_{k}/train/train_metrics.jsonl", [{"step": 1, "loss": 0.7}, {"step": 2, "loss": 0.6}])
    write_json(run / "manifest.json", {"config": {"loop": {"select_on": "chair_i"}}, "best_round": rounds})
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=13000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default="/tmp/csr-report-bench")
    args = parser.parse_args(argv)
    from csr_vlm.report_html import write_html

    root = Path(args.dir)
    if not (root / "run" / "manifest.json").is_file():
        start = time.time()
        make_run(root, args.images, args.pairs, args.rounds)
        print(f"synthetic run written in {time.time() - start:.1f} s: {root / 'run'}")
    start = time.time()
    out = write_html(root / "run")
    seconds = time.time() - start
    text = out.read_text()
    thumbs = sum(len(part.split('"', 1)[0]) for part in text.split("data:image/jpeg;base64,")[1:])
    print(f"report.html: {seconds:.1f} s, {out.stat().st_size / 2**20:.1f} MiB "
          f"({thumbs / 2**20:.1f} MiB of it thumbnails) for {args.images} images and {args.pairs} pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
