"""`csr eval` on the tiny LLaVA: files written, numbers consistent with the samples, resume, skips."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from csr_vlm import evaluate, yes_no
from csr_vlm.benchmarks import chair, pope
from csr_vlm.benchmarks.registry import flat_metrics
from csr_vlm.config import ConfigError, load_config


def _annotations(tmp_path):
    """4 fixture images + 1 missing file; 8 categories with ids 501, 508, ... (not 1..80); 3-4 objects per image."""
    names = ["dog", "cat", "person", "car", "bench", "bus", "apple", "chair"]
    cats = [{"id": 501 + 7 * k, "name": n} for k, n in enumerate(names)]
    objs = {0: [0, 1, 2], 1: [2, 3, 4], 2: [0, 2, 3, 5], 3: [1, 6, 7], 4: [0, 5, 6]}
    images = [{"id": 10 + i, "file_name": f"{i:03d}.png" if i < 4 else "missing.png"} for i in range(5)]
    pairs = [(i, k) for i in objs for k in objs[i]]
    anns = [{"id": n, "image_id": 10 + i, "category_id": cats[k]["id"]} for n, (i, k) in enumerate(pairs)]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


@pytest.fixture(scope="module")
def eval_run(tiny_llava, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    cfg = load_config(None, [
        f"out={tmp / 'eval'}", f"model.path={tiny_llava / 'policy'}", f"eval.annotations={_annotations(tmp)}",
        f"eval.image_root={tiny_llava / 'images'}", "eval.num_images=5", "eval.max_new_tokens=6",
        "eval.pope_max_new_tokens=2", "eval.batch_size=8", "eval.pope_splits=[random,popular]",
    ])
    return cfg, evaluate.run(cfg, 0)


def test_outputs_and_consistency(eval_run):
    """5 images sampled, one missing -> 4 captions. POPE: 5 images with >= 3 objects -> 2 splits x 30 questions;
    the missing image's 6 questions per split go unanswered -> n = 24 per split. The metrics must equal
    CHAIR / POPE recomputed from samples.jsonl."""
    cfg, out = eval_run
    assert (out / "DONE").exists() and (out / "config.yaml").exists()
    m = json.loads((out / "metrics.json").read_text())
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    caps = [s for s in samples if s["task"] == "chair"]
    assert len(caps) == 4 and m["chair"]["n_captions"] == 4
    assert m["protocol"]["skipped_images"] == 1 and m["protocol"]["num_images"] == 5
    assert m["protocol"]["prompt"] == cfg.eval.prompt and m["protocol"]["parser"] == "default"
    vocab = chair.load_vocabulary()
    gt = chair.ground_truth(chair.load_instances(cfg.eval.annotations), vocab)
    again = chair.compute_chair([{"image_id": s["image_id"], "caption": s["answer"]} for s in caps], gt, vocab)
    assert again["chair_i"] == m["chair"]["chair_i"] and again["recall"] == m["chair"]["recall"]
    assert set(m["pope"]) >= {"random", "popular", "mean"}
    assert m["pope"]["random"]["n"] == 24 and m["pope"]["random"]["n_missing"] == 6
    qs = [json.loads(line) for line in (out / "pope_questions.jsonl").read_text().splitlines()]
    answered = {(s["image"].rsplit("/", 1)[-1], s["prompt"]): s["answer"] for s in samples if s["task"] == "pope"}
    rnd = [q for q in qs if q["category"] == "random" and (q["image"], q["text"] + cfg.eval.pope_suffix) in answered]
    preds = [yes_no.parse_default(answered[(q["image"], q["text"] + cfg.eval.pope_suffix)]) for q in rnd]
    assert pope.metrics([q["label"] for q in rnd], preds)["f1"] == m["pope"]["random"]["f1"]
    assert m["flat"] == flat_metrics(m, ["chair", "pope"]) and m["flat"]["pope_f1"] == m["pope"]["mean"]["f1"]


def test_resume_returns_at_once(eval_run, monkeypatch):
    """With DONE present and overwrite=false, run() must not load a model."""
    cfg, out = eval_run
    import csr_vlm.models

    monkeypatch.setattr(csr_vlm.models, "load_policy", lambda *a, **k: pytest.fail("model loaded on resume"))
    assert evaluate.run(cfg, 0) == out


def test_flat_metrics():
    """Each task's registered metrics, read from its section at their source path, in task order."""
    m = {"chair": {"chair_s": 0.5, "chair_i": 0.25, "recall": 0.75, "dup_rate": 0.1, "n_captions": 2},
         "pope": {"mean": {"f1": 0.8, "accuracy": 0.7, "yes_ratio": 0.4}}}
    assert flat_metrics(m, ["chair", "pope"]) == {"chair_s": 0.5, "chair_i": 0.25, "recall": 0.75, "dup_rate": 0.1,
                                                  "pope_f1": 0.8, "pope_acc": 0.7, "pope_yes_ratio": 0.4}
    assert list(flat_metrics(m, ["pope", "chair"]))[:3] == ["pope_f1", "pope_acc", "pope_yes_ratio"]


