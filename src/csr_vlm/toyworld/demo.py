"""`csr demo`: CSR end to end on a CPU, in the toy world, next to its uncalibrated ablation.

    csr demo [--out runs/demo] [--seed 0] [--quick] [--world DIR] [--jobs 2] [--arms csr,lam0]

1. builds (or reuses) the toy world and its tiny CLIP + LLaVA (`csr toyworld build`);
2. runs `csr loop` with toy.yaml (toy-quick.yaml with --quick; both ship in this package's configs/ and
   the repository's configs/) twice, as two processes: arm "csr" (calibrated reward, lam 0.9) and arm "lam0"
   (reward.lam=0: the model rewards itself with its own likelihood only); --quick runs the csr arm alone
   (--arms picks); every round is evaluated on test, the round is picked on dev CHAIR_i;
3. runs `csr report` on each arm (report.md, and report.html with every test caption and pair) and prints one
   table: per round CHAIR_i / CHAIR_s / recall / POPE F1 / dup rate / well-formed on test, and the ground-truth
   CHAIR_i of that round's chosen and rejected answers (are the pairs DPO learns from cleaner than the model?);
4. bootstraps (2,000 paired per-image resamples, seeded) the change in test CHAIR_i and in test POPE F1
   from the base to each arm's selected round;
5. writes <out>/summary.json ({"arms", "selected_round", "delta_chair_i", "delta_pope_f1", "seed", "seconds", ...}).
Nothing here is toy-specific inside the stages: the demo only points the config at the world.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from .. import layout
from ..config import load_config
from ..data import read_json, read_jsonl, write_json
from ..errors import InputError
from ..tables import markdown_table
from .scenes import WorldParams

log = logging.getLogger(__name__)

# lam0 is self-rewarding by likelihood alone, stopping included: with the centred reward's neutral stop
# (end_self_score=false) and no image term, ending would outscore every sentence.
# It keeps every pair too, and rejects the search's lowest answer (curate.require_doubt and
# curate.rejected=hardest ask CLIP which answers are wrong).
# Sentence-level pairs, too, ask CLIP which sentences are wrong: lam0 pairs whole answers.
ARMS = {"csr": [], "lam0": ["reward.lam=0", "reward.end_self_score=true", "curate.require_doubt=false",
                            "curate.rejected=lowest", "curate.pair_level=response"]}
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
COLUMNS = ("chair_i", "chair_s", "recall", "pope_f1", "dup_rate", "wellformed", "pair_chosen_chair_i",
           "pair_rejected_chair_i")


def world_overrides(world: Path, dev: dict, mix: bool = True) -> list[str]:
    """Point every path of the config at `world` (what `csr loop` reads; the stages know nothing of it).

    dev: the config's loop.dev, whose annotation files are pointed at the world's dev split.
    mix: the config searches yes/no questions beside the captions (data.mix_prompts): the world's.
    """
    w = world.resolve()
    dev = {**dev, "annotations": f"{w}/instances_dev.json", "gt_captions": f"{w}/captions_dev.json"}
    return [f"model.path={w}/policy", f"reward.clip_path={w}/clip",
            f"reward.tau_calibration={w}/tau_calibration.jsonl", f"reward.object_names={w}/object_names.json",
            f"data.prompts={w}/prompts_train.jsonl", *([f"data.mix_prompts={w}/prompts_yesno_train.jsonl"] * mix),
            f"data.image_root={w}", f"eval.annotations={w}/instances_test.json",
            f"eval.gt_captions={w}/captions_test.json", f"eval.image_root={w}", f"eval.synonyms={w}/synonyms.txt",
            f"loop.dev={json.dumps(dev)}"]


def arm_config(config: Path, world: Path, out: Path, seed: int, arm: str):
    """The loop config of one arm: the toy config pointed at the world, the arm's overrides on top."""
    base = load_config(config)
    return load_config(config, [*world_overrides(world, base.loop.dev, bool(base.data.mix_prompts)),
                                f"out={out / arm}",
                                f"seed={seed}", *ARMS[arm]])


