"""Inputs that used to stop a stage: the model's own control tokens in a prompt or a pair, pairs the Trainer
would fail on mid-run, images whose pixels differed between stages, a 50 MB prompt line, a full disk at the
final save, pairs changed under a finished training.

    .venv/bin/python -m pytest tests/integration/test_reliability_inputs.py
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_TRAIN, write_pairs
from PIL import Image

from csr_vlm import train
from csr_vlm.cli import main
from csr_vlm.errors import InputError
from csr_vlm.models.policy import chat_prompt
from csr_vlm.models.tiny import BUILDERS, FAMILIES
from csr_vlm.special_tokens import ControlTokens


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


# ---------------------------------------------------------------------------- control tokens


@pytest.mark.parametrize("family", FAMILIES)
def test_every_familys_image_placeholder_is_stripped_and_other_control_tokens_refused(family):
    """'<placeholder>\\nDescribe this image.' with the family's own image token: the raw prompt is what crashed
    (the processor counts two images for one); cleaned, it tokenizes exactly as 'Describe this image.'. The
    family's end-of-sequence token in a prompt is refused with the reason, never turned into a control token."""
    _, processor = BUILDERS[family]()
    tokens = ControlTokens.of(processor)
    image = Image.new("RGB", (64, 64), "red")
    raw = f"{processor.image_token}\nDescribe this image."
    with pytest.raises(ValueError, match="number of"):
        processor(images=[[image]], text=[chat_prompt(processor, raw)], return_tensors="pt")
    assert tokens.clean_prompt(raw) == "Describe this image."
    a, b = (processor(images=[[image]], text=[chat_prompt(processor, q)], return_tensors="pt")["input_ids"]
            for q in (tokens.clean_prompt(raw), "Describe this image."))
    assert torch.equal(a, b)
    eos = processor.tokenizer.eos_token
    with pytest.raises(InputError, match=f"^prompt holds the model's control token {eos!r}$"):
        tokens.clean_prompt(f"Describe {eos} this image.")
    with pytest.raises(InputError, match="^chosen holds the model's control token"):
        tokens.check_text(f"a red {processor.image_token} circle.", "chosen")


