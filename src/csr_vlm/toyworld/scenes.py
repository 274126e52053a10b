"""The toy world's scenes: seeded synthetic images, captions, yes/no examples and the COCO-format split files.

A scene is a 48x48 RGB image on a noisy dark background holding 1-3 objects from 10 types, each type a
unique shape with a colour ("a red circle"); the category CHAIR/POPE use is the noun. Types come in co-
occurrence pairs, and the captions the tiny LLaVA learns from name an absent partner right after its
object with probability `noise_partner` (0.8; 0.6 left this LLaVA at 4-8% dev CHAIR_i), so a fluent model
hallucinates partners by design. Reference captions written to the split files are truthful. build.py
writes the splits and trains a tiny CLIP (clip.py) and a tiny LLaVA (llava.py) on this world.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..data import read_jsonl, write_json, write_jsonl
from ..yes_no import SUFFIX, TEMPLATE

log = logging.getLogger(__name__)

# (colour, noun) per type; the noun is the category name and each noun has its own shape.
TYPES = [("red", "circle"), ("blue", "square"), ("green", "triangle"), ("yellow", "star"), ("blue", "ring"),
         ("red", "diamond"), ("green", "bar"), ("yellow", "pole"), ("white", "tee"), ("purple", "frame")]
PAIRS = [(0, 1), (2, 3), (4, 5), (6, 7)]
COLOURS = {"red": (220, 40, 40), "blue": (50, 90, 235), "green": (40, 190, 60), "yellow": (230, 220, 40),
           "white": (235, 235, 235), "purple": (165, 60, 210)}
TEMPLATES = ["there is a {}.", "i see a {}.", "a {} is here."]
DESCRIBE_PROMPT = "Describe the image."
POPE_QUESTION, POPE_SUFFIX = TEMPLATE, SUFFIX  # POPE's question and suffix (yes_no.py), in training and evaluation
CATEGORY_ID_BASE = 101  # category ids 101..110: deliberately not COCO's 1..80


@dataclass
class WorldParams:
    """Everything that defines a world; its hash names the cache."""

    seed: int = 0
    quick: bool = False
    image_size: int = 48
    p_pair: float = 0.8
    p_extra: float = 0.35
    noise_partner: float = 0.8
    noise_random: float = 0.03
    qa_fraction: float = 0.7
    qa_weight: float = 3.0
    splits: dict = field(default_factory=lambda: {"train": 400, "dev": 500, "test": 1000, "calib": 600})
    clip_steps: int = 360
    clip_batch: int = 128
    """Scenes per CLIP step."""
    clip_patch: int = 6
    """The CLIP's patch size in pixels (the LLaVA's tower is this CLIP's: (image_size / patch)^2 image tokens)."""
    clip_layers: int = 3
    """The CLIP vision encoder's layers."""
    llava_lr: float = 1e-3
    llava_steps: int = 600
    llava_max_steps: int = 1200
    llava_eval_every: int = 40
    llava_eval_from: int = 360
    llava_eval_images: int = 250
    threads: int = 2
    """torch threads of the build: a build is deterministic per thread count (at 1 and at 2 threads seed 4's
    LLaVA differs), so the count is pinned, whatever the machine's cores, and is part of the world's digest."""

    @classmethod
    def make(cls, seed: int, quick: bool, threads: int | None = None) -> WorldParams:
        threads = cls.threads if threads is None else threads
        if not quick:
            return cls(seed=seed, threads=threads)
        # quick: a CLIP of 2 layers over 8-px patches (36 image tokens), 360 steps of 32 scenes (AUC 0.97 on seed 0
        # in 45 s; 260 steps: 0.94, and its Youden tau left 22% of true sentences below it); a LLaVA of 160 steps
        # (120: dup 0.09 on test); 96 training prompts; dev 100 and test 200 images (40/60 gave CIs of +-25%)
        return cls(seed=seed, quick=True, threads=threads, splits={"train": 96, "dev": 100, "test": 200, "calib": 60},
                   clip_steps=360, clip_batch=32, clip_patch=8, clip_layers=2, llava_steps=160, llava_max_steps=160,
                   llava_eval_every=40, llava_eval_from=160, qa_fraction=0.3, qa_weight=1.0, llava_lr=2e-3)

    def digest(self, keys: tuple[str, ...] = ()) -> str:
        """Hash of every parameter, or of `keys` only (the CLIP depends on fewer than the world)."""
        values = {k: v for k, v in asdict(self).items() if not keys or k in keys}
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


CLIP_PARAMS = ("seed", "quick", "image_size", "p_pair", "p_extra", "splits", "clip_steps", "clip_batch", "clip_patch",
               "clip_layers", "threads")


def type_name(t: int) -> str:
    """'red circle' for type 0."""
    return f"{TYPES[t][0]} {TYPES[t][1]}"


