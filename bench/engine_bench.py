"""The transformers engine against the vLLM engine on the toy world's round-1 prompts, the same search settings.

    .venv/bin/python bench/engine_bench.py [--world DIR] [--prompts N] [--quick] [--out FILE]

Each engine runs `csr generate` once in its own process (transformers in .venv, vLLM in .venv-vllm, both
from `bash scripts/setup.sh --vllm`), on configs/toy.yaml's round-1 settings (or toy-quick.yaml with --quick)
pointed at the world: the same prompts, K, keep_top/keep_bottom, depth and token caps, plus a second row
with greedy decoding (temperature 0, one candidate plus "stop here"), where both engines build exactly the
same tree. Reported per engine: the process's wall time, the search's own wall time, generated tokens and
tokens/s, vLLM's prefix-cache hit rate, and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_bench import env_info, write_result  # noqa: E402

from csr_vlm.config import load_config  # noqa: E402
from csr_vlm.toyworld.demo import world_overrides  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PYTHONS = {"hf": REPO / ".venv" / "bin" / "python", "vllm": REPO / ".venv-vllm" / "bin" / "python"}
RUN = ("import json, resource, sys, time; from csr_vlm.cli import main; t = time.perf_counter(); "
       "rc = main(['generate', *json.loads(sys.argv[1])]); "
       "print(json.dumps({'rc': rc, 'process_s': time.perf_counter() - t, "
       "'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))")


def world_args(world: Path, config: Path, out: Path, prompts: int) -> list[str]:
    """The config with every world path pointed at `world` (as `csr demo` does)."""
    return ["--config", str(config), *world_overrides(world, load_config(config).loop.dev),
            f"data.max_prompts={prompts}", f"out={out}", "vllm.enforce_eager=true"]


def run(engine: str, args: list[str]) -> dict:
    """One `csr generate` in the engine's environment: its own numbers plus stats.json's."""
    python = PYTHONS[engine]
    if not python.is_file():
        raise SystemExit(f"{python} is missing: run bash scripts/setup.sh --vllm")
    t0 = time.perf_counter()
    proc = subprocess.run([str(python), "-c", RUN, json.dumps([*args, f"search.engine={engine}"])],
                          capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    own = json.loads(proc.stdout.strip().splitlines()[-1])
    out = Path(next(a for a in args if a.startswith("out=")).split("=", 1)[1])
    stats = json.loads((out / "stats.json").read_text())
    search_s = stats["wall_s"]
    return {"engine": engine, "command_s": round(wall, 2), "stage_s": round(own["process_s"], 2),
            "search_s": search_s, "peak_rss_mb": round(own["peak_rss_mb"]),
            "prompts": stats["counts"]["prompts_searched"],
            "pairs": stats["counts"]["pairs"], "tokens_generated": stats["tokens"]["generated"],
            "tokens_per_s": round(stats["tokens"]["generated"] / search_s, 1) if search_s else None,
            "prefix_cache_hit_rate": stats["engine"].get("prefix_cache_hit_rate"), "engine_stats": stats["engine"]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=Path, default=None, help="a built toy world (default: build one here)")
    ap.add_argument("--prompts", type=int, default=None, help="round-1 prompts searched (default 100, quick 8)")
    ap.add_argument("--quick", action="store_true", help="the quick world and toy-quick.yaml, 8 prompts, greedy only")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/engine_bench.json)")
    args = ap.parse_args(argv)
    config = REPO / "configs" / ("toy-quick.yaml" if args.quick else "toy.yaml")
    prompts = args.prompts or (8 if args.quick else 100)
    with tempfile.TemporaryDirectory() as tmp:
        world = args.world or Path(tmp) / "world"
        if args.world is None:  # the world of the config (a full one takes ~5 minutes)
            build = [str(PYTHONS["hf"]), "-m", "csr_vlm", "toyworld", "build", "--out", str(world)]
            subprocess.run(build + (["--quick"] if args.quick else []), check=True, capture_output=True, cwd=REPO)
        rows = []
        modes = [("sampled", []), ("greedy", ["search.temperature=0", "search.num_candidates=2",
                                               "search.offer_end=true"])]
        for mode, extra in modes[1:] if args.quick else modes:  # quick (the tests): greedy, the same tree
            for engine in ("hf", "vllm"):
                base = world_args(world, config, Path(tmp) / f"{mode}-{engine}", prompts) + extra
                rows.append({"mode": mode, **run(engine, base)})
    result = {"world": str(args.world or "quick (built here)"), "config": config.name, "prompts": prompts,
              "rows": rows, "env": env_info(),
              "command": "python bench/engine_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    print(f"engine bench: {prompts} round-1 prompts of the toy world, {config.name}")
    print(f"| {'mode':<8} | {'engine':<6} | {'stage s':>8} | {'search s':>8} | {'tokens':>7} | {'tok/s':>7} | "
          f"{'prefix hit':>10} | {'peak RSS MB':>11} |")
    print("|" + "|".join("-" * w for w in (10, 8, 10, 10, 9, 9, 12, 13)) + "|")
    for r in rows:
        hit = "-" if r["prefix_cache_hit_rate"] is None else f"{r['prefix_cache_hit_rate']:.2f}"
        print(f"| {r['mode']:<8} | {r['engine']:<6} | {r['stage_s']:>8.1f} | {r['search_s']:>8.2f} | "
              f"{r['tokens_generated']:>7} | {r['tokens_per_s']:>7} | {hit:>10} | {r['peak_rss_mb']:>11} |")
    write_result("engine_bench", result, args.out)
    return result


if __name__ == "__main__":
    main()
