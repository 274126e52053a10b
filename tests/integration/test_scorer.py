"""The scorer seam: a new kind of image-text scorer is one module plus one `register` line.

    .venv/bin/python -m pytest -q tests/integration/test_scorer.py
"""

from __future__ import annotations

import json

import pytest

from csr_vlm.cli import main
from csr_vlm.config import ConfigError, load_config

TOY_SCORER_MODULE = '''
"""A toy image-text scorer: every sentence scores 42 against any image, and it counts what it was asked."""

class ToyScorer:
    kind = "toy"

    def __init__(self, spec):
        self.spec, self.images, self.texts = spec, 0, []

    def image_embedding(self, image):
        self.images += 1
        return image.size

    def score(self, image_embedding, texts):
        self.texts += list(texts)
        return [42.0] * len(texts)


BUILT = []


def build(spec):
    BUILT.append(ToyScorer(spec))
    return BUILT[-1]
'''


@pytest.fixture
def restore_scorers():
    from csr_vlm import scorer

    saved = dict(scorer.SCORERS)
    yield scorer
    scorer.SCORERS.clear()
    scorer.SCORERS.update(saved)


def test_a_new_scorer_is_one_module_plus_one_line(tiny_llava, tmp_path, monkeypatch, restore_scorers):
    """toy_scorer.py (written here) + `register("toy", toy_scorer.build)`: reward.scorer=toy is accepted, csr generate
    builds it from reward.clip_path and the sentences' R_I are its scores (42, which no CLIP gives), never CLIP's."""
    (tmp_path / "toy_scorer.py").write_text(TOY_SCORER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import toy_scorer

    with pytest.raises(ConfigError, match="reward.scorer: unknown value 'toy'"):
        load_config(None, ["reward.scorer=toy"])
    restore_scorers.register("toy", toy_scorer.build)  # the one line
    out = tmp_path / "gen"
    assert main(["generate", f"model.path={tiny_llava / 'policy'}", f"reward.clip_path={tiny_llava / 'clip'}",
                 f"data.prompts={tiny_llava / 'prompts.jsonl'}", f"data.image_root={tiny_llava}", f"out={out}",
                 "reward.scorer=toy", "reward.repeat_neutral=false", "data.max_prompts=2", "search.num_candidates=2",
                 "search.keep_top=1", "search.keep_bottom=1", "search.max_sentences=2", "search.max_new_tokens=4",
                 "search.filters=[]"]) == 0
    [built] = toy_scorer.BUILT
    assert built.spec.kind == "toy" and built.spec.path == str(tiny_llava / "clip") and built.images == 2
    lines = [json.loads(x) for x in (out / "candidates.jsonl").read_text().splitlines()]
    r_i = [s["r_i"] for c in lines for a in c["answers"] for s in a["sentences"] if not s.get("end")]
    assert r_i and set(r_i) == {42.0} and built.texts
