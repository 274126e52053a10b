"""Our sentence search (csr_vlm.search.driver.search_prompt) against the official CSR code's cost structure, same tree.

Baseline (written here, after the official code's sampling and scoring steps): one `model.generate` call per
tree node on the freshly re-encoded image + prompt + all previous sentences, batch 1, sampling with
num_return_sequences=K; the non-final children of a depth are pruned to keep_top best + keep_bottom worst by
cumulative self-score (mean raw token log-prob); afterwards CLIP scores every sentence once with its image
(CLIPProcessor(text, image) -> CLIPModel -> logits_per_image, i.e. the image is re-encoded per sentence).
Ours: search.mode=paper with the same K, keep_top/keep_bottom, max_sentences and max_new_tokens.

Same work on random weights: EOS and every sentence-delimiter token are suppressed on both sides (and the
baseline also gets min_new_tokens=max_new_tokens), so every sentence is exactly max_new_tokens tokens and
both build the same tree: 1 + keep*(max_sentences-1) expansions of K sentences. Filters and the repeat rule
are off, so every candidate is kept and scored. A batched row runs search_prompts over --batch prompts at once.

Memory: a fresh subprocess per kind loads the models, resets the peak RSS (/proc/self/clear_refs 5), runs one
search and reports VmHWM - VmRSS before it (tracemalloc does not see torch's allocations).

    .venv/bin/python bench/search_bench.py            # LLaVA-1.5 geometry (576 image tokens), 5 paired runs
    .venv/bin/python bench/search_bench.py --quick    # tiny geometry, a few seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
FULL = dict(image_size=336, patch_size=14, text_hidden=256, text_layers=4)  # LLaVA-1.5 geometry: 576 image tokens
QUICK = dict(image_size=64, patch_size=8, text_hidden=64, text_layers=2)  # 64 image tokens
PROMPT = "Describe this image in detail."


def env_info() -> dict:
    import transformers

    info = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "machine": platform.machine()}
    try:
        import trl

        info["trl"] = trl.__version__
    except ImportError:
        pass
    return info


def write_result(name: str, data: dict, out: Path | None = None) -> Path:
    path = out or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    return path


def build_models(root: Path, geometry: dict) -> Path:
    """Random-weight llava (policy/) and CLIP of the same image geometry (clip/) under root."""
    from csr_vlm.models.tiny import build_clip, build_llava

    torch.manual_seed(0)
    model, proc = build_llava(**geometry)
    clip, clip_proc = build_clip(image_size=geometry["image_size"], patch_size=geometry["patch_size"])
    for name, m, p in (("policy", model, proc), ("clip", clip, clip_proc)):
        m.save_pretrained(root / name)
        p.save_pretrained(root / name)
    return root


def load_models(root: Path, ragged: bool = False):
    """The policy and CLIP; on the uniform tree no sentence may stop before max_new_tokens (see module docstring),
    on the ragged one sentences end only at RAGGED ids (`ragged_ends`)."""
    from csr_vlm.config import ModelConfig
    from csr_vlm.models import ClipScorer, load_policy, sentence_end_ids

    policy = load_policy(ModelConfig(path=str(root / "policy"), device="cpu", dtype="float32"))
    scorer = ClipScorer(str(root / "clip"), device="cpu", dtype="float32")
    forced = set(type(policy).suppressed_ids(policy)) | set(policy.eos_ids) \
        | set(sentence_end_ids(policy.tokenizer, [".", "!", "?", "\n"]))
    if ragged:
        forced -= set(ragged_ends(policy))
    forced = sorted(forced)
    policy.suppressed_ids = lambda: forced  # instance attribute: the search asks the policy what to suppress
    return policy, scorer


RAGGED = dict(end_every=12, max_new_tokens=40)
"""The ragged tree: one token id in 12 ends a sentence, so on random weights sentence lengths are geometric with a
mean near 12 tokens, capped at 40 (COCO captions: 5 to 40 tokens a sentence), and every row of a step ends at its
own time, as on real trees."""


def ragged_ends(policy) -> list[int]:
    """The ids that end a sentence on the ragged tree (the same set on both sides)."""
    special = set(type(policy).suppressed_ids(policy)) | set(policy.eos_ids)
    return [i for i in range(len(policy.tokenizer)) if i % RAGGED["end_every"] == 0 and i not in special]


def make_image(size: int, seed: int = 0):
    from PIL import Image

    torch.manual_seed(seed)
    arr = (torch.rand(size, size, 3) * 255).to(torch.uint8).numpy()
    return Image.fromarray(arr, "RGB")


def make_cfg(k: int = 5, keep_top: int = 1, keep_bottom: int = 2, sentences: int = 6, tokens: int = 20):
    from csr_vlm.config import load_config

    return load_config(None, ["search.mode=paper", "search.sampler=sample", f"search.num_candidates={k}",
                              f"search.keep_top={keep_top}", f"search.keep_bottom={keep_bottom}",
                              f"search.max_sentences={sentences}", f"search.max_new_tokens={tokens}",
                              "search.filters=[]", "reward.repeat_neutral=false"])


# ---------------------------------------------------------------------------- the two searches


def run_ours(policy, scorer, image, cfg, seed: int, ends: list[int] | None = None) -> dict:
    from csr_vlm.search.driver import search_prompt
    from csr_vlm.search.hf_engine import HFEngine
    from csr_vlm.search.types import Query

    engine = HFEngine(policy, cfg.search)  # scans the vocabulary for sentence ends once, outside the timing
    if ends is not None:
        engine.bounds = ends  # a plain id list: a sentence ends at these tokens (the ragged tree)
    t0 = time.perf_counter()
    result = search_prompt(engine, scorer, Query(image, PROMPT, seed), cfg.search, cfg.reward)
    wall = time.perf_counter() - t0
    st = result.stats
    sentences = st["events"].get("candidates", 0)
    return {"wall_s": wall, "tokens_forwarded": st["tokens_forwarded"], "tokens_minimal": st["tokens_minimal"],
            "tokens_generated": st["tokens_generated"], "sentences": sentences, "clip_s": st["time"].get("score", 0.0),
            "answers": len(result.answers), "phase_s": st["time"]}


def run_ours_batch(policy, scorer, image, cfg, seed: int, batch: int) -> dict:
    """search_prompts over `batch` prompts at once (search.prompt_batch_size in `csr generate`); per-prompt time."""
    from csr_vlm.search.driver import search_prompts
    from csr_vlm.search.hf_engine import HFEngine
    from csr_vlm.search.types import Query

    engine = HFEngine(policy, cfg.search)
    t0 = time.perf_counter()
    results = search_prompts(engine, scorer, [Query(image, PROMPT, seed * 1000 + i) for i in range(batch)], cfg.search,
                             cfg.reward)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "per_prompt_s": wall / batch, "batch": batch,
            "tokens_generated": sum(r.stats["tokens_generated"] for r in results)}


def run_baseline(policy, scorer, image, cfg, seed: int, ends: list[int] | None = None) -> dict:
    """The official code's cost structure: one generate per node on the re-encoded prefix, CLIP per sentence
    (`scorer`'s CLIP model and processor, called the official way).
    With `ends` (the ragged tree) sentences stop at those ids; a finished row pads until the longest one ends."""
    clip, clip_proc = scorer.model, scorer.processor
    s = cfg.search
    tok = policy.tokenizer
    stop_at = dict(eos_token_id=ends) if ends is not None else \
        dict(min_new_tokens=s.max_new_tokens, eos_token_id=policy.eos_ids + policy.delimiter_ids(s.delimiters))
    gen_kwargs = dict(do_sample=True, temperature=s.temperature, top_p=s.top_p, num_return_sequences=s.num_candidates,
                      max_new_tokens=s.max_new_tokens, **stop_at,
                      suppress_tokens=policy.suppressed_ids(), pad_token_id=tok.pad_token_id,
                      output_logits=True, return_dict_in_generate=True)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    nodes = [("", 0.0)]  # (answer text so far, cumulative self-score)
    all_sentences, forwarded, generated, calls = [], 0, 0, 0
    for depth in range(s.max_sentences):
        children = []
        for text, cum in nodes:
            batch = policy.processor(images=[[image]], text=[policy.prompt_text(PROMPT, text)],
                                     return_tensors="pt").to(policy.model.device)
            with torch.inference_mode():
                out = policy.model.generate(**batch, **gen_kwargs)
            calls += 1
            prefix = batch["input_ids"].shape[1]
            new = out.sequences[:, prefix:]
            forwarded += new.shape[0] * (prefix + new.shape[1] - 1)  # prefix expanded K times, last token not fed
            logp = torch.stack(out.logits, 1).float().log_softmax(-1).gather(-1, new[..., None])[..., 0]
            for row in range(new.shape[0]):
                n = _until_end(new[row].tolist(), stop_at["eos_token_id"])  # padding after the end is not generated
                generated += n
                sent = tok.decode(new[row, :n], skip_special_tokens=True)
                all_sentences.append(sent)
                children.append((text + sent, cum + float(logp[row, :n].mean())))
        if depth == s.max_sentences - 1:
            break
        children.sort(key=lambda c: -c[1])
        if len(children) >= s.num_candidates:
            children = children[:s.keep_top] + children[len(children) - s.keep_bottom:]
        nodes = children
    gen_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    for sent in all_sentences:  # official score.py: processor(text, image) -> logits_per_image, one at a time
        inputs = clip_proc(text=[sent.strip() or " "], images=[image], return_tensors="pt", padding=True,
                           truncation=True).to(clip.device)
        with torch.inference_mode():
            _ = clip(**inputs).logits_per_image
    clip_s = time.perf_counter() - t1
    return {"wall_s": time.perf_counter() - t0, "generate_s": gen_s, "clip_s": clip_s, "calls": calls,
            "tokens_forwarded": forwarded, "tokens_generated": generated, "sentences": len(all_sentences)}


def _until_end(tokens: list[int], ends: list[int]) -> int:
    """Tokens of a generated row up to and including its first end token (all of them if none)."""
    stop = set(ends)
    return next((i + 1 for i, t in enumerate(tokens) if t in stop), len(tokens))


# ---------------------------------------------------------------------------- memory (subprocess)


def measure_memory(root: Path, quick: bool, threads: int) -> dict:
    """Peak RSS (MiB) of one search of each kind, each in a fresh process (see memory_child)."""
    out = {}
    for kind in ("ours", "baseline"):
        cmd = [sys.executable, __file__, "--_memory", kind, "--_root", str(root), "--threads", str(threads)]
        if quick:
            cmd.append("--quick")
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"method": "fresh subprocess per kind: models loaded, peak RSS reset (/proc/self/clear_refs 5), one "
                      "search; search_peak_mb = VmHWM during the search - VmRSS before it; process_peak_mb = "
                      "ru_maxrss of the whole process (includes model loading)", **out}


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def memory_child(kind: str, root: Path, quick: bool) -> None:
    import gc

    policy, scorer = load_models(root)
    image = make_image(QUICK["image_size"] if quick else FULL["image_size"])
    cfg = make_cfg()
    gc.collect()
    before = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak RSS (VmHWM) to the current RSS
    if kind == "ours":
        run_ours(policy, scorer, image, cfg, seed=0)
    else:
        run_baseline(policy, scorer, image, cfg, seed=0)
    print(json.dumps({"search_peak_mb": round((_status_kb("VmHWM") - before) / 1024, 1),
                      "rss_before_mb": round(before / 1024, 1),
                      "process_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


# ---------------------------------------------------------------------------- profile


def profile_ours(policy, scorer, image, cfg, top: int = 12) -> list[dict]:
    """torch.profiler top ops (self CPU time) of one search of ours."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run_ours(policy, scorer, image, cfg, seed=99)
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]
    return [{"op": e.key, "self_cpu_ms": round(e.self_cpu_time_total / 1000, 1), "calls": e.count} for e in rows]


