"""The command line a new user meets: per-stage --help, the generated key reference, --version, --check.

    .venv/bin/python -m pytest tests/integration/test_cli.py
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from csr_vlm import __version__
from csr_vlm.cli import main
from csr_vlm.reference import REGENERATE, STAGE_MODULES, markdown, stage_reads

ROOT = Path(__file__).parents[2]


def _help(stage: str, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main([stage, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("stage, listed, absent", [
    ("generate", ["search.num_candidates", "reward.lam", "data.prompts", "curate.rejected"],
     ["train.beta", "eval.annotations", "loop.rounds"]),
    ("train", ["train.beta", "train.lora_r", "model.path"], ["search.num_candidates", "reward.lam", "data.prompts"]),
    ("eval", ["eval.annotations", "eval.prompt", "data.max_image_pixels"], ["data.prompts", "train.beta"]),
    ("loop", ["loop.rounds", "train.beta", "search.num_candidates", "eval.annotations"], []),
])
def test_stage_help_lists_the_keys_that_stage_reads(capsys, stage, listed, absent):
    text = _help(stage, capsys)
    keys = set(re.findall(r"^  ([a-z_]+(?:\.[a-z_]+)*)=", text, flags=re.MULTILINE))
    assert set(listed) <= keys
    assert not keys & set(absent)
    assert "--check" in text
    assert max(map(len, text.splitlines())) <= 200, "a --help line is longer than 200 characters"


@pytest.mark.parametrize("stage", list(STAGE_MODULES))
def test_a_stage_module_reads_only_the_sections_it_declares(stage):
    """Every `cfg.<name>` the stage module touches is a section (or key) its READS declares, so --help hides
    nothing it uses."""
    source = Path(importlib.import_module(STAGE_MODULES[stage]).__file__).read_text()
    used = set(re.findall(r"\bcfg\.([a-z_]+(?:\.[a-z_]+)?)", source))
    methods = {"validate", "validate_loop", "dev_eval"}
    declared = stage_reads(stage)
    unread = sorted(k for k in used if k.split(".")[0] not in methods
                    and not any(k == d or k.startswith(d + ".") or d.startswith(k + ".") for d in declared))
    assert not unread, f"{stage} reads {unread} but its READS does not declare them"


def test_the_key_reference_page_is_generated_from_the_schema():
    page = (ROOT / "docs" / "config.md").read_text()
    assert page == markdown(), f"docs/config.md is stale; regenerate it with: {REGENERATE}"
    assert "| `train.beta` | `0.1` |" in page and "Read by: `csr generate`, `csr loop`" in page


def test_version_matches_the_package_metadata(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"csr {__version__}"
    declared = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), flags=re.MULTILINE).group(1)
    assert declared == __version__


def test_help_imports_no_heavy_library():
    """`csr --help` and `csr generate --help` answer without importing torch, transformers or trl."""
    code = ("import sys; from csr_vlm.cli import main; main(['--help'])\n"
            "try:\n    main(['generate', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'transformers', 'trl') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def _broken_prompts(tiny: Path, folder: Path) -> Path:
    """A prompts file beside one good image: a good line, a missing image, no prompt field, a repeated id,
    a cut-off line, and a LLaVA-Instruct entry."""
    folder.mkdir()
    (folder / "a.png").write_bytes((tiny / "images" / "000.png").read_bytes())
    rows = [json.dumps({"id": 1, "image": "a.png", "prompt": "Describe the image."}),
            json.dumps({"id": 2, "image": "missing.png", "prompt": "Describe it."}),
            json.dumps({"id": 3, "image": "a.png", "caption": "no prompt here"}),
            json.dumps({"id": 1, "image": "a.png", "prompt": "again"}),
            '{"id": 4, "image": "a.png", "prompt": "cut off',
            json.dumps({"id": 5, "image": "a.png", "conversations": [
                {"from": "human", "value": "<image>\nWhat is in the image?"}]})]
    (folder / "prompts.jsonl").write_text("\n".join(rows) + "\n")
    return folder / "prompts.jsonl"


def test_check_lists_every_unusable_prompt_and_loads_no_weights(tiny_llava, tmp_path, capsys, monkeypatch):
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("--check loaded model weights")

    for name in ("AutoModelForImageTextToText", "CLIPModel", "AutoModel"):
        monkeypatch.setattr(getattr(transformers, name), "from_pretrained", refuse)
    prompts = _broken_prompts(tiny_llava, tmp_path / "mine")
    args = ["generate", "--check", f"model.path={tiny_llava / 'policy'}", f"reward.clip_path={tiny_llava / 'clip'}",
            f"out={tmp_path / 'out'}", "search.max_sentences=2", "search.max_new_tokens=6"]
    monkeypatch.chdir(tmp_path)  # not the prompts' folder: images resolve beside the prompts file
    assert main([*args, f"data.prompts={prompts}"]) == 1
    out = capsys.readouterr().out
    assert "  search.num_candidates=5" in out and "train.beta" not in out  # the resolved config, generate's keys
    assert "6 entries, 3 usable prompts, 3 unusable" in out
    assert "images: 2 of 3 open" in out and re.search(r"prompt lengths with the image: \d+ tokens", out)
    for reason in ("line 3): missing field(s): prompt", "line 4): duplicate id", "line 5): malformed JSON line",
                   f"image not found: {prompts.parent.resolve() / 'missing.png'}"):
        assert reason in out
    assert out.rstrip().endswith("check: 4 problem(s) above; csr generate would skip those inputs "
                                 "(see docs/formats.md)")
    assert not (tmp_path / "out").exists()

    good = prompts.parent / "good.jsonl"
    good.write_text("\n".join(prompts.read_text().splitlines()[i] for i in (0, 5)) + "\n")
    assert main([*args, f"data.prompts={good}"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("check: OK (no model weights were loaded)")


def test_check_stops_on_a_missing_file_with_one_line(tiny_llava, tmp_path, capsys):
    assert main(["train", "--check", f"model.path={tiny_llava / 'policy'}",
                 f"train.pairs={tmp_path / 'nope.jsonl'}"]) == 2
    assert capsys.readouterr().err.strip() == f"csr train: error: train.pairs: pairs file not found: " \
                                               f"{tmp_path / 'nope.jsonl'}"


def test_eval_check_opens_every_evaluation_image(tiny_llava, tmp_path, capsys):
    """CHAIR and POPE plans from COCO-format annotations; an image the annotations name but the folder lacks is
    listed with its path, and the exit code is 1."""
    cats = [{"id": c, "name": n} for c, n in enumerate(["dog", "car", "person", "cat", "bus", "chair", "cup"], 1)]
    objs = {0: [1, 2, 3], 1: [2, 3, 4], 42: [1, 3, 4]}  # the fixture has no image 42
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps({"images": [{"id": i, "file_name": f"{i:03d}.png"} for i in objs],
                               "annotations": [{"id": 10 * i + c, "image_id": i, "category_id": c}
                                               for i, cs in objs.items() for c in cs], "categories": cats}))
    args = ["eval", "--check", f"model.path={tiny_llava / 'policy'}", f"eval.annotations={ann}",
            f"eval.image_root={tiny_llava / 'images'}", "eval.num_images=3"]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert re.search(r"eval: .*instances.json: \d+ chair prompts, \d+ pope prompts on 3 images, 2 open", out)
    assert f"image not found: {tiny_llava / 'images' / '042.png'}" in out
