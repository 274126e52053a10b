"""`csr plan`: what a run will cost, from a dry run of every stage on a few prompts, before paying for it.

    csr plan --config F [key=value ...] [--ranks N] [--prompts P] [--pairs Q] [--images I] [--out plan.json]

Dry run (in a temporary directory, or --work DIR): `csr generate` on the first P prompts (data.prompts and
data.mix_prompts in their proportion; default: max(search.prompt_batch_size, 4)), `csr train` on the first Q of
those pairs (default: one optimizer step's worth), and each evaluation the loop runs (eval, dev_eval) on I
images. Each stage is split into a fixed part (model loading, saving: the stage's wall time minus its work)
and a per-item part (the search's own wall time per prompt, the Trainer's train_runtime per pair, the time
spent answering per eval job), then projected onto the whole data:

    seconds = fixed + per_item * items / split

with split = --ranks for generate and train (prompts and pairs are sharded over the ranks) and 1 for the
evaluations (rank 0 evaluates alone). Items: every prompt of the config; pairs = pairs per prompt of the dry
run x prompts, times train.num_train_epochs; eval jobs = each task's jobs on the whole evaluation (its plan, made
without a model), each at its task's time per job in the dry run (a caption costs more than a yes/no answer).
A round is generate + train (+ eval when loop.evaluate, + dev_eval when loop.select_on); round 0 is the base
model's evaluations. Each stage runs once on one item first: what that warm-up takes beyond the stage's fixed and
per-item cost (imports, first kernels, the file cache) is its first-use cost, paid once per process, in the first
round that runs the stage (the loop's order: round 0 for the evaluations, round 1 for generate and train).
Peak memory is the dry run's (per rank; it does not grow with the data, only with the batch, so the dry run
uses a full batch where the data allow). Tokens: generated tokens per prompt (per eval job) of the dry run x the
items. Every later round is projected like round 1: the model's size is the same.

Caveats: the projection is linear; answer lengths change from round to round (the trained policy may write
longer or shorter answers), and a dry batch smaller than the configured one makes per-item times pessimistic.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

from .config import load_config
from .data import read_prompts, write_json
from .errors import InputError
from .schema import RunConfig

READS = ("out", "seed", "model", "reward", "search", "vllm", "curate", "train", "eval", "data", "loop")
"""The config sections the plan reads: it dry-runs every stage of the loop."""
SPLIT = {"generate": True, "train": True, "eval": False, "dev_eval": False}
"""Whether the stage's items are shared out over the ranks (the loop evaluates on rank 0 alone)."""


@dataclasses.dataclass
class Measure:
    """One stage of the dry run: what it took and on how many items."""

    stage: str
    wall_s: float
    """The whole stage: loading, work, saving."""
    work_s: float
    """The part that grows with the items (search, train loop, answering)."""
    items: int
    """Prompts searched, pairs trained (x epochs), or eval jobs answered in the dry run."""
    tokens: int
    """Tokens generated in the dry run (train: 0)."""
    peak_mb: float
    """Peak memory of the stage: CUDA when on a GPU, else the process's RSS."""
    memory: str = "rss"
    parts: dict[str, list[float]] | None = None
    """Evaluations: {task: [seconds, jobs, tokens]} of the dry run (a CHAIR caption costs more than a yes/no)."""
    first_use_s: float = 0.0
    """Paid once per process, by the first round that runs the stage (imports, first kernels): see `first_use`."""


def project(m: Measure, items: float | dict[str, float], ranks: int) -> dict:
    """The stage on `items` items and `ranks` ranks: fixed + per_item * items / split (module docstring).

    `items` per task ({task: jobs}, evaluations): each task's jobs at its own dry-run time and tokens per job."""
    fixed = max(m.wall_s - m.work_s, 0.0)
    if isinstance(items, dict):
        rate = {t: (s / n, k / n) for t, (s, n, k) in (m.parts or {}).items() if n}
        mean = (m.work_s / m.items, m.tokens / m.items) if m.items else (0.0, 0.0)
        work = sum(rate.get(t, mean)[0] * n for t, n in items.items())
        tokens = sum(rate.get(t, mean)[1] * n for t, n in items.items())
        by_task, items = dict(items), sum(items.values())
    else:
        work = m.work_s / m.items * items if m.items else 0.0
        tokens = m.tokens / m.items * items if m.items else 0.0
        by_task = None
    split = ranks if SPLIT[m.stage] else 1
    out = {"seconds": fixed + work / split, "first_use_s": m.first_use_s, "fixed_s": fixed,
           "per_item_s": work / items if items else 0.0,
           "items": items, "items_per_rank": items / split, "peak_mb": m.peak_mb, "memory": m.memory,
           "tokens": tokens, "dry": {"items": m.items, "wall_s": m.wall_s, "work_s": m.work_s, "tokens": m.tokens}}
    if by_task is not None:
        out.update(items_by_task=by_task, dry_by_task=m.parts)
    return out


