"""The toy world as an lmms-eval task: `toy_pope`, its POPE questions on the test split, in <world>/lmms_tasks/.

    csr eval ... eval.lmms_tasks=[toy_pope] eval.lmms_include_path=<world>/lmms_tasks

tests the hand-off to lmms-eval on a CPU: the questions are the adversarial split that csr's POPE builds
from the test annotations (questions.jsonl, which `eval.pope_questions` can read too), asked with the
world's yes/no suffix, answered greedily in 3 tokens, and parsed by csr's own POPE parser (`default`),
so lmms-eval's accuracy on them must equal csr eval's. The YAML holds the questions file's absolute
path (lmms-eval's JSON loader needs one), so `csr toyworld build` rewrites the task whenever it runs.
"""

from __future__ import annotations

from pathlib import Path

from ..benchmarks import pope
from ..data import read_json, write_jsonl
from . import scenes as tw

TASK = "toy_pope"
SPLIT = "adversarial"

YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {questions}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: label
generation_kwargs:
  until: []
  max_new_tokens: 3
  do_sample: false
  temperature: 0
  num_beams: 1
process_results: !function utils.process_results
metric_list:
  - metric: accuracy
    aggregation: mean
    higher_is_better: true
  - metric: f1
    aggregation: !function utils.aggregate_f1
    higher_is_better: true
  - metric: yes_ratio
    aggregation: !function utils.aggregate_yes_ratio
    higher_is_better: false
metadata:
  version: 1.0
"""

UTILS = '''"""The toy world's POPE questions for lmms-eval (written by csr toyworld build)."""
from pathlib import Path

from PIL import Image

from csr_vlm.benchmarks.pope import metrics
from csr_vlm.yes_no import parse_answer

WORLD = Path(__file__).resolve().parents[2]
SUFFIX = {suffix!r}


def doc_to_visual(doc):
    with Image.open(WORLD / doc["image"]) as image:
        return [image.convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["text"] + SUFFIX


def process_results(doc, results):
    pred = parse_answer(getattr(results[0], "text", results[0]), "default")
    pair = {{"label": str(doc["label"]).strip().lower(), "pred": pred, "question_id": doc["question_id"]}}
    return {{"accuracy": float(pred == pair["label"]), "f1": pair, "yes_ratio": pair}}


def aggregate_f1(items):
    return metrics([i["label"] for i in items], [i["pred"] for i in items])["f1"]


def aggregate_yes_ratio(items):
    return metrics([i["label"] for i in items], [i["pred"] for i in items])["yes_ratio"]
'''


LMMS_IMAGES = 60
"""Test images the task asks about (seeded sample): it checks the hand-off, csr's own POPE is the benchmark."""


def write_lmms_task(world: str | Path, seed: int = 0) -> Path:
    """Write <world>/lmms_tasks/toy_pope/ (YAML, utils.py, questions.jsonl); returns <world>/lmms_tasks."""
    world = Path(world).resolve()
    folder = world / "lmms_tasks" / TASK
    folder.mkdir(parents=True, exist_ok=True)
    instances = read_json(world / "instances_test.json", "test annotations")
    n_images = min(len(instances["images"]), LMMS_IMAGES)
    questions = pope.build_questions(instances, n_images, seed, [SPLIT])[SPLIT]
    write_jsonl(folder / "questions.jsonl", questions)
    (folder / f"{TASK}.yaml").write_text(YAML.format(task=TASK, questions=folder / "questions.jsonl"))
    (folder / "utils.py").write_text(UTILS.format(suffix=tw.POPE_SUFFIX))
    return world / "lmms_tasks"
