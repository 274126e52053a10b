"""Shared fixtures: tiny random-weight models built from configs (nothing downloaded), seed reset.

    .venv/bin/python -m pytest tests/
"""

from __future__ import annotations

import os
import random

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _reset_seed_and_threads():
    """Every test starts from seed 0 and leaves torch's thread count as it found it (some set one thread)."""
    import torch

    random.seed(0)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory):
    """Directory with policy/ (LLaVA-1.5 layout) and clip/ (matching geometry)."""
    from csr_vlm.models.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny_llava"), family="llava", seed=0)


@pytest.fixture(scope="session")
def tiny_gemma3(tmp_path_factory):
    """Directory with policy/ (Gemma3 layout) and clip/."""
    from csr_vlm.models.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny_gemma3"), family="gemma3", seed=0)


@pytest.fixture(params=["llava", "gemma3"])
def tiny_family(request, tiny_llava, tiny_gemma3):
    """Both tiny families, one after the other: the code path must be the same for each."""
    return {"llava": tiny_llava, "gemma3": tiny_gemma3}[request.param]



@pytest.fixture(scope="session")
def quick_world(tmp_path_factory):
    """The --quick toy world (scenes, tiny CLIP, tiny LLaVA), built once per session."""
    from csr_vlm.toyworld.build import build

    return build(tmp_path_factory.getbasetemp() / "toy-quick-world", seed=0, quick=True)


@pytest.fixture(scope="session")
def quick_demo(quick_world, tmp_path_factory):
    """`csr demo --quick` run once per session on the quick world: (its out directory, what it printed).
    test_demo checks the run; test_report_browser opens its report.html."""
    import contextlib
    import io

    from csr_vlm.toyworld import demo

    out = tmp_path_factory.getbasetemp() / "quick-demo"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert demo.cli(["--quick", "--out", str(out), "--world", str(quick_world), "--jobs", "1"]) == 0
    return out, printed.getvalue()