def projection(measures: dict[str, Measure], full: dict[str, float], rounds: int, ranks: int) -> dict:
    """Per stage (projected), per round (sums), and the whole run. `full`: items of each stage on the whole data."""
    stages = {name: project(m, full[name], ranks) for name, m in measures.items()}
    evals = [s for s in ("eval", "dev_eval") if s in stages]
    per_round = [s for s in ("generate", "train", *evals) if s in stages]

    def total(names, first):
        return {"seconds": sum(stages[n]["seconds"] + (stages[n]["first_use_s"] if n in first else 0.0)
                               for n in names),
                "peak_mb": max((stages[n]["peak_mb"] for n in names), default=0.0),
                "tokens": sum(stages[n]["tokens"] for n in names), "stages": names}

    # first-use costs: the evaluations' in round 0 (the loop evaluates the base model first), the rest in round 1
    round_list = ([{"round": 0, **total(evals, evals)}] if evals else []) + \
        [{"round": k, **total(per_round, ("generate", "train") if k == 1 else ())} for k in range(1, rounds + 1)]
    return {"ranks": ranks, "stages": stages, "rounds": round_list,
            "total": {"seconds": sum(r["seconds"] for r in round_list),
                      "hours": sum(r["seconds"] for r in round_list) / 3600,
                      "peak_mb": max(r["peak_mb"] for r in round_list),
                      "tokens": sum(r["tokens"] for r in round_list)}}


# ---------------------------------------------------------------------------- the dry run


