"""`csr toyworld build`: the toy world's split files, its tiny CLIP, its tiny LLaVA and its lmms-eval task, seeded.

    csr toyworld build --out worlds/toy-seed0 [--seed 0] [--quick] [--threads 2]

A second build with the same seed and flags reuses everything (the DONE marker holds a hash of the
parameters); a CLIP built from the same CLIP parameters is kept when only the LLaVA's changed.
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from ..data import is_done, mark_done, read_json, write_json, write_jsonl
from ..errors import InputError
from ..manifest import versions
from . import clip as toyclip
from . import llava as toyllava
from .lmms_task import write_lmms_task
from .scenes import (
    CATEGORY_ID_BASE,
    CLIP_PARAMS,
    DESCRIBE_PROMPT,
    PAIRS,
    POPE_QUESTION,
    TYPES,
    WorldParams,
    type_name,
    write_calibration,
    write_split,
    write_synonyms,
)

log = logging.getLogger(__name__)


def build(out: str | Path, seed: int = 0, quick: bool = False, threads: int = WorldParams.threads) -> Path:
    """Build (or reuse) the world in OUT: split files, clip/, policy/, world.json. Returns OUT.

    A CLIP built with the same CLIP_PARAMS is kept when only the LLaVA's parameters changed.
    threads: torch threads (WorldParams.threads: pinned, and part of the digest)."""
    import torch

    out = Path(out)
    p = WorldParams.make(seed, quick, threads)
    if is_done(out) and read_json(out / "DONE").get("digest") == p.digest():
        log.info("toy world %s is built (seed %d, digest %s): reusing it", out, seed, p.digest())
        warn_if_other_versions(out)
        write_extras(out, seed)  # cheap, and the lmms task's YAML holds absolute paths: the world may have moved
        return out
    if out.exists():
        for child in ("DONE", "policy", "images"):
            target = out / child
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        info = _scenes_and_models(out, p, seed)
    finally:
        torch.set_num_threads(before)
    write_json(out / "world.json", info)
    write_extras(out, seed)
    mark_done(out, {"digest": p.digest(), "seed": seed, "quick": quick})
    return out


def _scenes_and_models(out: Path, p: WorldParams, seed: int) -> dict:
    """Write the splits, calibration and synonym files, train the CLIP and the LLaVA; world.json's content."""
    start = time.time()
    scenes = {}
    for k, (split, n) in enumerate(p.splits.items()):
        scenes[split] = write_split(out, split, n, p, image_base=(k + 1) * 100_000)
    write_calibration(out, scenes["calib"], seed)
    write_synonyms(out)
    info = {"params": asdict(p), "digest": p.digest(), "split_sizes": dict(p.splits),
            "categories": {CATEGORY_ID_BASE + t: type_name(t) for t in range(len(TYPES))},
            "pairs": [[type_name(a), type_name(b)] for a, b in PAIRS],
            "prompts": {"chair": DESCRIBE_PROMPT, "pope": POPE_QUESTION},
            "model_training_data": "generated on the fly from the seed (scenes as above, noisy captions)"}
    info["clip"] = _clip(out, p)
    info["llava"] = toyllava.train_llava(out, p)
    info["seconds"] = round(time.time() - start, 1)
    info["versions"] = versions()
    return info


def warn_if_other_versions(out: Path) -> None:
    """Log the packages whose installed version differs from the one the world was built with: a build is
    deterministic on one machine, but other library versions build other worlds (docs/toyworld-results.md)."""
    built = read_json(out / "world.json").get("versions", {}) if (out / "world.json").is_file() else {}
    now = versions()
    changed = [f"{name} {built[name]} -> {now.get(name, 'none')}" for name in built if built[name] != now.get(name)]
    if changed:
        log.warning("toy world %s was built with other library versions (%s): a rebuild here would differ",
                    out, ", ".join(changed))


YES_NO_IMAGES = 200
"""Training images asked a yes/no question about one present and one absent object (data.mix_prompts): 400
questions beside the 400 captions. 800 questions (every image) kept POPE F1 a little higher on seed 4 (0.755 vs
0.752 at round 3) but cost `csr demo` a minute (docs/toyworld-results.md)."""


