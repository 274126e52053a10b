"""`csr calibrate`: a labelled calibration set for tau from COCO-format annotations, scored with the CLIP.

    csr calibrate --annotations instances_train2014.json [--captions captions_train2014.json] \\
        --image-root train2014 --clip openai/clip-vit-large-patch14-336 --out calib.jsonl [--n-images 500]

The centred reward (`reward.normalize=center`) needs tau, the R_I under which a sentence counts as naming
something that is not in the image; it is picked from CLIP's scores of sentences known to be true or
false for their image (`reward.tau_calibration`). This command writes such a file for any COCO-format
dataset: for each of `--n-images` seeded images, one sentence per present object (its instances, plus
objects its reference captions name, as CHAIR counts them) and sentences for absent objects: first the
`--cooccurring` ones that most often appear with the present ones in this file (what a model
hallucinates), then `--random` others; each sentence from one of `--templates`. Images that are missing
or unreadable are skipped with the reason. It then scores the file with the CLIP and prints (and writes
to <out>.summary.json) the AUC of present against absent, tau by both rules and the share of absent
objects at or above each tau.
"""

from __future__ import annotations

import argparse
import logging
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from .console import skip_summary
from .data import load_image, resolve_image, write_json, write_jsonl
from .errors import InputError
from .schema import TAU_RULES
from .tables import text_table
from .yes_no import with_article

log = logging.getLogger(__name__)

TEMPLATES = ("There is a {} in the image.", "A photo of a {}.", "I can see a {} here.")


