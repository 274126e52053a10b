"""How long `csr report` takes to write report.html on a large run, how big the page is, how fast it opens.

    .venv/bin/python bench/report_bench.py [--images 1000] [--pairs 13000] [--rounds 3] [--dir /tmp/csr-report-bench]
    .venv/bin/python bench/report_bench.py --quick      # 50 images, 300 pairs: seconds

Writes a synthetic run directory of that size (COCO objects, 640x480 JPEG test images, captions of ~5
sentences / ~70 words scored by CHAIR itself, every pair with its candidates' per-sentence rewards), then
times report_html.write_html on it (the data, the thumbnails, the page) and prints the seconds (wall and
CPU: the CPU time does not depend on what else the machine runs), the page's size and the share of it that is
thumbnails; when Chromium and playwright are there, also how long headless Chromium takes to have the page
ready and to apply a filter. Numbers go to bench/results/report_bench.json (--out to change). Nothing is
downloaded; the run directory is reused when it exists.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_bench import env_info, write_result  # noqa: E402

from csr_vlm.benchmarks.chair import compute_chair, load_vocabulary  # noqa: E402
from csr_vlm.data import write_json, write_jsonl  # noqa: E402

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


def browser_seconds(page: Path) -> dict | None:
    """Seconds headless Chromium takes to have the page ready, and to apply the "removed" filter; None without
    Chromium or playwright."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    if not chromium:
        return None
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1200, "height": 800})
        start = time.time()
        tab.goto(page.resolve().as_uri())
        tab.wait_for_selector("body[data-ready='1']", timeout=120_000)
        ready = time.time() - start
        tab.click("#tabs button[data-tab=images]")
        start = time.time()
        tab.select_option("#filter", "removed")
        tab.inner_text("#image-count")
        filtered = time.time() - start
        browser.close()
    return {"ready_s": round(ready, 2), "filter_s": round(filtered, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=13000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default="/tmp/csr-report-bench")
    parser.add_argument("--quick", action="store_true", help="50 images and 300 pairs (in --dir + '-quick')")
    parser.add_argument("--out", help="result JSON (default bench/results/report_bench.json)")
    args = parser.parse_args(argv)
    from csr_vlm.report_html import write_html

    root = Path(args.dir + ("-quick" if args.quick else ""))
    images, pairs = (50, 300) if args.quick else (args.images, args.pairs)
    if not (root / "run" / "manifest.json").is_file():
        start = time.time()
        make_run(root, images, pairs, args.rounds)
        print(f"synthetic run written in {time.time() - start:.1f} s: {root / 'run'}")
    start, cpu = time.time(), time.process_time()
    out = write_html(root / "run")
    seconds, cpu = time.time() - start, time.process_time() - cpu
    text = out.read_text()
    thumbs = sum(len(part.split('"', 1)[0]) for part in text.split("data:image/jpeg;base64,")[1:])
    result = {"images": images, "pairs": pairs, "rounds": args.rounds, "write_s": round(seconds, 2),
              "write_cpu_s": round(cpu, 2), "page_mib": round(out.stat().st_size / 2**20, 2),
              "thumbnails_mib": round(thumbs / 2**20, 2), "browser": browser_seconds(out), "env": env_info(),
              "command": "python bench/report_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    print(f"report.html: {seconds:.1f} s ({cpu:.1f} s CPU), {result['page_mib']:.1f} MiB "
          f"({result['thumbnails_mib']:.1f} MiB of it thumbnails) for {images} images and {pairs} pairs")
    if result["browser"]:
        print(f"headless Chromium: ready in {result['browser']['ready_s']:.1f} s, "
              f"a filter in {result['browser']['filter_s']:.2f} s")
    print(f"wrote {write_result('report_bench', result, Path(args.out) if args.out else None)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