def run_arm(config: str, world: str, out: str, seed: int, arm: str, bars: bool = True) -> str:
    """One `csr loop`. Its stage lines and warnings carry the arm's name. bars=False: arms run side by side, each
    in its own process on one thread, without progress bars (they would overwrite each other); an arm running alone
    has the world's pinned thread count (WorldParams.threads: the numbers depend on it) and its bars."""
    import os

    import torch

    from .. import loop
    from ..console import LABEL_ENV, NO_BARS_ENV

    os.environ[LABEL_ENV] = arm
    if not bars:
        os.environ[NO_BARS_ENV] = "1"
    torch.set_num_threads(WorldParams.threads if bars else 1)
    logging.basicConfig(level=logging.WARNING, format=f"[{arm}] %(levelname)s %(name)s: %(message)s")
    try:
        return str(loop.run(arm_config(Path(config), Path(world), Path(out), seed, arm)))
    finally:
        os.environ.pop(LABEL_ENV, None)
        os.environ.pop(NO_BARS_ENV, None)


# ---------------------------------------------------------------------------- collecting


def pair_chair(pairs_path: Path, world: Path) -> tuple[float | None, float | None]:
    """Ground-truth CHAIR_i of the chosen and of the rejected answers of a round's description pairs (the
    yes/no pairs of data.mix_prompts name no objects to count)."""
    from ..curate import pair_answers, read_pair_rows
    from ..yes_no import CAPTION
    from .measure import score_answers

    if not pairs_path.is_file():
        return None, None
    pairs = [p for p in read_pair_rows(pairs_path) if p["task"] == CAPTION]
    if not pairs:
        return None, None
    ids = [int(str(p["id"]).rsplit("-", 1)[-1]) for p in pairs]
    chosen = score_answers([pair_answers(p)[0] for p in pairs], ids, world, "train")["chair_i"]
    rejected = score_answers([pair_answers(p)[1] for p in pairs], ids, world, "train")["chair_i"]
    return chosen, rejected


def arm_rows(loop_dir: Path, world: Path) -> list[dict]:
    """One row per evaluated round of an arm: test metrics, well-formedness, the pairs' ground-truth CHAIR_i."""
    from .measure import is_wellformed

    rows = []
    k = 0
    while (layout.stage_dir(loop_dir, k, "eval") / "metrics.json").is_file():
        rdir = layout.round_dir(loop_dir, k)
        flat = read_json(rdir / "eval" / "metrics.json")["flat"]
        answers = [s["answer"] for s in read_jsonl(rdir / "eval" / "samples.jsonl") if s.get("task") == "chair"]
        chosen, rejected = pair_chair(layout.pairs_file(rdir / "generate"), world)
        rows.append({"round": k, "chair_i": flat.get("chair_i"), "chair_s": flat.get("chair_s"),
                     "recall": flat.get("recall"), "pope_f1": flat.get("pope_f1"), "dup_rate": flat.get("dup_rate"),
                     "wellformed": sum(map(is_wellformed, answers)) / max(1, len(answers)),
                     "pair_chosen_chair_i": chosen, "pair_rejected_chair_i": rejected})
        k += 1
    return rows


def run_report(loop_dir: Path, world: Path) -> None:
    """`csr report` on one arm, with pair quality against the world's training split."""
    from .. import report

    try:
        report.cli([str(loop_dir), "--instances", str(world / "instances_train.json"),
                    "--gt-captions", str(world / "captions_train.json"), "--synonyms", str(world / "synonyms.txt")])
    except Exception as exc:  # noqa: BLE001 - the demo's own summary must still be written
        log.warning("csr report failed on %s: %s", loop_dir, exc)


def per_image_counts(eval_dir: Path) -> dict:
    """{image_id: (mentions, hallucinated mentions)} from an eval's per-caption CHAIR results."""
    return {r["image_id"]: (len(r["mentioned"]), len(r["hallucinated"]))
            for r in read_jsonl(eval_dir / "chair_captions.jsonl")}