def test_generate_and_eval_take_prompts_with_the_models_placeholders(tiny_gemma3, tmp_path, capsys):
    """Gemma 3: the first prompt holds <end_of_turn> (skipped with the reason, also by the start-up check that met
    it first), the second starts with <start_of_image> (stripped and searched). eval.prompt in LLaVA's style
    ('<image>\\nDescribe this image.') answers every image; once the annotations change, its finished metrics are
    refused, not reused."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "turn", "image": "images/000.png", "prompt": "Describe <end_of_turn> it."})
                       + "\n" + json.dumps({"id": "boi", "image": "images/001.png",
                                            "prompt": "<start_of_image>\nDescribe this image."}) + "\n")
    out = tmp_path / "gen"
    assert main(["generate", f"model.path={tiny_gemma3 / 'policy'}", f"reward.clip_path={tiny_gemma3 / 'clip'}",
                 f"data.prompts={prompts}", f"data.image_root={tiny_gemma3}", f"out={out}", "search.num_candidates=2",
                 "search.keep_top=1", "search.keep_bottom=1", "search.max_sentences=1", "search.max_new_tokens=4",
                 "search.filters=[]"]) == 0
    assert [(c["id"], c["prompt"]) for c in _lines(out / "candidates.jsonl")] == [("boi", "Describe this image.")]
    assert _lines(out / "skipped.jsonl") == [{"id": "turn", "reason": "prompt holds the model's control token "
                                              "'<end_of_turn>'", "image": str(tiny_gemma3 / "images" / "000.png")}]
    cats = [{"id": 1, "name": "dog"}]
    images = [{"id": i, "file_name": f"{i:03d}.png"} for i in range(2)]
    (tmp_path / "inst.json").write_text(json.dumps({"images": images, "categories": cats, "annotations": [
        {"id": i, "image_id": i, "category_id": 1} for i in range(2)]}))
    ev = tmp_path / "eval"
    args = ["eval", f"model.path={tiny_gemma3 / 'policy'}", f"out={ev}", f"eval.annotations={tmp_path / 'inst.json'}",
            f"eval.image_root={tiny_gemma3 / 'images'}", "eval.num_images=2", "eval.max_new_tokens=3",
            "eval.tasks=[chair]", "eval.prompt=<image>\nDescribe this image."]
    assert main(args) == 0
    assert len(_lines(ev / "samples.jsonl")) == 2 and not (ev / "skipped.jsonl").exists()
    (tmp_path / "inst.json").write_text((tmp_path / "inst.json").read_text().replace('"dog"', '"cat"'))
    capsys.readouterr()
    assert main(args) == 2  # finished metrics of the old annotations are not passed off as the new ones'
    assert "(the content of eval.annotations changed since)" in capsys.readouterr().err


def test_qwen_prompt_with_its_image_pad_is_searched_start_up_check_included(tmp_path):
    """The issue's case: Qwen2.5-VL's <|image_pad|> in the first prompt (the one the start-up check of the cached
    search takes) crashed generate; now it is stripped and the prompt searched."""
    from csr_vlm.models.tiny import build_tiny

    d = build_tiny(tmp_path / "qwen", family="qwen2_5_vl")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "pad", "image": "images/000.png",
                                   "prompt": "<|vision_start|><|image_pad|><|vision_end|>Describe this image."})
                       + "\n")
    out = tmp_path / "gen"
    assert main(["generate", f"model.path={d / 'policy'}", f"reward.clip_path={d / 'clip'}", f"data.prompts={prompts}",
                 f"data.image_root={d}", f"out={out}", "search.num_candidates=2", "search.keep_top=1",
                 "search.keep_bottom=1", "search.max_sentences=1", "search.max_new_tokens=3",
                 "search.filters=[]"]) == 0
    assert [(c["id"], c["prompt"]) for c in _lines(out / "candidates.jsonl")] == [("pad", "Describe this image.")]


# ---------------------------------------------------------------------------- pairs


def _pair(pid: str, image, **change) -> dict:
    rec = {"id": pid, "images": [str(image)],
           "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe it."}]}],
           "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "a red circle."}]}],
           "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "a dog."}]}]}
    return {**rec, **change}


def test_train_checks_every_pair_first_and_skips_the_bad_ones(tiny_llava, tmp_path):
    """Line by line: 1 good; 2 chosen a plain string; 3 <image> in chosen; 4 two images, one slot; 5 no image
    slot; 6 a truncated PNG; 7 no rejected; 8 not JSON; 9 </s> in rejected; 10 good. Training runs on lines 1 and
    10 (2 pairs, batch 1, 1 epoch = 2 steps); the eight others are in skipped.jsonl with their reasons."""
    img = tiny_llava / "images" / "000.png"
    broken = tmp_path / "broken.png"
    broken.write_bytes(img.read_bytes()[: img.stat().st_size // 2])
    text = lambda t: [{"role": "assistant", "content": [{"type": "text", "text": t}]}]  # noqa: E731
    rows = [_pair("ok1", img), _pair("str", img, chosen="a red circle."), _pair("ph", img, chosen=text("an <image>.")),
            _pair("two", img, images=[str(img), str(img)]),
            _pair("noslot", img, prompt=[{"role": "user", "content": "describe it."}]), _pair("bad", broken)]
    no_rejected = _pair("norej", img)
    del no_rejected["rejected"]
    lines = [json.dumps(r) for r in rows] + [json.dumps(no_rejected), '{"id": "cut", "images": [',
                                             json.dumps(_pair("eos", img, rejected=text("a dog.</s> USER: hi"))),
                                             json.dumps(_pair("ok2", img))]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(lines) + "\n")
    out = tmp_path / "train"
    assert main(["train", f"model.path={tiny_llava / 'policy'}", f"out={out}", f"train.pairs={pairs}",
                 *TINY_TRAIN]) == 0
    done = json.loads((out / "DONE").read_text())
    assert (done["pairs"], done["skipped"], done["steps"]) == (2, 8, 2)
    reasons = {s["line"]: s["reason"] for s in _lines(out / "skipped.jsonl")}
    assert reasons == {
        2: "chosen is a string, not a list of messages (see docs/formats.md)",
        3: "chosen holds the model's control token '<image>'",
        4: "prompt has 1 image slot(s) for 2 image(s)",
        5: "prompt has 0 image slot(s) for 1 image(s)",
        6: f"image cannot be read (OSError): {broken}",
        7: "missing field(s): rejected (see docs/formats.md)",
        8: reasons[8] if reasons[8].startswith("malformed JSON line") else "malformed JSON line",
        9: "rejected holds the model's control token '</s>'",
    }


def test_max_length_below_the_image_tokens_is_refused_before_training(tiny_llava, tmp_path, capsys):
    pairs = write_pairs(tmp_path / "pairs.jsonl", tiny_llava / "images", n=1)
    assert main(["train", f"model.path={tiny_llava / 'policy'}", f"out={tmp_path / 'train'}", f"train.pairs={pairs}",
                 *TINY_TRAIN, "train.max_length=32"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("csr train: error: train.max_length=32 leaves no room for an answer: the prompt of pair p0 "
                          "is ") and err.endswith(" tokens with its image; raise it or set it to null")
    assert int(err.split(" is ")[1].split()[0]) > 64  # the tiny LLaVA's 64 image tokens and the template


def test_a_full_disk_at_the_final_save_costs_only_the_save(tiny_llava, tmp_path, capsys, monkeypatch):
    """The merged save fails (ENOSPC): one line, the Trainer's last checkpoint kept. The re-run resumes at the last
    step, redoes only the save, and DONE's loss is the mean over all 3 steps (the Trainer's own figure would cover
    the 0 steps of the re-run). Pairs edited after that: the finished stage refuses to pass for them."""
    pairs = write_pairs(tmp_path / "pairs.jsonl", tiny_llava / "images", n=3)
    out = tmp_path / "train"
    args = ["train", f"model.path={tiny_llava / 'policy'}", f"out={out}", f"train.pairs={pairs}", *TINY_TRAIN]

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(train, "save_checkpoint", full)
        assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"csr train: error: train: saving {out / 'checkpoint'} failed (No space left on device); the "
                   f"training is kept in {out / 'trainer' / 'checkpoint-3'}; free the space and re-run the same "
                   "command to redo the save")
    losses = [r["loss"] for r in _lines(out / "train_metrics.jsonl") if "loss" in r]
    assert len(losses) == 3
    assert main(args) == 0
    done = json.loads((out / "DONE").read_text())
    assert (done["steps"], done["resumed_from_step"]) == (3, 3)
    assert done["train_loss"] == pytest.approx(sum(losses) / 3, abs=1e-9) and done["train_loss"] > 0.5
    assert (out / "checkpoint" / "model.safetensors").is_file() and not list((out / "trainer").glob("checkpoint-*"))
    pairs.write_text(pairs.read_text().replace("a dog on the grass.", "a cat on the grass."))
    capsys.readouterr()
    assert main(args) == 2
    assert "was trained on another version of" in capsys.readouterr().err


# ---------------------------------------------------------------------------- one image loader


def _odd_images(d: Path) -> dict[str, Path]:
    """An EXIF-rotated JPEG (stored 96x64, orientation 6 = shown 64x96), a transparent PNG (clear except a green
    10x10 square), a 16-bit PNG (65535 left, 32896 right), a float TIFF (0.5 everywhere) and one with values of
    1000 (no range it could be read in)."""
    d.mkdir(parents=True, exist_ok=True)
    paths = {name: d / name for name in ("rotated.jpg", "clear.png", "deep.png", "float.tiff", "loud.tiff")}
    jpeg = Image.new("RGB", (96, 64), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    jpeg.save(paths["rotated.jpg"], exif=exif.tobytes(), quality=95)
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[:10, :10] = (0, 255, 0, 255)
    Image.fromarray(rgba, "RGBA").save(paths["clear.png"])
    deep = np.full((32, 32), 32896, np.uint16)
    deep[:, :16] = 65535
    Image.fromarray(deep).save(paths["deep.png"])
    Image.fromarray(np.full((32, 32), 0.5, np.float32), "F").save(paths["float.tiff"])
    Image.fromarray(np.full((32, 32), 1000.0, np.float32), "F").save(paths["loud.tiff"])
    return paths


def test_generate_eval_and_train_see_the_same_pixels(tmp_path):
    """Generate and eval open images with data.load_image; train's dataset decodes with it too, so the three get
    identical arrays. The pixels are the ones a viewer shows: the JPEG upright (64 wide, 96 high), transparency on
    white, 65535 -> 255 and 32896 -> 32896 / 257 = 128, float 0.5 -> 0.5 x 255 = 127.5 -> 128; values of 1000 are
    refused with the reason (not clipped to white)."""
    from csr_vlm import data, evaluate, generate, pairs

    assert generate.load_image is data.load_image and evaluate.load_image is data.load_image
    paths = _odd_images(tmp_path / "img")
    seen = {name: np.asarray(data.load_image(p)) for name, p in paths.items() if name != "loud.tiff"}
    assert seen["rotated.jpg"].shape == (96, 64, 3)
    assert tuple(seen["clear.png"][0, 0]) == (0, 255, 0) and tuple(seen["clear.png"][20, 20]) == (255, 255, 255)
    assert tuple(seen["deep.png"][0, 0]) == (255, 255, 255) and tuple(seen["deep.png"][0, 20]) == (128, 128, 128)
    assert (seen["float.tiff"] == 128).all()
    with pytest.raises(InputError, match=r"^float image has values outside 0-255 or not finite \(1000 to 1000\)"):
        data.load_image(paths["loud.tiff"])
    file = tmp_path / "pairs.jsonl"
    file.write_text("".join(json.dumps(_pair(name, p)) + "\n" for name, p in paths.items()))
    rows, skipped = pairs.read_pairs(file)
    assert [s["id"] for s in skipped] == ["loud.tiff"]
    dataset = pairs.to_dataset(rows)
    for i, row in enumerate(rows):
        assert np.array_equal(np.asarray(dataset[i]["images"][0]), seen[row["id"]]), row["id"]


# ---------------------------------------------------------------------------- a 50 MB line


_MEASURE = """
import json, sys, time
from csr_vlm.config import load_config
from csr_vlm.data import read_prompts
from csr_vlm.errors import InputError
from csr_vlm.generate import _check_chars
from csr_vlm.models.processors import load_processor
from csr_vlm.special_tokens import ControlTokens

