"""Tiny random-weight vision-language models and matching CLIP scorers, built from configs with nothing downloaded.

    csr models build-tiny --out DIR [--family llava|gemma3|qwen2_5_vl|qwen3_vl|idefics3|llava_next] [--seed N]

writes DIR/policy, DIR/clip and sample prompts. Each policy keeps its real family's layout (model
class, vision tower, image tokens, processor, chat template and special tokens), so every code path
that runs on the real checkpoint runs here in a fraction of a second: LLaVA-1.5 (llava.py), LLaVA-NeXT
(llava.py), Gemma 3 (gemma3.py), Qwen2.5-VL and Qwen3-VL (qwen.py), Idefics3 / SmolVLM (idefics3.py).
Every text model has head_dim 32 (the smallest most attention kernels, vLLM's included, take) and
weights drawn with std 0.1, so logits are peaked enough for a wrong position to change greedy tokens.
The CLIP's vision tower has the policy's image size.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .common import CORPUS, build_clip, set_generation_ids, train_bpe, write_sample_prompts
from .gemma3 import build_gemma3
from .idefics3 import build_idefics3
from .llava import LLAVA_TEMPLATE, build_llava, build_llava_next
from .qwen import build_qwen2_5_vl, build_qwen3_vl

BUILDERS = {"llava": build_llava, "gemma3": build_gemma3, "qwen2_5_vl": build_qwen2_5_vl, "qwen3_vl": build_qwen3_vl,
            "idefics3": build_idefics3, "llava_next": build_llava_next}
FAMILIES = tuple(BUILDERS)
REAL_VOCAB = ("qwen2_5_vl", "qwen3_vl")
"""Families whose tiny model can carry its real vocabulary (`build_tiny(real_vocab=True)`)."""
IMAGE_SIZE = {"llava": 64, "gemma3": 64, "qwen2_5_vl": 112, "qwen3_vl": 128, "idefics3": 64, "llava_next": 32}
"""The image size each family's processor works at (the CLIP's vision tower gets the same)."""

__all__ = ["BUILDERS", "CORPUS", "FAMILIES", "LLAVA_TEMPLATE", "build_clip", "build_llava", "build_tiny",
           "set_generation_ids", "train_bpe", "write_sample_prompts"]


def build_tiny(out: str | Path, family: str = "llava", seed: int = 0, real_vocab: bool = False) -> Path:
    """Write OUT/policy and OUT/clip (random weights, seeded) and OUT/prompts.jsonl + images; returns OUT.
    real_vocab: the Qwen families with Qwen's own 151,665-token vocabulary (qwen_vocab.py).

    Raises:
        ValueError: an unknown family, or real_vocab for a family other than Qwen's.
    """
    import torch

    if family not in BUILDERS:
        raise ValueError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    if real_vocab and family not in REAL_VOCAB:
        raise ValueError(f"a real vocabulary is built for {', '.join(REAL_VOCAB)} only, not {family}")
    out = Path(out)
    torch.manual_seed(seed)
    model, processor = BUILDERS[family](real_vocab=True) if real_vocab else BUILDERS[family]()
    clip, clip_processor = build_clip(image_size=IMAGE_SIZE[family])
    for name, m, p in (("policy", model, processor), ("clip", clip, clip_processor)):
        target, tmp = out / name, out / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        m.save_pretrained(tmp)
        p.save_pretrained(tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    write_sample_prompts(out, seed=seed)
    return out
