"""Prompts files as users have them: every accepted format, where relative images resolve, skip summaries.

    .venv/bin/python -m pytest tests/unit/test_inputs.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from csr_vlm.console import skip_summary
from csr_vlm.data import read_prompts

ENTRY = {"id": 7, "image": "imgs/cat.png"}
FORMATS = {
    "own": {**ENTRY, "prompt": "Describe the image."},
    "official CSR": {**ENTRY, "input": "<image>\nDescribe the image."},
    "question": {**ENTRY, "question": "Describe the image."},
    "LLaVA-Instruct": {**ENTRY, "conversations": [
        {"from": "human", "value": "<image>\nDescribe the image."},
        {"from": "gpt", "value": "A cat on a mat."},
        {"from": "human", "value": "What colour is it?"}]},
}


def _folder_with_image(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    (data / "imgs").mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(data / "imgs" / "cat.png")
    return data


@pytest.mark.parametrize("layout", ["jsonl", "json list"])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_prompt_format_gives_the_same_record(tmp_path, monkeypatch, fmt, layout):
    """Each format, as JSONL or as one JSON list, read from another directory: the same prompt, `<image>` removed,
    the image found beside the prompts file."""
    data = _folder_with_image(tmp_path)
    path = data / "prompts.json"
    entry = FORMATS[fmt]
    path.write_text(json.dumps(entry) + "\n" if layout == "jsonl" else json.dumps([entry]))
    monkeypatch.chdir(tmp_path)  # neither the prompts' folder nor the images'
    records, skipped = read_prompts(Path("data") / "prompts.json")
    assert skipped == []
    [rec] = records
    assert (rec.id, rec.prompt) == ("7", "Describe the image.")
    assert Path(rec.image) == (tmp_path / "data/imgs/cat.png").resolve() and Path(rec.image).is_file()


def test_image_root_wins_over_the_prompts_folder(tmp_path):
    data = _folder_with_image(tmp_path)
    prompts = tmp_path / "elsewhere" / "prompts.jsonl"
    prompts.parent.mkdir()
    prompts.write_text(json.dumps(FORMATS["own"]) + "\n")
    [beside], _ = read_prompts(prompts)
    [rooted], _ = read_prompts(prompts, image_root=str(data))
    assert Path(beside.image) == prompts.parent.resolve() / "imgs/cat.png" and not Path(beside.image).exists()
    assert Path(rooted.image) == data / "imgs/cat.png" and Path(rooted.image).is_file()


def test_absolute_image_paths_and_the_prefix(tmp_path):
    data = _folder_with_image(tmp_path)
    (data / "imgs" / "cat.png").rename(data / "imgs" / "COCO_train2014_cat.png")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({**FORMATS["own"], "image": str(data / "imgs" / "cat.png")}) + "\n")
    [rec], _ = read_prompts(prompts, image_root="/nowhere", image_prefix="COCO_train2014_")
    assert Path(rec.image) == data / "imgs" / "COCO_train2014_cat.png" and Path(rec.image).is_file()


def test_entries_without_any_prompt_field_say_where_it_was_looked_for(tmp_path):
    prompts = tmp_path / "p.jsonl"
    rows = [{"id": 1, "image": "a.png", "caption": "x"},
            {"id": 2, "image": "a.png", "conversations": [{"from": "gpt", "value": "only an answer"}]},
            {"id": 3, "image": "a.png", "conversations": [{"from": "human", "value": "<image>"}]}]
    prompts.write_text("\n".join(map(json.dumps, rows)) + "\n")
    records, skipped = read_prompts(prompts)
    assert records == []
    assert [s["reason"].split(" (")[0] for s in skipped] == ["missing field(s): prompt"] * 2 + ["empty prompt"]
    assert "conversations" in skipped[0]["reason"]


def test_skip_summary_groups_reasons_and_names_the_resolved_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    skipped = [{"id": "1", "image": "data/imgs/a.png", "reason": "image not found: data/imgs/a.png"},
               {"id": "2", "image": "data/imgs/b.png", "reason": "image not found: data/imgs/b.png"},
               {"id": None, "line": 4, "reason": "malformed JSON line (Expecting value)"}]
    line = skip_summary("generate", skipped, 10, "out/skipped.jsonl")
    assert line == (f"[generate] skipped 3 of 10 inputs: image not found x2 (first: {tmp_path}/data/imgs/a.png); "
                    "malformed JSON line x1 (first: line 4); all in out/skipped.jsonl")
    assert skip_summary("generate", [], 10, "x") is None