def paired_bootstrap(base: dict, new: dict, n: int = 2000, seed: int = 0) -> dict:
    """Change in CHAIR_i (new - base) on the images both evaluated, with a per-image paired bootstrap.

    Each resample draws images with replacement and recomputes CHAIR_i = hallucinated / mentions on
    each side from the same images; ci95 are the 2.5/97.5 percentiles of the n differences, and
    `relative` (ci) the same for (new - base) / base."""
    import numpy as np

    ids = sorted(set(base) & set(new))
    if not ids:
        return {}
    counts = np.array([[*base[i], *new[i]] for i in ids], dtype=float)  # mentions, halluc (base, new)

    def stats(c):
        b = c[..., 1].sum(-1) / np.maximum(c[..., 0].sum(-1), 1)
        a = c[..., 3].sum(-1) / np.maximum(c[..., 2].sum(-1), 1)
        return a - b, (a - b) / np.where(b > 0, b, np.nan)

    point, rel = stats(counts)
    idx = np.random.default_rng(seed).integers(0, len(ids), size=(n, len(ids)))
    diffs, rels = stats(counts[idx])
    ci = lambda v: [round(float(x), 4) for x in np.nanpercentile(v, [2.5, 97.5])]  # noqa: E731
    return {"point": round(float(point), 4), "ci95": ci(diffs), "relative": round(float(rel), 4),
            "relative_ci95": ci(rels), "n_images": len(ids), "resamples": n, "seed": seed}


def pope_answers(eval_dir: Path) -> list[tuple[int, str, str, str]]:
    """(image_id, split, label, parsed answer) per POPE question of an eval (its questions and samples files); a
    question without an answer (its image skipped) reads "unknown", as POPE's own scoring counts it."""
    from ..yes_no import parse_answer

    metrics = read_json(eval_dir / "metrics.json")
    parser, suffix = metrics["pope"].get("parser", "default"), metrics["protocol"].get("pope_suffix", "")
    said = {(s["image_id"], s["prompt"]): s["answer"] for s in read_jsonl(eval_dir / "samples.jsonl")
            if s.get("task") == "pope"}
    return [(q["image_id"], q["category"], q["label"],
             parse_answer(said.get((q["image_id"], q["text"] + suffix), ""), parser))
            for q in read_jsonl(eval_dir / "pope_questions.jsonl")]


def pope_f1_bootstrap(base: list[tuple], new: list[tuple], n: int = 2000, seed: int = 0) -> dict:
    """Change in POPE F1 (new - base; F1 of "yes" per split, then their mean) with a per-image paired bootstrap.

    base and new: pope_answers of the same questions. Each resample draws images with replacement (an image's
    questions, all splits, go together) and recomputes both mean F1s; ci95 are the 2.5/97.5 percentiles."""
    import numpy as np

    images = sorted({q[0] for q in base})
    splits = sorted({q[1] for q in base})
    index = {im: k for k, im in enumerate(images)}
    counts = np.zeros((len(images), len(splits), 2, 3))  # image, split, side, (tp, fp, fn)
    for side, rows in enumerate((base, new)):
        for im, split, label, answer in rows:
            kind = (0 if label == "yes" else 1) if answer == "yes" else (2 if label == "yes" else None)
            if kind is not None:
                counts[index[im], splits.index(split), side, kind] += 1

    def mean_f1(c):
        tp, fp, fn = c[..., 0], c[..., 1], c[..., 2]
        return (2 * tp / np.maximum(2 * tp + fp + fn, 1)).mean(-2)  # F1 per split and side, mean over splits

    point = mean_f1(counts.sum(0))
    idx = np.random.default_rng(seed).integers(0, len(images), size=(n, len(images)))
    boot = mean_f1(counts[idx].sum(1))
    diffs = boot[:, 1] - boot[:, 0]
    return {"point": round(float(point[1] - point[0]), 4),
            "ci95": [round(float(x), 4) for x in np.percentile(diffs, [2.5, 97.5])],
            "n_images": len(images), "resamples": n, "seed": seed}


def delta_vs_base(out: Path, selected: dict, seed: int, needs: str, read, bootstrap) -> dict:
    """bootstrap(read(base), read(selected), seed=seed) per arm: its selected round's test eval against the base's
    (round 0); an arm whose two evals do not both hold the file `needs` is left out."""
    res = {}
    for arm, k in selected.items():
        base_dir, sel_dir = layout.stage_dir(out / arm, 0, "eval"), layout.stage_dir(out / arm, k, "eval")
        if (base_dir / needs).is_file() and (sel_dir / needs).is_file():
            res[arm] = bootstrap(read(base_dir), read(sel_dir), seed=seed)
    return res