def cooccurrence(objects: dict) -> dict[str, Counter]:
    """For each category, how many images hold it together with each other category."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for present in objects.values():
        for a in present:
            counts[a].update(b for b in present if b != a)
    return counts


@dataclass(frozen=True)
class ObjectSample:
    """What `present_and_absent` draws: images sampled, absent objects per image that co-occur most with the present
    ones and that are drawn at random, and the largest image (pixels) opened."""

    n_images: int
    n_cooccurring: int
    n_random: int
    max_pixels: int = 50_000_000


def present_and_absent(instances: dict, gt: dict, image_root: str, sample: ObjectSample, rng: random.Random
                       ) -> tuple[list[tuple[object, str, list[str], list[str]]], list[dict]]:
    """For a seeded sample of the annotated images: ([(image id, path, present, absent)], skipped {image, reason}).

    present: the image's annotated categories; absent: categories that neither its annotations nor its reference
    captions (gt, as CHAIR counts them) name: first the sample.n_cooccurring that co-occur most with the present
    ones in this file (what a model hallucinates), then sample.n_random others. Missing or unreadable images are
    skipped.
    """
    n_images, n_cooccurring, n_random, max_pixels = (sample.n_images, sample.n_cooccurring, sample.n_random,
                                                     sample.max_pixels)
    from .benchmarks.chair import norm_image_id

    names = {c["id"]: c["name"] for c in instances["categories"]}
    annotated: dict = defaultdict(set)
    for ann in instances["annotations"]:
        if ann["category_id"] in names:
            annotated[norm_image_id(ann["image_id"])].add(names[ann["category_id"]])
    cooc = cooccurrence(annotated)
    images = sorted((im for im in instances.get("images", []) if annotated.get(norm_image_id(im["id"]))),
                    key=lambda im: str(im["id"]).zfill(20))
    rows, skipped = [], []
    for im in rng.sample(images, min(n_images, len(images))):
        path = resolve_image(str(im.get("file_name", im["id"])), image_root)
        try:
            load_image(path, max_pixels)
        except InputError as exc:
            skipped.append({"image": path, "reason": str(exc)})
            continue
        image_id = norm_image_id(im["id"])
        present = sorted(annotated[image_id])
        seen = gt.get(image_id, set()) | set(present)  # never call a captioned object absent
        candidates = [c for c in names.values() if c not in seen]
        together = Counter({c: sum(cooc[p][c] for p in present) for c in candidates})
        absent = [c for c, n in together.most_common() if n > 0][:n_cooccurring]
        others = [c for c in candidates if c not in absent]
        absent += rng.sample(others, min(n_random, len(others)))
        rows.append((image_id, path, present, absent))
    return rows, skipped


def labelled_sentences(rows: list, rng: random.Random, templates: tuple[str, ...],
                       names: dict[str, str] | None = None) -> list[dict]:
    """Records {image, text, present, object}: one sentence per present and absent object of each row of
    `present_and_absent`, each from a template drawn at random; `names` says how a sentence names an object
    (default: its category name)."""
    records = []
    for _, path, present, absent in rows:
        for obj, is_present in [(p, True) for p in present] + [(a, False) for a in absent]:
            text = with_article(rng.choice(templates), (names or {}).get(obj, obj))
            records.append({"image": path, "text": text, "present": is_present, "object": obj})
    return records


def add_coco_args(parser: argparse.ArgumentParser) -> None:
    """--annotations, --captions, --synonyms, --image-root: the COCO-format files `present_and_absent` reads."""
    parser.add_argument("--annotations", required=True, help="COCO instances JSON (images, annotations, categories)")
    parser.add_argument("--captions", help="COCO captions JSON: objects named there are present, never asked absent")
    parser.add_argument("--synonyms", help="CHAIR synonym table for --captions (default: the shipped COCO table)")
    parser.add_argument("--image-root", default="", help="directory of the images' file_name paths")


def cli(argv: list[str]) -> int:
    """`csr calibrate ...` (see the module docstring); returns the exit code."""
    parser = argparse.ArgumentParser(prog="csr calibrate", description="a labelled tau calibration set from "
                                     "COCO-format annotations, scored with the CLIP")
    add_coco_args(parser)
    parser.add_argument("--clip", required=True, help="CLIP / SigLIP directory or hub id (the reward's scorer)")
    parser.add_argument("--out", required=True, help="the reward.tau_calibration JSONL to write")
    parser.add_argument("--n-images", type=int, default=500, help="images sampled (seeded)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--templates", nargs="+", default=list(TEMPLATES), help="sentence templates with {}")
    parser.add_argument("--names", help="JSON {category: name} for the sentences (as reward.object_names)")
    parser.add_argument("--cooccurring", type=int, default=2, help="absent objects per image that co-occur most")
    parser.add_argument("--random", type=int, default=1, help="other absent objects per image, drawn at random")
    parser.add_argument("--sd", type=float, default=3.0, help="rule true_sd: tau = mean(present) - SD * stdev")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--scorer", default="clip", help="the kind of scorer (reward.scorer), loaded from --clip")
    args = parser.parse_args(argv)
    if args.n_images < 1 or any("{}" not in t for t in args.templates):
        raise InputError("--n-images must be >= 1 and every --templates entry needs a {}")
    summary = calibrate(args)
    print(f"wrote {args.out} ({summary['sentences']} sentences on {summary['images']} images; "
          f"{summary['skipped_images']} images skipped) and {summary_path(args.out)}")
    return 0


def summary_path(out: str | Path) -> Path:
    """<out>.summary.json beside the calibration file."""
    return Path(out).with_suffix(".summary.json")


def calibrate(args) -> dict:
    """Write the labelled file, score it, print and write the summary; returns the summary."""
    from .benchmarks.chair import load_ground_truth
    from .calibration import calibration_scores, clip_summary
    from .scorer import ScorerSpec, build_scorer

    vocab, instances, gt = load_ground_truth(args.annotations, args.captions, args.synonyms)
    from .reward import object_names

    rng = random.Random(args.seed)
    rows, skipped = present_and_absent(instances, gt, args.image_root,
                                       ObjectSample(args.n_images, args.cooccurring, args.random), rng)
    records = labelled_sentences(rows, rng, tuple(args.templates), object_names(args.names or ""))
    if not records:
        raise InputError(f"{args.annotations}: no readable image with annotations ({len(skipped)} skipped; "
                         f"first: {skipped[0]['reason'] if skipped else 'none'})")
    write_jsonl(args.out, records)
    present, absent = calibration_scores(build_scorer(ScorerSpec(args.scorer, args.clip, args.device)), records)
    rules = {rule: clip_summary(present, absent, None, args.sd, rule) for rule in TAU_RULES}
    summary = {"sentences": len(records), "images": len({r["image"] for r in records}), "skipped_images": len(skipped),
               "skipped": skipped[:100], "present": rules["true_sd"]["present"], "absent": rules["true_sd"]["absent"],
               "auc": rules["true_sd"]["auc"],
               "tau": {rule: s["suggested_tau"] for rule, s in rules.items()},
               "absent_at_or_above_tau": {rule: s["fpr_at_suggested_tau"] for rule, s in rules.items()},
               "present_below_tau": {rule: 1 - s["tpr_at_suggested_tau"] for rule, s in rules.items()},
               "clip": args.clip, "annotations": args.annotations, "templates": list(args.templates)}
    rows = [["sentences (present / absent)", f"{len(present)} / {len(absent)}"],
            ["R_I mean present / absent", f"{summary['present']['mean']:.2f} / {summary['absent']['mean']:.2f}"],
            ["AUC present vs absent", summary["auc"]]]
    rows += [[f"tau ({rule})", summary["tau"][rule]] for rule in TAU_RULES]
    rows += [[f"absent at or above tau ({rule})", summary["absent_at_or_above_tau"][rule]] for rule in TAU_RULES]
    print(text_table(["measure", "value"], rows))
    if skipped:
        print(skip_summary("calibrate", skipped, summary["images"] + len(skipped), summary_path(args.out)))
    write_json(summary_path(args.out), summary)
    return summary
