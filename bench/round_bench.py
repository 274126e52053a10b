"""One whole CSR round (csr_vlm.loop, loop.rounds=1): wall time and peak memory of each stage, from manifest.json.

Default: the --quick toy world (csr_vlm.toyworld.build, reused from --world when already built) with
configs/toy-quick.yaml: round_0 eval + dev_eval (the base model), then round_1 generate -> train -> eval ->
dev_eval. --quick: random-weight tiny llava (csr_vlm.models.tiny.build_tiny), 2 prompts, generate -> train only
(no evaluation data), to exercise the script in seconds.

Plan against measured (default mode): `csr plan` on the same config in a child process (a dry run on 8 of the
prompts, one batch of pairs, 8 images per evaluation) projects rounds 0 and 1, which the loop then runs; the
JSON's "plan" holds both per stage and round and the relative error (target: round 1 within 25 %).

The world is built (or found built) by `csr toyworld build` in a child process. Peak memory is the manifest's
`peak_rss_mb`: ru_maxrss of the loop process *so far*, so a stage's value is max(itself, every earlier stage);
a stage that does not raise it used no more than the stages before it.

    .venv/bin/python bench/round_bench.py [--world /tmp/csr-bench-world]
    .venv/bin/python bench/round_bench.py --quick
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

from search_bench import env_info, torch, write_result  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
QUICK_OVERRIDES = ["loop.rounds=1", "loop.evaluate=false", "loop.select_on=", "data.max_prompts=2",
                   "search.num_candidates=2", "search.max_sentences=2", "search.max_new_tokens=8",
                   "train.lora_r=4", "train.lora_alpha=8", "model.device=cpu", "reward.clip_batch_size=8"]


def toy_config(world: Path, out: Path):
    """configs/toy-quick.yaml with its world paths pointed at `world`, one round, output in `out`."""
    from csr_vlm.config import load_config

    text = (REPO / "configs" / "toy-quick.yaml").read_text().replace("worlds/toy-seed0-quick", str(world))
    path = out.parent / "toy-quick-bench.yaml"
    path.write_text(text)
    return load_config(path, ["loop.rounds=1", f"out={out}"])


def quick_config(root: Path, out: Path):
    from csr_vlm.config import load_config
    from csr_vlm.models.tiny import build_tiny

    build_tiny(root, family="llava", seed=0)
    return load_config(None, [f"model.path={root / 'policy'}", f"reward.clip_path={root / 'clip'}",
                              f"data.prompts={root / 'prompts.jsonl'}", f"data.image_root={root}", f"out={out}",
                              *QUICK_OVERRIDES])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="random tiny llava, 2 prompts, generate + train only")
    ap.add_argument("--world", type=Path, default=Path(tempfile.gettempdir()) / "csr-bench-toy-quick-world",
                    help="toy world directory (built with --quick settings if absent; reused if built)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/round_bench.json)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    world_s, planned = None, None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "loop"
        if args.quick:
            cfg = quick_config(Path(tmp) / "tiny", out)
        else:  # built in a child process so the world's training does not count in the loop's peak RSS
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "csr_vlm", "toyworld", "build", "--out", str(args.world), "--seed",
                            "0", "--quick"], check=True)
            world_s = time.perf_counter() - t0
            cfg = toy_config(args.world, out)
            planned = run_plan(out.parent / "toy-quick-bench.yaml", Path(tmp))
        from csr_vlm import loop

        t0 = time.perf_counter()
        loop.run(cfg)
        total = time.perf_counter() - t0
        manifest = json.loads((out / "manifest.json").read_text())
    stages = {name: {k: e.get(k) for k in ("status", "seconds", "peak_rss_mb", "peak_cuda_mb", "numbers") if k in e}
              for name, e in manifest["stages"].items()}
    result = {"mode": "quick (random tiny llava)" if args.quick else "toy world --quick, configs/toy-quick.yaml",
              "world_build_s": world_s, "loop_wall_s": total, "stages": stages,
              "round_1_s": sum(e.get("seconds") or 0 for n, e in stages.items() if n.startswith("round_1/")),
              "versions": manifest.get("versions"), "env": env_info(),
              "command": "python bench/round_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    if planned:
        result["plan"] = compare(planned, stages)
    print(f"round bench ({result['mode']}): loop {total:.1f} s"
          + (f", world build/reuse {world_s:.1f} s" if world_s is not None else ""))
    print(f"| {'stage':<18} | {'status':<7} | {'wall s':>8} | {'peak RSS MiB (so far)':>22} |")
    print(f"|{'-' * 20}|{'-' * 9}|{'-' * 10}|{'-' * 24}|")
    for name, e in stages.items():
        seconds, peak = e.get("seconds") or 0, e.get("peak_rss_mb") or 0
        print(f"| {name:<18} | {e.get('status', ''):<7} | {seconds:>8.2f} | {peak:>22.0f} |")
    if planned:
        print_plan_vs_measured(result["plan"])
    write_result("round_bench", result, args.out)
    return result


def run_plan(config: Path, tmp: Path) -> dict:
    """`csr plan` of one round on the config, in a child process as a user runs it; its JSON plus its wall time."""
    path = tmp / "plan.json"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "csr_vlm", "plan", "--config", str(config), "loop.rounds=1",
                    f"out={tmp / 'plan-out'}", "--out", str(path)], check=True)
    return {**json.loads(path.read_text()), "command_s": time.perf_counter() - t0}


def compare(plan: dict, stages: dict) -> dict:
    """Projected against measured seconds of rounds 0 and 1 and of their stages; error = projected / measured - 1.
    A stage's projection includes its first-use cost in the round that pays it (round 0: the evaluations; round 1:
    generate and train), as the round totals do."""
    rows = {}
    for r in plan["rounds"]:
        if r["round"] > 1:
            continue
        for name in r["stages"]:
            p = plan["stages"][name]
            first = p["first_use_s"] if (r["round"] == 0) == (name in ("eval", "dev_eval")) else 0.0
            measured = (stages.get(f"round_{r['round']}/{name}") or {}).get("seconds")
            rows[f"round_{r['round']}/{name}"] = {"projected_s": p["seconds"] + first, "measured_s": measured,
                                                  "projected_peak_mb": p["peak_mb"],
                                                  "error": (p["seconds"] + first) / measured - 1 if measured else None}
    out = {"stages": rows, "dry_run_s": plan["dry_run_s"], "plan_command_s": plan["command_s"], "target_error": 0.25}
    for r in plan["rounds"]:
        if r["round"] <= 1:
            measured = sum(v["measured_s"] or 0 for k, v in rows.items() if k.startswith(f"round_{r['round']}/"))
            out[f"round_{r['round']}"] = {"projected_s": r["seconds"], "measured_s": measured,
                                          "error": r["seconds"] / measured - 1 if measured else None}
    return out


def print_plan_vs_measured(c: dict) -> None:
    print(f"csr plan (dry run {c['dry_run_s']:.1f} s, command {c['plan_command_s']:.1f} s) against the measured loop:")
    print(f"| {'stage':<18} | {'projected s':>11} | {'measured s':>10} | {'error':>7} |")
    print(f"|{'-' * 20}|{'-' * 13}|{'-' * 12}|{'-' * 9}|")
    rounds = [(k, c[k]) for k in ("round_0", "round_1") if k in c]
    for name, r in [*c["stages"].items(), *rounds]:
        err = "-" if r["error"] is None else f"{r['error']:+.0%}"
        print(f"| {name:<18} | {r['projected_s']:>11.2f} | {(r['measured_s'] or 0):>10.2f} | {err:>7} |")


if __name__ == "__main__":
    main()