# ---------------------------------------------------------------------------- presenting


def table(summary: dict) -> str:
    """Per arm and round: the test metrics, the pairs' ground-truth CHAIR_i, the change at the selected round."""
    head = ["arm", "round", "CHAIR_i", "CHAIR_s", "recall", "POPE F1", "dup", "well-formed", "pairs chosen/rejected",
            "dCHAIR_i vs base [95% CI]"]
    rows = []
    for arm, arm_rows_ in summary["arms"].items():
        for r in arm_rows_:
            mark = " (selected on dev)" if r["round"] == summary["selected_round"][arm] else ""
            pairs = None if r["pair_chosen_chair_i"] is None else \
                f"{r['pair_chosen_chair_i']:.3f}/{r['pair_rejected_chair_i']:.3f}"
            d = summary.get("delta_chair_i", {}).get(arm) if mark else None
            delta = None if not d else f"{100 * d['relative']:+.0f}% [{100 * d['relative_ci95'][0]:+.0f}, " \
                f"{100 * d['relative_ci95'][1]:+.0f}]"
            rows.append([arm, f"{r['round']}{mark}", *(r[c] for c in COLUMNS[:6]), pairs, delta])
    return markdown_table(head, rows, digits=3)


def verdict(summary: dict) -> list[str]:
    """Plain-language lines: the selected round of each arm against the base model (round 0)."""
    out = []
    for arm, rows in summary["arms"].items():
        base, sel = rows[0], rows[summary["selected_round"][arm]]
        if not base["chair_i"] or not base["recall"]:
            continue
        rel = (sel["chair_i"] - base["chair_i"]) / base["chair_i"]
        d = summary.get("delta_chair_i", {}).get(arm)
        ci = "" if not d else (f" [95% CI {100 * d['relative_ci95'][0]:+.0f}%, {100 * d['relative_ci95'][1]:+.0f}%; "
                               f"{d['point']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] absolute]")
        p = summary.get("delta_pope_f1", {}).get(arm)
        pope = "" if not p else f", POPE F1 {p['point']:+.3f} [95% CI {p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}]"
        out.append(f"{arm}: round {sel['round']} changes CHAIR_i by {100 * rel:+.0f}%{ci} relative to the base model "
                   f"({base['chair_i']:.3f} -> {sel['chair_i']:.3f}), recall {sel['recall'] / base['recall']:.0%} "
                   f"of base, dup {sel['dup_rate']:.3f}, well-formed {sel['wellformed']:.3f}{pope}")
    return out


def health_lines(summary: dict, world_info: dict) -> list[str]:
    """The reward health lines (health.py) of this demo: the toy CLIP's AUC on the world's own calibration
    sentences, and per arm and round whether the pairs' chosen answers were cleaner than the rejected ones."""
    from .. import health

    lines = [health.scorer_line(world_info.get("clip", {}).get("auc_all"), "the world's calibration sentences")]
    for arm, rows in summary["arms"].items():
        lines += [health.pairs_line(f"{arm} round {r['round']}", r["pair_chosen_chair_i"],
                                    r["pair_rejected_chair_i"]) for r in rows]
    return [line for line in lines if line]


EXPLAIN = """CHAIR_i: share of object mentions that name an object not in the image (lower is better).
CHAIR_s: share of answers with at least one such mention. recall: share of the image's objects named.
POPE F1: yes/no questions "Is there a X in the image?". dup: mentions repeating an object already named.
pairs chosen/rejected: true CHAIR_i of the answers the round's DPO pairs prefer / reject (from ground truth).
csr = calibrated self-reward (CLIP image relevance, lam 0.9); lam0 = the model rewards itself by likelihood only."""


QUICK = """quick world: 96 training prompts, 200 test images, a LLaVA trained 160 steps, too few for the yes/no
skill (it gives every POPE question the same answer): POPE checks the code path here; `csr demo` measures it,
and the lam0 ablation (--arms csr,lam0 adds it here)."""


