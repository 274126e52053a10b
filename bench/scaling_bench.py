"""How our search's time grows with sentences per answer, candidates per step and image tokens.

Same setup as search_bench.py (random-weight llava, EOS and delimiters suppressed so every sentence is exactly
--tokens tokens, filters off). For each setting: wall time of the search (best of --repeats: other load on a
shared machine only adds time), tokens generated, and time per generated token. Linear cost in tokens generated
means time/token stays flat as answers get longer; a cost quadratic in answer length would make time/token grow
in proportion to the answer length.

    .venv/bin/python bench/scaling_bench.py            # LM 4x256, 576 image tokens, best of 3 per setting
    .venv/bin/python bench/scaling_bench.py --quick
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from search_bench import (  # noqa: E402  # noqa: E402
    FULL,
    QUICK,
    build_models,
    env_info,
    load_models,
    make_cfg,
    make_image,
    run_ours,
    torch,
    write_result,
)


def measure(policy, scorer, image, cfg, repeats: int) -> dict:
    """Best of `repeats` (the shared machine's other load only ever adds time), with the median beside it."""
    runs = [run_ours(policy, scorer, image, cfg, seed=i) for i in range(repeats)]
    best = min(runs, key=lambda r: r["wall_s"])
    gen = runs[0]["tokens_generated"]
    return {"wall_s": best["wall_s"], "median_wall_s": statistics.median(r["wall_s"] for r in runs),
            "tokens_generated": gen, "tokens_forwarded": runs[0]["tokens_forwarded"],
            "ms_per_token": 1000 * best["wall_s"] / gen, "phase_s": best["phase_s"]}


def sweep(root: Path, geometry: dict, settings: list[dict], tokens: int, repeats: int, axis: str) -> list[dict]:
    policy, scorer = load_models(root)
    image = make_image(geometry["image_size"])
    run_ours(policy, scorer, image, make_cfg(tokens=tokens), seed=1000)  # warm-up
    rows = []
    for s in settings:
        cfg = make_cfg(k=s.get("k", 5), sentences=s.get("sentences", 6), tokens=tokens)
        row = {"axis": axis, "image_tokens": (geometry["image_size"] // geometry["patch_size"]) ** 2,
               "candidates": cfg.search.num_candidates, "sentences": cfg.search.max_sentences,
               **measure(policy, scorer, image, cfg, repeats)}
        rows.append(row)
        print(f"| {axis:<12} | {row['image_tokens']:>6} | {row['candidates']:>3} | {row['sentences']:>3} | "
              f"{row['tokens_generated']:>6} | {row['wall_s']:>8.3f} | {row['ms_per_token']:>8.3f} |", flush=True)
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny geometry, few settings, 1 repeat")
    ap.add_argument("--repeats", type=int, default=None, help="runs per setting, best kept (default 3, quick 1)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    ap.add_argument("--tokens", type=int, default=20, help="tokens per sentence")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/scaling_bench.json)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (1 if args.quick else 3)
    base = QUICK if args.quick else FULL
    sentences = [2, 4] if args.quick else [2, 4, 8, 12]
    candidates = [2, 5] if args.quick else [2, 5, 10]
    sizes = [32, 64] if args.quick else [112, 224, 336]  # image tokens: quick 16, 64; full 64, 256, 576
    images = [dict(base, image_size=size) for size in sizes]
    print(f"| {'axis':<12} | {'img':>6} | {'K':>3} | {'S':>3} | {'tokens':>6} | {'wall s':>8} | {'ms/tok':>8} |")
    print(f"|{'-' * 14}|{'-' * 8}|{'-' * 5}|{'-' * 5}|{'-' * 8}|{'-' * 10}|{'-' * 10}|")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = build_models(Path(tmp) / "base", base)
        rows += sweep(root, base, [{"sentences": s} for s in sentences], args.tokens, repeats, "sentences")
        rows += sweep(root, base, [{"k": k} for k in candidates], args.tokens, repeats, "candidates")
        for i, geo in enumerate(images):
            r = build_models(Path(tmp) / f"img{i}", geo)
            rows += sweep(r, geo, [{}], args.tokens, repeats, "image_tokens")
    by_s = [r for r in rows if r["axis"] == "sentences"]
    per_token_growth = by_s[-1]["ms_per_token"] / by_s[0]["ms_per_token"]
    length_growth = by_s[-1]["sentences"] / by_s[0]["sentences"]
    result = {"geometry": base, "tokens_per_sentence": args.tokens, "repeats": repeats, "rows": rows,
              "sentences_ms_per_token_growth": per_token_growth, "sentences_length_growth": length_growth,
              "env": env_info(),
              "command": "python bench/scaling_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    print(f"answer length x{length_growth:.0f}: time per generated token x{per_token_growth:.2f} "
          f"(linear cost: ~1; quadratic: ~{length_growth:.0f})")
    write_result("scaling_bench", result, args.out)
    return result


if __name__ == "__main__":
    main()