def write_extras(out: Path, seed: int) -> None:
    """What the stages can use beside the splits, all from the split files: the lmms-eval task (lmms_task.py), the
    words the tiny CLIP knows each object by (object_names.json: {"circle": "red circle"}, for
    reward.object_names and `csr calibrate --names`) and yes/no questions about the training images
    (prompts_yesno_train.jsonl, as `csr questions` writes them, for data.mix_prompts)."""
    import random

    from ..benchmarks.chair import load_ground_truth
    from ..calibrate import ObjectSample, present_and_absent
    from ..questions import SUFFIX, yes_no_prompts

    write_lmms_task(out, seed)
    write_json(out / "object_names.json", {noun: type_name(t) for t, (_, noun) in enumerate(TYPES)})
    _, instances, gt = load_ground_truth(out / "instances_train.json", out / "captions_train.json",
                                         out / "synonyms.txt")
    rng = random.Random(seed)
    rows, _ = present_and_absent(instances, gt, str(out), ObjectSample(YES_NO_IMAGES, 1, 1), rng)
    prompts = yes_no_prompts(rows, 1, POPE_QUESTION + SUFFIX, rng, prefix="train-yn")
    for p in prompts:  # relative to the world, as prompts_train.jsonl: data.image_root points there
        p["image"] = str(Path(p["image"]).relative_to(out))
    write_jsonl(out / "prompts_yesno_train.jsonl", prompts)


def _clip(out: Path, p: WorldParams) -> dict:
    """Train the tiny CLIP into OUT/clip, or reuse the one there if it was built from the same CLIP_PARAMS."""
    stamp, digest = out / "clip" / "toyworld.json", p.digest(CLIP_PARAMS)
    if stamp.is_file() and read_json(stamp).get("digest") == digest:
        log.info("toy world: reusing the CLIP in %s (same CLIP parameters)", out / "clip")
        return read_json(stamp)["stats"]
    shutil.rmtree(out / "clip", ignore_errors=True)
    stats = toyclip.train_clip(out, p)
    write_json(stamp, {"digest": digest, "stats": stats})
    return stats


def cli(argv: list[str]) -> int:
    """`csr toyworld build --out DIR [--seed N] [--quick] [--threads T]`."""
    parser = argparse.ArgumentParser(prog="csr toyworld", description="build the synthetic world and its tiny models")
    sub = parser.add_subparsers(dest="action", required=True)
    b = sub.add_parser("build", help="scenes, split files, tiny CLIP (DIR/clip) and tiny LLaVA (DIR/policy)")
    b.add_argument("--out", required=True, help="world directory")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--quick", action="store_true", help="a small world in well under a minute (for CI)")
    b.add_argument("--threads", type=int, default=WorldParams.threads,
                   help=f"torch threads (default {WorldParams.threads}, whatever the cores); a build is "
                        "deterministic per thread count, which is part of the world's digest")
    args = parser.parse_args(argv)
    if args.seed < 0 or args.threads < 1:
        raise InputError("--seed must be >= 0 and --threads >= 1")
    out = build(args.out, args.seed, args.quick, args.threads)
    info = read_json(out / "world.json")
    print(summary_text(info))
    return 0


def summary_text(info: dict) -> str:
    """Three lines on a built world: split sizes, CLIP separation and tau, the base LLaVA's dev metrics."""
    c, m, h = info["clip"], info["llava"]["dev"], info["llava"]["clip_on_hallucinations"]
    return "\n".join([
        f"toy world: {info['split_sizes']} (seed {info['params']['seed']}, {info['seconds']} s)",
        f"CLIP: true-vs-false AUC {c['auc_all']:.3f}, vs absent partner {c['auc_partner']:.3f}, "
        f"tau: mean - 3 sd {c['tau']:.1f}, Youden {c.get('tau_youden', math.nan):.1f} (absent objects above it "
        f"{c.get('false_above_tau_youden', math.nan):.3f}); on the base model's own hallucinations: "
        f"paired acc {h.get('paired_acc', math.nan):.3f}, AUC {h.get('auc', math.nan):.3f}",
        f"base LLaVA (dev, step {info['llava']['selected_step']}): CHAIR_i {m['chair_i']:.3f}, "
        f"CHAIR_s {m['chair_s']:.3f}, recall {m['recall']:.3f}, well-formed {m['wellformed']:.3f}, "
        f"dup {m['dup_rate']:.3f}, POPE acc {m['pope_acc']:.3f}",
    ])