def rss_mb(field):  # VmRSS now, VmHWM the peak since the last reset
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024


tokens = ControlTokens.of(load_processor(sys.argv[2]))
cfg = load_config(None, ["search.max_sentences=2", "search.max_new_tokens=4"])
open("/proc/self/clear_refs", "w").write("5")  # the peak starts again from the current RSS
base = rss_mb("VmRSS")
start = time.perf_counter()
reasons = {}
for rec in read_prompts(sys.argv[1])[0]:
    try:
        _check_chars(tokens, rec.prompt, 2048, cfg)
        reasons[rec.id] = None
    except InputError as exc:
        reasons[rec.id] = str(exc)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "base_mb": base, "peak_mb": rss_mb("VmHWM"), "reasons": reasons}))
"""


def test_a_50_mb_prompt_line_is_skipped_without_being_tokenized(tiny_llava, tmp_path):
    """A 50,000,000-character prompt beside a normal one is refused by its characters, before any tokenizer sees it,
    with under 500 MB of memory beyond what the process held before (measured in a fresh process: the peak RSS,
    reset through /proc/self/clear_refs, against the RSS before); tokenizing it took 72 s and 8.9 GB. The time is
    printed, not asserted (0.3-0.65 s on an idle 2-core machine): a timed test fails on a loaded one."""
    prompts = tmp_path / "big.jsonl"
    with prompts.open("w") as fh:
        fh.write(json.dumps({"id": "big", "image": "images/000.png", "prompt": "describe the dog. " * 2_777_778})
                 + "\n" + json.dumps({"id": "ok", "image": "images/001.png", "prompt": "Describe it."}) + "\n")
    assert prompts.stat().st_size > 50_000_000
    src = str(Path(__file__).resolve().parents[2] / "src")
    proc = subprocess.run([sys.executable, "-c", _MEASURE, str(prompts), str(tiny_llava / "policy")],
                          capture_output=True, text=True, timeout=120, env={"PYTHONPATH": src, "HF_HUB_OFFLINE": "1",
                                                                              "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"50 MB line: {got['seconds']:.3f} s, peak RSS {got['peak_mb']:.0f} MB (start {got['base_mb']:.0f} MB)")
    assert got["reasons"]["ok"] is None
    assert got["reasons"]["big"].startswith("prompt too long (50000003 characters, at least ")
    assert got["peak_mb"] - got["base_mb"] < 500
