"""Model loading through transformers' Auto classes, for both tiny families, and clear path errors.

    .venv/bin/python -m pytest tests/integration/test_models.py
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image

from csr_vlm.cli import main
from csr_vlm.config import ModelConfig
from csr_vlm.errors import InputError
from csr_vlm.models import load_clip, load_policy


def test_build_tiny_loads_with_auto_classes(tiny_family):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tiny_family / "policy")
    processor = AutoProcessor.from_pretrained(tiny_family / "policy")
    assert processor.chat_template and processor.tokenizer is not None
    assert model.config.model_type in ("llava", "gemma3")


def test_policy_answers_an_image_and_prompt(tiny_family):
    """Batched, left-padded greedy answers equal each prompt decoded alone with model.generate."""
    import torch

    policy = load_policy(ModelConfig(path=str(tiny_family / "policy")))
    images = [Image.new("RGB", (80, 60), (200, 30, 30)), Image.new("L", (64, 64), 128).convert("RGB")]
    questions = ["Describe the image.", "Is there a dog in the picture?"]
    answers = policy.generate_answers(images, questions, max_new_tokens=5)
    assert len(answers) == 2
    for image, question, answer in zip(images, questions, answers):
        batch = policy.encode([image], [question])
        with torch.inference_mode():
            out = policy.model.generate(**batch, do_sample=False, max_new_tokens=5, eos_token_id=policy.eos_ids,
                                        pad_token_id=policy.tokenizer.pad_token_id,
                                        suppress_tokens=policy.suppressed_ids() or None)
        alone = policy.tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        assert answer == alone


def test_llava_layout_matches_llava_1_5(tiny_llava):
    policy = load_policy(ModelConfig(path=str(tiny_llava / "policy")))
    cfg = policy.model.config
    assert type(policy.model).__name__ == "LlavaForConditionalGeneration"
    assert cfg.vision_feature_layer == -2 and cfg.vision_feature_select_strategy == "default"
    assert policy.prompt_text("Describe.") == "USER: <image>\nDescribe. ASSISTANT:"
    clip, _ = load_clip(str(tiny_llava / "clip"))
    assert clip.config.vision_config.image_size == cfg.vision_config.image_size
    assert clip.config.vision_config.patch_size == cfg.vision_config.patch_size


def test_delimiter_ids_come_from_the_tokenizer(tiny_family):
    policy = load_policy(ModelConfig(path=str(tiny_family / "policy")))
    tok = policy.tokenizer
    dot = tok.convert_tokens_to_ids(".")
    assert tok.encode("a dog.", add_special_tokens=False)[-1] == dot, "'.' must be a single token"
    ids = policy.delimiter_ids(["."])
    assert dot in ids and all(tok.decode([i]).rstrip().endswith(".") for i in ids)
    assert policy.tokenizer.eos_token_id not in ids


def test_clip_pools_on_eos(tiny_llava):
    """CLIP's text tower pools at the EOS; the tokenizer must append it and its id must not be 2."""
    _, processor = load_clip(str(tiny_llava / "clip"))
    ids = processor.tokenizer("a red circle.")["input_ids"]
    assert ids[-1] == processor.tokenizer.eos_token_id != 2


@pytest.mark.parametrize("path, message", [
    ("/nonexistent/model", "model.path: no model directory at /nonexistent/model"),
    ("", "model.path is not set"),
])
def test_missing_model_path_is_one_line_error(path, message):
    with pytest.raises(InputError, match=message):
        load_policy(ModelConfig(path=path))


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(InputError, match="no config.json"):
        load_policy(ModelConfig(path=str(tmp_path)))


def test_build_tiny_cli(tmp_path, capsys):
    assert main(["models", "build-tiny", "--out", str(tmp_path), "--family", "gemma3"]) == 0
    assert (tmp_path / "policy" / "config.json").exists() and (tmp_path / "clip" / "config.json").exists()
    with pytest.raises(SystemExit) as info:
        main(["models", "build-tiny", "--out", str(tmp_path), "--family", "nope"])
    assert info.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err


@pytest.mark.slow
def test_help_does_not_import_torch():
    code = "import sys; from csr_vlm.cli import main; main(['--help']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False")