class _OraclePolicy:
    """Answers every caption prompt with "A dog and a cat." and every POPE question truthfully."""

    context_length = None
    processor = SimpleNamespace(all_special_tokens=["</s>"], get_vocab=lambda: {"dog": 0})  # control tokens

    def __init__(self, objects: dict[str, set[str]]):
        self.objects = objects

    def generate_answers(self, images, questions, max_new_tokens, too_long=None):
        self.calls = getattr(self, "calls", 0) + len(questions)
        out = []
        for image, q in zip(images, questions):
            obj = yes_no.question_object(q)
            if obj is None:
                out.append("A dog and a cat.")
            else:
                out.append("Yes." if obj in self.objects[image.rsplit("/", 1)[-1]] else "No, there is not.")
        return out


def test_pipeline_numbers_with_fake_policy(tmp_path, monkeypatch):
    """Images 0..3 (image 4 missing): 0 = dog, cat, person; 1 = person, car, bench; 2 = dog, person, car, bus;
    3 = cat, apple, chair. Caption "A dog and a cat." everywhere: 8 mentions, hallucinated: image 1 dog + cat,
    image 2 cat, image 3 dog = 4 -> CHAIR_i = 4/8, CHAIR_s = 3/4, recall = (2 + 0 + 1 + 1) / (3 + 3 + 4 + 3) = 4/13.
    POPE answered truthfully -> accuracy = F1 = 1 and yes-ratio = 1/2 in each split (24 answered questions)."""
    import csr_vlm.models

    ann = _annotations(tmp_path)
    inst = json.loads(ann.read_text())
    names = {c["id"]: c["name"] for c in inst["categories"]}
    files = {im["id"]: im["file_name"] for im in inst["images"]}
    objects: dict[str, set[str]] = {}
    for a in inst["annotations"]:
        objects.setdefault(files[a["image_id"]], set()).add(names[a["category_id"]])

    def fake_load_image(path, max_pixels=0):
        if "missing" in str(path):
            raise evaluate.InputError(f"image not found: {path}")
        return str(path)

    monkeypatch.setattr(evaluate, "load_image", fake_load_image)
    policy = _OraclePolicy(objects)
    monkeypatch.setattr(csr_vlm.models, "load_policy", lambda cfg: policy)
    cfg = load_config(None, [f"out={tmp_path / 'e'}", f"eval.annotations={ann}", "eval.num_images=5",
                             f"eval.image_root={tmp_path}"])
    m = json.loads((evaluate.run(cfg, 1) / "metrics.json").read_text())
    assert m["chair"]["chair_i"] == pytest.approx(0.5) and m["chair"]["chair_s"] == pytest.approx(0.75)
    assert m["chair"]["recall"] == pytest.approx(4 / 13)
    for split in yes_no.SPLITS:
        r = m["pope"][split]
        assert (r["n"], r["accuracy"], r["f1"], r["yes_ratio"]) == (24, 1.0, 1.0, 0.5)
    assert m["flat"]["pope_f1"] == 1.0 and m["protocol"]["round"] == 1
    # 4 captions + distinct POPE prompts of the 4 readable images were generated once each
    n_prompts = len((tmp_path / "e" / "samples.jsonl").read_text().splitlines())
    assert policy.calls == n_prompts
    # a killed run (no DONE) resumes from samples.jsonl: nothing is generated again, same metrics
    (tmp_path / "e" / "DONE").unlink()
    assert json.loads((evaluate.run(cfg, 1) / "metrics.json").read_text()) == m and policy.calls == n_prompts


def _fake_setup(tmp_path, monkeypatch, policy_loader):
    import csr_vlm.models

    monkeypatch.setattr(evaluate, "load_image", lambda path, max_pixels=0: str(path))
    monkeypatch.setattr(csr_vlm.models, "load_policy", policy_loader)
    return [f"out={tmp_path / 'e'}", f"eval.annotations={_annotations(tmp_path)}", "eval.num_images=5"]


