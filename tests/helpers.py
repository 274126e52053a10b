"""Helpers shared by several test modules (not tests themselves): tiny training overrides, a pairs file, a
float-tolerant comparison."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TINY_TRAIN = ["train.lora_r=4", "train.lora_alpha=8", "train.learning_rate=1e-3", "train.max_length=256"]
"""Overrides that make `csr train` on the tiny models take a fraction of a second."""


def write_pairs(path: Path, images_dir: Path, n: int = 4, missing: int = 0) -> Path:
    """n pairs on the fixture's images (absolute paths) plus `missing` pairs whose image does not exist."""
    def pair(i, image):
        return {"id": f"p{i}", "images": [str(image)],
                "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe it."}]}],
                "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "a red circle on the left."}]}],
                "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "a dog on the grass."}]}],
                "chosen_reward": 1.0, "rejected_reward": 0.0, "margin": 1.0, "round": 1}

    rows = [pair(i, images_dir / f"{i:03d}.png") for i in range(n)]
    rows += [pair(n + i, images_dir / f"gone{i}.png") for i in range(missing)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def assert_close(a, b, path="result"):
    """Equal structures; floats (log-prob sums, rewards) within 1e-5: a batched forward rounds differently."""
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, abs=1e-5), f"{path}: {a} != {b}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{path}[{i}]")
    else:
        assert a == b, path