@contextlib.contextmanager
def peak_memory(cuda: bool):
    """Yields a dict that gets "peak_mb" (CUDA when on a GPU, else peak RSS since the start, Linux)."""
    box: dict = {}
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()
    clear = Path("/proc/self/clear_refs")
    if not cuda and clear.exists():
        with contextlib.suppress(OSError):
            clear.write_text("5")  # reset VmHWM to the current RSS
    yield box
    if cuda:
        import torch

        box.update(peak_mb=torch.cuda.max_memory_allocated() / 2**20, memory="cuda")
        return
    import resource

    status = Path("/proc/self/status")
    hwm = [int(x.split()[1]) for x in status.read_text().splitlines() if x.startswith("VmHWM:")] \
        if status.exists() else []
    box.update(peak_mb=(hwm[0] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024, memory="rss")


def dry_generate(cfg: RunConfig, prompts: int, mix: int, out: Path, cuda: bool) -> Measure:
    """`csr generate` on the first `prompts` + `mix` prompts; work = the search's own wall time (stats.json)."""
    from . import generate

    data = dataclasses.replace(cfg.data, max_prompts=prompts, max_mix_prompts=mix or None,
                               mix_prompts=cfg.data.mix_prompts if mix else None)
    t0 = time.perf_counter()
    with peak_memory(cuda) as mem:
        generate.run(dataclasses.replace(cfg, data=data, out=str(out), overwrite=True), 1)
    wall = time.perf_counter() - t0
    stats = json.loads((out / "stats.json").read_text())
    return Measure("generate", wall, stats["wall_s"], stats["counts"]["prompts_searched"],
                   stats["tokens"]["generated"], **mem)


def dry_train(cfg: RunConfig, pairs: Path, n: int, out: Path, cuda: bool) -> Measure:
    """`csr train` on the first n pairs; work = the Trainer's train_runtime; items = pairs x epochs."""
    from . import train

    lines = pairs.read_text().splitlines()[:n]
    few = out.parent / "plan_pairs.jsonl"
    few.write_text("".join(line + "\n" for line in lines))
    t0 = time.perf_counter()
    with peak_memory(cuda) as mem:
        train.run(dataclasses.replace(cfg, out=str(out), overwrite=True,
                                      train=dataclasses.replace(cfg.train, pairs=str(few))), 1)
    wall = time.perf_counter() - t0
    logs = [json.loads(x) for x in (out / "train_metrics.jsonl").read_text().splitlines()]
    runtime = next(r["train_runtime"] for r in reversed(logs) if "train_runtime" in r)
    return Measure("train", wall, runtime, round(len(lines) * cfg.train.num_train_epochs), 0, **mem)


def dry_eval(cfg: RunConfig, stage: str, images: int, out: Path, cuda: bool) -> Measure:
    """`csr eval` (stage eval or dev_eval) on `images` images; work = the time answering, items = jobs answered."""
    from .eval import evaluate

    ev = cfg.eval if stage == "eval" else cfg.dev_eval()
    parts: dict[str, list[float]] = {}
    answer_part = evaluate._answer_part

    def timed(policy, part, cap, skipped):
        t = time.perf_counter()
        done = answer_part(policy, part, cap, skipped)
        seconds = time.perf_counter() - t
        for job, _, _ in part:  # a batch's time is shared by its jobs
            parts.setdefault(job["task"], [0.0, 0, 0])[0] += seconds / len(part)
        for job, text in done:
            row = parts[job["task"]]
            row[1] += 1
            row[2] += len(policy.tokenizer(text, add_special_tokens=False)["input_ids"])
        return done

    evaluate._answer_part = timed  # answering is the stage's per-job work; restored below
    try:
        t0 = time.perf_counter()
        with peak_memory(cuda) as mem:
            evaluate.run(dataclasses.replace(cfg, out=str(out), overwrite=True,
                                             eval=dataclasses.replace(ev, num_images=images)), 0)
        wall = time.perf_counter() - t0
    finally:
        evaluate._answer_part = answer_part
    total = [sum(p[i] for p in parts.values()) for i in range(3)]
    return Measure(stage, wall, total[0], int(total[1]), int(total[2]), **mem, parts=parts)


def eval_jobs(cfg: RunConfig, stage: str) -> dict[str, float]:
    """{task: jobs} the whole evaluation asks (its tasks' plans, made without a model)."""
    from .eval import evaluate

    ev = cfg.eval if stage == "eval" else cfg.dev_eval()
    plans = evaluate._plans(dataclasses.replace(cfg, eval=ev), [])
    return {task: float(len(plan.jobs)) for task, plan in plans.items()}


def count_prompts(cfg: RunConfig) -> tuple[int, int]:
    """(prompts, mix prompts) the whole generate stage searches (data.max_prompts / max_mix_prompts applied)."""
    main, _ = read_prompts(cfg.data.prompts, cfg.data.image_root, cfg.data.image_prefix)
    n = len(main) if cfg.data.max_prompts is None else min(len(main), cfg.data.max_prompts)
    mix = 0
    if cfg.data.mix_prompts:
        extra, _ = read_prompts(cfg.data.mix_prompts, cfg.data.image_root, cfg.data.image_prefix)
        mix = len(extra) if cfg.data.max_mix_prompts is None else min(len(extra), cfg.data.max_mix_prompts)
    return n, mix


def dry_run(cfg: RunConfig, work: Path, sizes: dict) -> tuple[dict[str, Measure], dict]:
    """Every stage the loop runs, in the loop's order, on a few items, each after a one-item warm-up (first_use);
    (measures, items of each stage on the whole data)."""
    cuda = cfg.model.device.startswith("cuda") or (cfg.model.device == "auto" and _has_cuda())
    n, mix = count_prompts(cfg)
    measures: dict[str, Measure] = {}
    full: dict = {}
    for stage in (["eval"] if cfg.loop.evaluate else []) + (["dev_eval"] if cfg.loop.select_on else []):
        ev = cfg.eval if stage == "eval" else cfg.dev_eval()
        warm = dry_eval(cfg, stage, 1, work / "warm" / stage, cuda)
        measured = dry_eval(cfg, stage, min(ev.num_images, sizes["images"]), work / stage, cuda)
        measures[stage] = first_use(measured, warm)
        full[stage] = eval_jobs(cfg, stage)
    p = min(n + mix, sizes["prompts"] or max(cfg.search.prompt_batch_size, 4))
    p_mix = min(round(p * mix / (n + mix)), p - 1) if n and mix else 0  # at least one of data.prompts
    warm = None
    with contextlib.suppress(InputError):  # one prompt may make no pair; then the warm-up counts as none
        warm = dry_generate(cfg, 1, 0, work / "warm" / "generate", cuda)
    measures["generate"] = g = first_use(dry_generate(cfg, p - p_mix, p_mix, work / "generate", cuda), warm)
    pairs_file = work / "generate" / "pairs.jsonl"
    pairs_dry = len(pairs_file.read_text().splitlines())
    step = cfg.train.per_device_train_batch_size * cfg.train.gradient_accumulation_steps
    warm = dry_train(cfg, pairs_file, 1, work / "warm" / "train", cuda)
    measures["train"] = first_use(dry_train(cfg, pairs_file, sizes["pairs"] or step, work / "train", cuda), warm)
    full["generate"] = n + mix
    full["train"] = (pairs_dry / g.items * (n + mix) if g.items else 0.0) * cfg.train.num_train_epochs
    return measures, full


def first_use(m: Measure, warm: Measure | None) -> Measure:
    """m with first_use_s: what the one-item warm-up took beyond m's fixed + per-item cost of one item (imports,
    first kernels, file cache), paid once per process, in the first round that runs the stage."""
    if warm is not None and m.items:
        steady = (m.wall_s - m.work_s) + m.work_s / m.items * warm.items
        m.first_use_s = max(0.0, warm.wall_s - steady)
    return m


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# ---------------------------------------------------------------------------- command


def _hms(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"


def print_plan(plan: dict) -> None:
    print(f"csr plan: {plan['ranks']} rank(s); dry run of {plan['dry_run_s']:.1f} s on "
          + ", ".join(f"{s} {p['dry']['items']:g}" for s, p in plan["stages"].items()) + " items")
    print(f"| {'stage':<9} | {'items':>9} | {'per rank':>9} | {'fixed s':>8} | {'s / item':>9} | {'projected':>10} | "
          f"{'peak MiB':>9} | {'tokens':>10} |")
    print("|" + "|".join("-" * w for w in (11, 11, 11, 10, 11, 12, 11, 12)) + "|")
    for name, s in plan["stages"].items():
        print(f"| {name:<9} | {s['items']:>9.0f} | {s['items_per_rank']:>9.0f} | {s['fixed_s']:>8.2f} | "
              f"{s['per_item_s']:>9.4f} | {_hms(s['seconds']):>10} | {s['peak_mb']:>9.0f} | {s['tokens']:>10.0f} |")
    for r in plan["rounds"]:
        print(f"round {r['round']} ({' + '.join(r['stages'])}): {_hms(r['seconds'])}, peak {r['peak_mb']:.0f} MiB, "
              f"{r['tokens']:.0f} tokens generated")
    t = plan["total"]
    print(f"whole run: {_hms(t['seconds'])} ({t['hours']:.2f} h), peak {t['peak_mb']:.0f} MiB per rank, "
          f"{t['tokens']:.0f} tokens generated")


def cli(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="csr plan", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("--config", help="YAML config file")
    ap.add_argument("--ranks", type=int, default=1, help="ranks (GPUs) the run will use; default 1")
    ap.add_argument("--prompts", type=int, default=0,
                    help="prompts in the dry run (default: max(search.prompt_batch_size, 4))")
    ap.add_argument("--pairs", type=int, default=0, help="pairs trained in the dry run (default one optimizer step)")
    ap.add_argument("--images", type=int, default=8, help="images per evaluation in the dry run; default 8")
    ap.add_argument("--work", type=Path, default=None, help="keep the dry run's stage directories here")
    ap.add_argument("--out", type=Path, default=None, help="also write the plan as JSON")
    ap.add_argument("overrides", nargs="*", help="section.key=value")
    args = ap.parse_args(argv)
    if args.ranks < 1 or min(args.prompts, args.pairs) < 0 or args.images < 1:
        ap.error("--ranks and --images must be >= 1, --prompts and --pairs >= 0")
    cfg = load_config(args.config, args.overrides)
    cfg.validate_loop()
    sizes = {"prompts": args.prompts, "pairs": args.pairs, "images": args.images}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        t0 = time.perf_counter()
        measures, full = dry_run(cfg, work, sizes)
        plan = {"config": args.config, "overrides": args.overrides, "dry_run_s": time.perf_counter() - t0,
                **projection(measures, full, cfg.loop.rounds, args.ranks)}
    print_plan(plan)
    if args.out:
        write_json(args.out, plan)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0