def test_no_readable_image_fails(tmp_path, monkeypatch):
    """Every image missing (wrong eval.image_root): InputError, no metrics.json, no DONE."""
    args = _fake_setup(tmp_path, monkeypatch, lambda cfg: _OraclePolicy({}))

    def missing(path, max_pixels=0):
        raise evaluate.InputError(f"image not found: {path}")

    monkeypatch.setattr(evaluate, "load_image", missing)
    cfg = load_config(None, args + [f"eval.image_root={tmp_path / 'nowhere'}"])
    with pytest.raises(evaluate.InputError, match="no CHAIR caption could be produced.*eval.image_root"):
        evaluate.run(cfg, 0)
    assert not (tmp_path / "e" / "DONE").exists() and not (tmp_path / "e" / "metrics.json").exists()


def test_bad_synonyms_fails_before_the_model(tmp_path, monkeypatch):
    args = _fake_setup(tmp_path, monkeypatch, lambda cfg: pytest.fail("policy loaded before eval.synonyms"))
    with pytest.raises(evaluate.InputError, match="nope.txt"):
        evaluate.run(load_config(None, args + [f"eval.synonyms={tmp_path / 'nope.txt'}"]), 0)


def test_overwrite_removes_done_first(tmp_path, monkeypatch):
    """overwrite=true on a done dir: DONE and metrics.json are gone before the (here failing) model load."""
    def boom(cfg):
        raise RuntimeError("killed")

    args = _fake_setup(tmp_path, monkeypatch, boom)
    out = tmp_path / "e"
    out.mkdir()
    for name in ("DONE", "metrics.json"):
        (out / name).write_text("{}")
    with pytest.raises(RuntimeError):
        evaluate.run(load_config(None, args + ["overwrite=true"]), 0)
    assert not (out / "DONE").exists() and not (out / "metrics.json").exists()


TOY_TASK_MODULE = '''"""A toy benchmark: how many words a model uses to name one colour."""
from pathlib import Path
from types import SimpleNamespace

from csr_vlm.benchmarks.task import Metric, Plan, Task, job_key


def plan(ev, seed, instances):
    return Plan([{"task": "words", "image_id": im["id"], "image": str(Path(ev.image_root) / im["file_name"]),
                  "prompt": "Name one colour.", "max_new_tokens": 4} for im in instances["images"]])


def score(plan, answers, ev, out):
    counts = [len(answers[job_key(j)].split()) for j in plan.jobs if job_key(j) in answers]
    return {"mean_words": sum(counts) / len(counts), "n": len(counts)}


TASK = Task(name="words", label="colour answer", plan=plan, score=score, metrics=(
    Metric("answer_words", True, "answer words: words per answer to 'Name one colour.'", ("mean_words",)),))
'''


@pytest.fixture
def restore_registry():
    from csr_vlm.benchmarks import registry

    saved = dict(registry.TASKS)
    yield registry
    registry.TASKS.clear()
    registry.TASKS.update(saved)


def test_a_new_benchmark_is_one_module_plus_one_line(tmp_path, monkeypatch, restore_registry):
    """toy_words.py (a module written here) + `register(toy_words.TASK)`: the config accepts it in eval.tasks and
    its metric in loop.select_on; csr eval runs it beside CHAIR; the loop and the report know its direction.
    The fake policy says "A dog and a cat." (5 words) to every non-POPE prompt, on each of the 5 images."""
    from csr_vlm import loop, report

    registry = restore_registry
    (tmp_path / "toy_words.py").write_text(TOY_TASK_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import toy_words

    with pytest.raises(ConfigError, match="eval.tasks: unknown value 'words'"):
        load_config(None, ["eval.tasks=[chair, words]"])
    registry.register(toy_words.TASK)  # the one line
    args = _fake_setup(tmp_path, monkeypatch, lambda cfg: _OraclePolicy({}))
    cfg = load_config(None, args + [f"eval.image_root={tmp_path}", "eval.tasks=[chair, words]",
                                    "loop.select_on=answer_words"])
    m = json.loads((evaluate.run(cfg, 0) / "metrics.json").read_text())
    assert m["words"] == {"mean_words": 5.0, "n": 5}
    assert list(m["flat"]) == ["chair_s", "chair_i", "recall", "dup_rate", "answer_words"]
    assert m["flat"]["answer_words"] == 5.0
    assert loop.pick_best({0: {"answer_words": 5.0}, 1: {"answer_words": 3.0}}, "answer_words") == (1, 0)
    assert report.metric_doc("answer_words").endswith("(lower is better)")
