"""`csr calibrate` and `csr questions`: labelled objects from COCO-format annotations, the toy-world check.

    .venv/bin/python -m pytest tests/integration/test_calibrate.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from csr_vlm.benchmarks.chair import load_ground_truth
from csr_vlm.calibrate import ObjectSample, labelled_sentences, present_and_absent
from csr_vlm.cli import main
from csr_vlm.data import read_prompts
from csr_vlm.questions import yes_no_prompts


def _coco(tmp_path: Path, images_dir: Path) -> tuple[Path, Path]:
    """Images 0-2 exist, image 3 does not. dog+cat in 0 and 1, dog alone in 2; person, car in none.
    Co-occurrence: dog-cat twice. Captions of image 2 name a "car" (so it is never asked as absent there)."""
    cats = [{"id": k, "name": n} for k, n in enumerate(["dog", "cat", "person", "car"], 1)]
    objs = {0: [1, 2], 1: [1, 2], 2: [1], 3: [3]}
    images = [{"id": i, "file_name": f"{i:03d}.png" if i < 3 else "gone.png"} for i in objs]
    anns = [{"id": 10 * i + c, "image_id": i, "category_id": c} for i, cs in objs.items() for c in cs]
    inst, caps = tmp_path / "inst.json", tmp_path / "caps.json"
    inst.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    caps.write_text(json.dumps({"annotations": [{"image_id": 2, "caption": "A dog beside a red car."}]}))
    return inst, caps


def test_present_and_absent_objects(tiny_llava, tmp_path):
    """Image 2 (dog): the co-occurring absent object is cat (seen with dog twice); the random absent one cannot be
    car (its caption names a car) -> person. Image 0 (dog, cat): no co-occurring absent object exists (dog and cat
    only ever appear together), so only random ones: person or car. Image 3's file is missing: skipped."""
    inst, caps = _coco(tmp_path, tiny_llava / "images")
    _, instances, gt = load_ground_truth(inst, caps)
    rows, skipped = present_and_absent(instances, gt, str(tiny_llava / "images"), ObjectSample(10, 1, 1),
                                       random.Random(0))
    by_id = {image_id: (present, absent) for image_id, _, present, absent in rows}
    assert by_id[2] == (["dog"], ["cat", "person"])
    assert by_id[0][0] == ["cat", "dog"] and len(by_id[0][1]) == 1 and by_id[0][1][0] in ("person", "car")
    assert set(by_id) == {0, 1, 2} and skipped[0]["reason"].startswith("image not found")
    rng = random.Random(0)
    rows, _ = present_and_absent(instances, gt, str(tiny_llava / "images"), ObjectSample(10, 1, 1, 10**8), rng)
    records = labelled_sentences(rows, rng, ("a photo of a {}.",), {"dog": "puppy"})
    dogs = [r for r in records if r["object"] == "dog"]
    assert dogs and all(r["text"] == "a photo of a puppy." for r in dogs)  # named as `names` says
    assert sum(r["present"] for r in records) == 5 and len(records) == 5 + 4  # present 2 + 2 + 1, absent 1 + 1 + 2


def test_questions_are_prompts_about_present_and_absent_objects(tiny_llava, tmp_path):
    """One present and one absent object per readable image: 3 images x 2 questions, each a valid prompt."""
    inst, caps = _coco(tmp_path, tiny_llava / "images")
    out = tmp_path / "yesno.jsonl"
    assert main(["questions", "--annotations", str(inst), "--captions", str(caps), "--image-root",
                 str(tiny_llava / "images"), "--out", str(out), "--n-images", "10"]) == 0
    records, skipped = read_prompts(out)
    assert len(records) == 6 and not skipped
    assert {r.prompt for r in records if r.id.startswith("yn-2-")} == {
        "Is there a dog in the image? Please answer yes or no.",
        "Is there a cat in the image? Please answer yes or no."}
    rows = [(7, "x.png", ["apple"], ["egg"])]
    assert [r["prompt"] for r in yes_no_prompts(rows, 1, "Is there a {}?", random.Random(0))] == [
        "Is there an apple?", "Is there an egg?"]


def test_calibrate_on_the_toy_world_agrees_with_its_own_calibration(quick_world, tmp_path, capsys):
    """csr calibrate on the world's COCO-format calibration split (with the words its CLIP knows the objects by)
    against the world's own tau_calibration.jsonl, scored by the same CLIP: AUC within 0.02, mean - 3 sd within 3
    points, Youden's cut within 8 (on the quick world: 68.0 vs 73.7; with a CLIP that separates, the cut may sit
    anywhere in the gap between the two classes' tails, which two samples of 60 images place differently)."""
    from csr_vlm.calibration import calibration_scores, clip_summary, read_calibration
    from csr_vlm.models import ClipScorer

    w = quick_world
    out = tmp_path / "calib.jsonl"
    assert main(["calibrate", "--annotations", str(w / "instances_calib.json"), "--captions",
                 str(w / "captions_calib.json"), "--synonyms", str(w / "synonyms.txt"), "--image-root", str(w),
                 "--clip", str(w / "clip"), "--out", str(out), "--n-images", "60", "--names",
                 str(w / "object_names.json"), "--templates", "there is a {}.", "i see a {}.", "a {} is here."]) == 0
    ours = json.loads(out.with_suffix(".summary.json").read_text())
    assert "AUC present vs absent" in capsys.readouterr().out
    present, absent = calibration_scores(ClipScorer(str(w / "clip")), read_calibration(w / "tau_calibration.jsonl"))
    theirs = {rule: clip_summary(present, absent, None, 3.0, rule) for rule in ("true_sd", "youden")}
    assert ours["auc"] == pytest.approx(theirs["youden"]["auc"], abs=0.02)
    assert ours["tau"]["true_sd"] == pytest.approx(theirs["true_sd"]["suggested_tau"], abs=3.0)
    assert ours["tau"]["youden"] == pytest.approx(theirs["youden"]["suggested_tau"], abs=8.0)
    assert ours["sentences"] == len(read_calibration(out)) and ours["skipped_images"] == 0