def cli(argv: list[str]) -> int:
    """`csr demo [--quick] [--seed N] [--out DIR] [--world DIR] [--jobs J] [--arms csr,lam0]`."""
    parser = argparse.ArgumentParser(prog="csr demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    parser.add_argument("--seed", type=int, default=0, help="world and CSR seed")
    parser.add_argument("--quick", action="store_true",
                        help="a smaller world, two rounds, the csr arm: under 3 minutes on 2 cores")
    parser.add_argument("--world", help="world directory (default worlds/toy-seed<N>[-quick])")
    parser.add_argument("--config", help="loop config (default configs/toy.yaml or configs/toy-quick.yaml)")
    parser.add_argument("--jobs", type=int, default=2, help="arms run in parallel (one thread each)")
    parser.add_argument("--verbose", action="store_true", help="also print TRL's per-step log dicts")
    parser.add_argument("--arms", help=f"arms to run, comma-separated: {', '.join(ARMS)} (default: all; csr with "
                                       "--quick)")
    args = parser.parse_args(argv)
    arms = [a for a in (args.arms or ("csr" if args.quick else ",".join(ARMS))).split(",") if a]
    if not arms or any(a not in ARMS for a in arms):
        parser.error(f"--arms: choose from {', '.join(ARMS)}, got {args.arms!r}")
    config = Path(args.config) if args.config else CONFIG_DIR / ("toy-quick.yaml" if args.quick else "toy.yaml")
    if not config.is_file():
        raise InputError(f"--config: {config} not found")
    world = Path(args.world or f"worlds/toy-seed{args.seed}{'-quick' if args.quick else ''}")
    out = Path(args.out)
    summary = run_demo(DemoPlan(config, world, out, args.seed, args.quick, arms, args.jobs))
    from .build import summary_text

    print("\n" + summary_text(read_json(world / "world.json")) + "\n")
    print(table(summary))
    print("\n".join(["", *verdict(summary), *summary["health"], "", EXPLAIN, *([QUICK] if args.quick else [])]))
    print(f"\nsummary: {out / 'summary.json'} ({summary['seconds']:.0f} s)")
    return 0


@dataclass(frozen=True)
class DemoPlan:
    """One `csr demo`: the loop config, the world and output directories, the seed, whether the world is the quick
    one, the arms (default both) and how many of them run side by side."""

    config: Path
    world: Path
    out: Path
    seed: int
    quick: bool
    arms: list[str] | None = None
    jobs: int = 2


def run_demo(plan: DemoPlan) -> dict:
    """Build (or reuse) the world, run the arms, report them, bootstrap the change; returns summary.json's content."""
    from .build import build

    config, world, out, seed, quick, jobs = plan.config, plan.world, plan.out, plan.seed, plan.quick, plan.jobs
    arms = plan.arms
    start = time.time()
    build(world, seed=seed, quick=quick)
    out.mkdir(parents=True, exist_ok=True)
    arms = arms or list(ARMS)
    args = [(str(config), str(world), str(out), seed, arm, jobs <= 1 or len(arms) == 1) for arm in arms]
    print(f"running the arms {' and '.join(arms)} ({'side by side' if jobs > 1 else 'one after the other'}); "
          "each line names its arm", flush=True)
    if jobs > 1 and len(arms) > 1:
        with ProcessPoolExecutor(max_workers=min(jobs, len(arms)), mp_context=get_context("spawn")) as pool:
            list(pool.map(run_arm, *zip(*args)))
    else:
        for a in args:
            run_arm(*a)
    summary = {"arms": {}, "selected_round": {}, "seed": seed, "quick": quick, "world": str(world),
               "config": str(config)}
    for arm in arms:
        run_report(out / arm, world)
        summary["arms"][arm] = arm_rows(out / arm, world)
        summary["selected_round"][arm] = read_json(out / arm / "best.json")["round"]
    selected = summary["selected_round"]
    summary["delta_chair_i"] = delta_vs_base(out, selected, seed, "chair_captions.jsonl", per_image_counts,
                                             paired_bootstrap)
    summary["delta_pope_f1"] = delta_vs_base(out, selected, seed, "pope_questions.jsonl", pope_answers,
                                             pope_f1_bootstrap)
    summary["health"] = health_lines(summary, read_json(world / "world.json"))
    summary["seconds"] = round(time.time() - start, 1)
    write_json(out / "summary.json", summary)
    return summary