def partner(t: int) -> int | None:
    """The type a type co-occurs with, or None."""
    for a, b in PAIRS:
        if t in (a, b):
            return b if t == a else a
    return None


def split_seed(seed: int, split: str) -> int:
    """Disjoint, stable RNG streams per (world seed, split)."""
    return int(hashlib.sha256(f"{seed}:{split}".encode()).hexdigest()[:12], 16)


# ---------------------------------------------------------------------------- scenes


def sample_scene(rng: random.Random, p: WorldParams) -> list[dict]:
    """Objects of one scene: [{"type", "quadrant", "cx", "cy", "r", "rgb"}] (1-3 distinct types)."""
    types = [rng.randrange(len(TYPES))]
    mate = partner(types[0])
    if mate is not None and rng.random() < p.p_pair:
        types.append(mate)
    if rng.random() < p.p_extra:
        types.append(rng.choice([t for t in range(len(TYPES)) if t not in types]))
    quadrants = rng.sample(range(4), len(types))
    half = p.image_size // 2
    objects = []
    for t, q in zip(types, quadrants):
        r = rng.randint(6, 10)
        cx = (q % 2) * half + half // 2 + rng.randint(-1, 1)
        cy = (q // 2) * half + half // 2 + rng.randint(-1, 1)
        rgb = [min(255, max(0, c + rng.randint(-20, 20))) for c in COLOURS[TYPES[t][0]]]
        objects.append({"type": t, "quadrant": q, "cx": cx, "cy": cy, "r": r, "rgb": rgb})
    return objects


def _draw_shape(draw, noun: str, cx: int, cy: int, r: int, rgb: tuple) -> None:
    box = [cx - r, cy - r, cx + r, cy + r]
    w = max(2, r // 3)
    if noun == "circle":
        draw.ellipse(box, fill=rgb)
    elif noun == "square":
        draw.rectangle([cx - r + 1, cy - r + 1, cx + r - 1, cy + r - 1], fill=rgb)
    elif noun == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=rgb)
    elif noun == "star":  # a plus sign
        draw.rectangle([cx - r, cy - w // 2 - 1, cx + r, cy + w // 2 + 1], fill=rgb)
        draw.rectangle([cx - w // 2 - 1, cy - r, cx + w // 2 + 1, cy + r], fill=rgb)
    elif noun == "ring":
        draw.ellipse(box, outline=rgb, width=3)
    elif noun == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=rgb)
    elif noun == "bar":
        draw.rectangle([cx - r, cy - 2, cx + r, cy + 2], fill=rgb)
    elif noun == "pole":
        draw.rectangle([cx - 2, cy - r, cx + 2, cy + r], fill=rgb)
    elif noun == "tee":
        draw.rectangle([cx - r, cy - r, cx + r, cy - r + 4], fill=rgb)
        draw.rectangle([cx - 2, cy - r, cx + 2, cy + r], fill=rgb)
    elif noun == "frame":
        draw.rectangle(box, outline=rgb, width=3)
    else:
        raise ValueError(noun)


def render(objects: list[dict], rng: np.random.Generator, size: int = 48):
    """A PIL image: dark grey background, Gaussian noise (sd 10), the objects drawn on top."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (50, 50, 50))
    draw = ImageDraw.Draw(img)
    for o in objects:
        _draw_shape(draw, TYPES[o["type"]][1], o["cx"], o["cy"], o["r"], tuple(o["rgb"]))
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 10, (size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


# ---------------------------------------------------------------------------- captions


def sentence(t: int, rng: random.Random) -> str:
    """One caption sentence naming type t ('i see a red circle.')."""
    return rng.choice(TEMPLATES).format(type_name(t))


def caption(types: list[int], rng: random.Random, p: WorldParams, noisy: bool = True) -> str:
    """One sentence per object in random order; noisy captions add absent partners / random objects."""
    order = rng.sample(types, len(types))
    out = []
    for t in order:
        out.append(sentence(t, rng))
        mate = partner(t)
        if noisy and mate is not None and mate not in types and rng.random() < p.noise_partner:
            out.append(sentence(mate, rng))
    if noisy and rng.random() < p.noise_random:
        absent = [t for t in range(len(TYPES)) if t not in types and all(t != partner(u) for u in types)]
        if absent:
            out.insert(rng.randrange(len(out) + 1), sentence(rng.choice(absent), rng))
    return " ".join(out)


def garbled_sentence(rng: random.Random) -> str:
    """A sentence naming no object: a template with the noun (or the whole type) left out, or a word salad.

    The tiny CLIP learns these as negatives for every image, so a CSR candidate like "i see a is
    here ." gets a low R_I instead of an arbitrary one it never saw in training."""
    template = rng.choice(TEMPLATES)
    colour, noun = TYPES[rng.randrange(len(TYPES))]
    kind = rng.randrange(4)
    if kind == 0:
        return template.format("").replace("  ", " ")
    if kind == 1:
        return template.format(colour)
    words = re.findall(r"\w+", " ".join(t.format("") for t in TEMPLATES)) + [c for c, _ in TYPES]
    if kind == 2:
        return " ".join(rng.choice(words) for _ in range(rng.randint(2, 6))) + " ."
    first, second = rng.sample(TEMPLATES, 2)  # two templates spliced, no noun: "i see a is here ."
    return " ".join(first.format("").split()[:3] + second.format("").split()[-2:])


def qa_example(types: list[int], rng: random.Random) -> tuple[str, str]:
    """A POPE-style question (half present, half absent; half the absent ones the partner)."""
    if rng.random() < 0.5:
        return POPE_QUESTION.format(TYPES[rng.choice(types)][1]), "yes."
    absent = [t for t in range(len(TYPES)) if t not in types]
    mates = [partner(t) for t in types if partner(t) is not None and partner(t) not in types]
    t = rng.choice(mates) if mates and rng.random() < 0.5 else rng.choice(absent)
    return POPE_QUESTION.format(TYPES[t][1]), "no."


def corpus() -> list[str]:
    """Every word the tokenizers must know (template words, prompts, sentences)."""
    lines = [s.format(type_name(t)) for t in range(len(TYPES)) for s in TEMPLATES]
    lines += [DESCRIBE_PROMPT, POPE_QUESTION.format("x"), "user: assistant: yes. no. please answer yes or no."]
    return lines


# ---------------------------------------------------------------------------- split files


def write_split(out: Path, split: str, n: int, p: WorldParams, image_base: int) -> list[dict]:
    """Render a split's images and write its COCO instances/captions and prompts files."""
    rng = random.Random(split_seed(p.seed, split))
    nrng = np.random.default_rng(split_seed(p.seed, split + ":noise"))
    (out / "images" / split).mkdir(parents=True, exist_ok=True)
    images, anns, caps, prompts, scenes = [], [], [], [], []
    for i in range(n):
        objects = sample_scene(rng, p)
        image_id = image_base + i
        rel = f"images/{split}/{image_id}.png"
        render(objects, nrng, p.image_size).save(out / rel)
        images.append({"id": image_id, "file_name": rel, "width": p.image_size, "height": p.image_size})
        for o in objects:
            d = 2 * o["r"]
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": CATEGORY_ID_BASE + o["type"],
                         "bbox": [o["cx"] - o["r"], o["cy"] - o["r"], d, d], "area": d * d, "iscrowd": 0})
        types = [o["type"] for o in objects]
        caps.append({"id": i + 1 + image_base, "image_id": image_id, "caption": caption(types, rng, p, noisy=False)})
        prompts.append({"id": f"{split}-{image_id}", "image": rel, "prompt": DESCRIBE_PROMPT})
        scenes.append({"image_id": image_id, "image": rel, "objects": objects})
    cats = [{"id": CATEGORY_ID_BASE + t, "name": noun, "supercategory": "shape"} for t, (_, noun) in enumerate(TYPES)]
    write_json(out / f"instances_{split}.json", {"images": images, "annotations": anns, "categories": cats})
    write_json(out / f"captions_{split}.json", {"images": images, "annotations": caps})
    write_jsonl(out / f"prompts_{split}.jsonl", prompts)
    write_jsonl(out / f"scenes_{split}.jsonl", scenes)
    return scenes


def write_calibration(out: Path, scenes: list[dict], seed: int) -> Path:
    """tau_calibration.jsonl: each object's true sentence, its absent partner and one other absent type.

    Image paths are relative to the world directory (generate resolves them beside this file), so a
    world can be moved.
    """
    rng = random.Random(split_seed(seed, "calib:text"))
    rows = []
    for s in scenes:
        types, image = [o["type"] for o in s["objects"]], s["image"]
        for t in types:
            rows.append({"image": image, "text": sentence(t, rng), "present": True})
            mate = partner(t)
            if mate is not None and mate not in types:
                rows.append({"image": image, "text": sentence(mate, rng), "present": False})
        other = rng.choice([t for t in range(len(TYPES)) if t not in types])
        rows.append({"image": image, "text": sentence(other, rng), "present": False})
    return write_jsonl(out / "tau_calibration.jsonl", rows)


def write_synonyms(out: Path) -> Path:
    """synonyms.txt: one noun per line (each type's own CHAIR category)."""
    path = out / "synonyms.txt"
    path.write_text("".join(f"{noun}\n" for _, noun in TYPES))
    return path


def load_scenes(world: Path, split: str) -> list[dict]:
    """The scene records of a built split (image, image_id, objects)."""
    return list(read_jsonl(Path(world) / f"scenes_{split}.jsonl", strict=True))