# ---------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny geometry, 2 paired runs (a few seconds)")
    ap.add_argument("--repeats", type=int, default=None, help="paired runs (default 5, quick 2)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    ap.add_argument("--memory", action=argparse.BooleanOptionalAction, default=None,
                    help="peak-memory subprocesses (default: on, off with --quick)")
    ap.add_argument("--batch", type=int, default=4, help="prompts searched together for the batched row (0: skip)")
    ap.add_argument("--profile", action="store_true", help="add torch.profiler top ops of our search")
    ap.add_argument("--ragged", action=argparse.BooleanOptionalAction, default=True,
                    help="also the ragged tree (sentences of random lengths, RAGGED)")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/search_bench.json)")
    ap.add_argument("--_memory", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_root", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args._memory:
        memory_child(args._memory, Path(args._root), args.quick)
        return {}
    geometry = QUICK if args.quick else FULL
    repeats = args.repeats or (2 if args.quick else 5)
    with tempfile.TemporaryDirectory() as tmp:
        root = build_models(Path(tmp), geometry)
        policy, scorer = load_models(root)
        image = make_image(geometry["image_size"])
        cfg = make_cfg()
        run_ours(policy, scorer, image, cfg, seed=1000)  # warm-up (first-call allocations, lazy imports)
        pairs, batched = [], []
        for i in range(repeats):
            pairs.append((run_ours(policy, scorer, image, cfg, seed=i),
                          run_baseline(policy, scorer, image, cfg, seed=i)))
            if args.batch:
                batched.append(run_ours_batch(policy, scorer, image, cfg, seed=i, batch=args.batch))
        ragged = run_ragged(root, image, repeats) if args.ragged else None
        want_memory = args.memory if args.memory is not None else not args.quick
        memory = measure_memory(root, args.quick, args.threads) if want_memory else None
        prof = profile_ours(policy, scorer, image, cfg) if args.profile else None
    result = summarize(pairs, geometry, cfg, memory, prof)
    if batched:
        per_prompt = statistics.median(b["per_prompt_s"] for b in batched)
        result["batched"] = {"batch": args.batch, "per_prompt_s": per_prompt,
                             "wall_ratio": statistics.median(p[1]["wall_s"] / b["per_prompt_s"]
                                                             for p, b in zip(pairs, batched)),
                             "tokens_generated": batched[0]["tokens_generated"], "runs": batched}
    if ragged:
        result["ragged"] = ragged
    result["env"] = env_info()
    result["command"] = "python bench/search_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print_table(result)
    write_result("search_bench", result, args.out)
    return result


def run_ragged(root: Path, image, repeats: int) -> dict:
    """The ragged tree: ours (finished rows leave the batch, search/ragged.py), ours with every row forwarded to
    the step's end (as before), and the official cost structure; each tree is drawn afresh per seed, so the
    ratios are medians over seeds."""
    from csr_vlm.search import ragged as compaction

    policy, scorer = load_models(root, ragged=True)
    ends = ragged_ends(policy)
    cfg = make_cfg(tokens=RAGGED["max_new_tokens"])
    run_ours(policy, scorer, image, cfg, seed=1000, ends=ends)  # warm-up
    runs = []
    for i in range(repeats):
        ours = run_ours(policy, scorer, image, cfg, seed=i, ends=ends)
        saved, compaction.COMPACT_AT = compaction.COMPACT_AT, float("inf")
        try:
            whole = run_ours(policy, scorer, image, cfg, seed=i, ends=ends)
        finally:
            compaction.COMPACT_AT = saved
        base = run_baseline(policy, scorer, image, cfg, seed=i, ends=ends)
        runs.append({"ours": ours, "ours_whole_rows": whole, "baseline": base})
    med = statistics.median

    def ratio(run, kind):
        return run[kind]["tokens_forwarded"] / run[kind]["tokens_minimal"]

    return {"end_every": RAGGED["end_every"], "max_new_tokens": RAGGED["max_new_tokens"],
            "mean_sentence_tokens": med(r["ours"]["tokens_generated"] / r["ours"]["sentences"] for r in runs),
            "ours_forwarded_over_minimal": med(ratio(r, "ours") for r in runs),
            "whole_rows_forwarded_over_minimal": med(ratio(r, "ours_whole_rows") for r in runs),
            "wall_s": {"ours": med(r["ours"]["wall_s"] for r in runs),
                       "ours_whole_rows": med(r["ours_whole_rows"]["wall_s"] for r in runs),
                       "baseline": med(r["baseline"]["wall_s"] for r in runs)},
            "wall_ratio": med(r["baseline"]["wall_s"] / r["ours"]["wall_s"] for r in runs),
            "wall_ratio_per_token": med((r["baseline"]["wall_s"] / r["baseline"]["tokens_generated"])
                                        / (r["ours"]["wall_s"] / r["ours"]["tokens_generated"]) for r in runs),
            "targets": {"forwarded_over_minimal_max": 1.05}, "runs": runs}


def summarize(pairs, geometry, cfg, memory, prof) -> dict:
    med = statistics.median
    ours = [p[0] for p in pairs]
    base = [p[1] for p in pairs]
    clip_rate_ours = [o["sentences"] / o["clip_s"] for o in ours]
    clip_rate_base = [b["sentences"] / b["clip_s"] for b in base]
    s = cfg.search
    return {
        "geometry": {**geometry, "image_tokens": (geometry["image_size"] // geometry["patch_size"]) ** 2},
        "tree": {"candidates": s.num_candidates, "keep": s.keep_top + s.keep_bottom, "sentences": s.max_sentences,
                 "tokens_per_sentence": s.max_new_tokens},
        "repeats": len(pairs),
        "wall_s": {"ours": med(o["wall_s"] for o in ours), "baseline": med(b["wall_s"] for b in base)},
        "wall_ratio": med(b["wall_s"] / o["wall_s"] for o, b in pairs),
        "baseline_generate_s": med(b["generate_s"] for b in base), "baseline_calls": base[0]["calls"],
        "tokens": {"ours_forwarded": ours[0]["tokens_forwarded"], "minimal": ours[0]["tokens_minimal"],
                   "ours_generated": ours[0]["tokens_generated"], "baseline_forwarded": base[0]["tokens_forwarded"],
                   "baseline_generated": base[0]["tokens_generated"],
                   "ours_forwarded_over_minimal": ours[0]["tokens_forwarded"] / ours[0]["tokens_minimal"],
                   "baseline_forwarded_over_minimal": base[0]["tokens_forwarded"] / ours[0]["tokens_minimal"]},
        "sentences": {"ours": ours[0]["sentences"], "baseline": base[0]["sentences"]},
        "clip_sentences_per_s": {"ours": med(clip_rate_ours), "baseline": med(clip_rate_base)},
        "clip_ratio": med(o / b for o, b in zip(clip_rate_ours, clip_rate_base)),
        "ours_phase_s": ours[len(ours) // 2]["phase_s"],
        "memory": memory,
        "profile_ours": prof,
        "targets": {"wall_ratio": 10.0, "forwarded_over_minimal_max": 1.1, "clip_ratio": 20.0},
        "runs": [{"ours": o, "baseline": b} for o, b in pairs],
    }


def print_table(r: dict) -> None:
    t = r["tokens"]
    print(f"search bench: {r['geometry']['image_tokens']} image tokens, LM {r['geometry']['text_layers']}x"
          f"{r['geometry']['text_hidden']}, tree {r['tree']}, median of {r['repeats']} paired runs, "
          f"{r['env']['torch_threads']} thread(s)")
    rows = [("wall time / search (s)", f"{r['wall_s']['ours']:.3f}", f"{r['wall_s']['baseline']:.3f}",
             f"{r['wall_ratio']:.1f}x (target >= 10x)"),
            *([(f"  ours, {r['batched']['batch']} prompts batched", f"{r['batched']['per_prompt_s']:.3f}",
                 f"{r['wall_s']['baseline']:.3f}", f"{r['batched']['wall_ratio']:.1f}x per prompt")]
              if r.get("batched") else []),
            ("LM tokens forwarded", t["ours_forwarded"], t["baseline_forwarded"],
             f"ours/minimal {t['ours_forwarded_over_minimal']:.3f} (target <= 1.1)"),
            ("tokens generated", t["ours_generated"], t["baseline_generated"], f"minimal {t['minimal']}"),
            ("CLIP sentences/s", f"{r['clip_sentences_per_s']['ours']:.0f}",
             f"{r['clip_sentences_per_s']['baseline']:.0f}", f"{r['clip_ratio']:.1f}x (target >= 20x)")]
    if r["memory"]:
        m = r["memory"]
        rows.append(("peak RSS MiB during search", m["ours"]["search_peak_mb"], m["baseline"]["search_peak_mb"],
                     f"process peak {m['ours']['process_peak_mb']:.0f} / {m['baseline']['process_peak_mb']:.0f}"))
    print(f"| {'measure':<28} | {'ours':>14} | {'baseline':>14} | {'ratio / note':<40} |")
    print(f"|{'-' * 30}|{'-' * 16}|{'-' * 16}|{'-' * 42}|")
    for name, a, b, note in rows:
        print(f"| {name:<28} | {a!s:>14} | {b!s:>14} | {note:<40} |")
    if r.get("ragged"):
        g = r["ragged"]
        print(f"ragged tree (a sentence ends at 1 token id in {g['end_every']}, cap {g['max_new_tokens']}; mean "
              f"{g['mean_sentence_tokens']:.1f} tokens): forwarded/minimal {g['ours_forwarded_over_minimal']:.3f} "
              f"(every row to the step's end: {g['whole_rows_forwarded_over_minimal']:.3f}; target <= 1.05); wall "
              f"{g['wall_s']['ours']:.3f} s vs {g['wall_s']['ours_whole_rows']:.3f} s, official cost structure "
              f"{g['wall_s']['baseline']:.3f} s: {g['wall_ratio']:.1f}x ({g['wall_ratio_per_token']:.1f}x per token)")
    if r.get("profile_ours"):
        print("torch.profiler, our search, top self-CPU ops:")
        for e in r["profile_ours"]:
            print(f"  {e['self_cpu_ms']:>9.1f} ms  {e['calls']:>6}  {e['op']}")


if __name__ == "__main__":
    main()
