"""`csr questions`: yes/no prompts about the objects of the training images, for data.mix_prompts.

    csr questions --annotations instances_train2014.json [--captions captions_train2014.json] \
        --image-root train2014 --out yesno_train.jsonl [--n-images 2000] [--per-image 1]

CSR on captions alone can cost a model its yes/no skill (in the toy world, DPO on descriptions made the
model answer "yes" less and less). These prompts put POPE-style questions ("Is there a dog in the image?
Please answer yes or no.") about the training images into every round's search, where the calibrated
reward judges each answer by CLIP's relevance of the statement that the object is there (paper.py), so
the pairs train the skill the model is evaluated on. For each sampled image: `--per-image` objects that
are present and as many that are absent (those that co-occur most with the present ones first, as
`csr calibrate` picks them), in the prompts format (id, image, prompt). The labels only decide which
objects are asked about; the reward never reads them.
"""

from __future__ import annotations

import argparse
import os
import random

from .calibrate import ObjectSample, add_coco_args, present_and_absent
from .console import skip_summary
from .data import write_jsonl
from .errors import InputError
from .yes_no import SUFFIX, TEMPLATE, with_article


def yes_no_prompts(rows: list, per_image: int, template: str, rng: random.Random, prefix: str = "yn") -> list[dict]:
    """Prompt records for `present_and_absent` rows: per image, per_image present and per_image absent objects."""
    records = []
    for image_id, path, present, absent in rows:
        asked = rng.sample(present, min(per_image, len(present))) + absent[:per_image]
        for k, obj in enumerate(asked):
            records.append({"id": f"{prefix}-{image_id}-{k}", "image": path, "prompt": with_article(template, obj)})
    return records


def cli(argv: list[str]) -> int:
    """`csr questions ...` (see the module docstring); returns the exit code."""
    from .benchmarks.chair import load_ground_truth

    parser = argparse.ArgumentParser(prog="csr questions", description="yes/no prompts about the objects of the "
                                     "training images (for data.mix_prompts)")
    add_coco_args(parser)
    parser.add_argument("--out", required=True, help="the prompts JSONL to write")
    parser.add_argument("--n-images", type=int, default=2000, help="images sampled (seeded)")
    parser.add_argument("--per-image", type=int, default=1, help="present objects asked per image (as many absent)")
    parser.add_argument("--template", default=TEMPLATE + SUFFIX, help="question template with {}")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.n_images < 1 or args.per_image < 1 or "{}" not in args.template:
        raise InputError("--n-images and --per-image must be >= 1 and --template needs a {}")
    _, instances, gt = load_ground_truth(args.annotations, args.captions, args.synonyms)
    rng = random.Random(args.seed)
    root = os.path.abspath(args.image_root)  # absolute paths: the file works wherever it is read from
    sample = ObjectSample(args.n_images, args.per_image, args.per_image)  # co-occurring absent first, random to fill
    rows, skipped = present_and_absent(instances, gt, root, sample, rng)
    records = yes_no_prompts(rows, args.per_image, args.template, rng)
    if not records:
        raise InputError(f"{args.annotations}: no readable annotated image ({len(skipped)} skipped)")
    write_jsonl(args.out, records)
    print(f"wrote {args.out}: {len(records)} questions on {len(rows)} images ({len(skipped)} images skipped)")
    if skipped:
        print(skip_summary("questions", skipped, len(rows) + len(skipped), None))
    return 0
