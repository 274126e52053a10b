"""The run layout: where each round and stage of a loop run writes, and how a round is read back from a name.

    <out>/config.yaml, manifest.json, best.json
    <out>/round_0/{eval,dev_eval}/                       the base model
    <out>/round_<k>/generate/pairs.jsonl                 round k's pairs ...
    <out>/round_<k>/train/checkpoint/                    ... its merged checkpoint (round k+1 starts from it)
    <out>/round_<k>/{eval,dev_eval}/

The loop, its manifest, `csr train` (which finds the pairs of the generate stage beside it), `csr score`,
`csr report` and `csr demo` all build and parse these paths here, so the layout is written once.
"""

from __future__ import annotations

from pathlib import Path

STAGES = ("generate", "train", "eval", "dev_eval")
"""The stage directories of a round, in the order a round runs them."""
PAIRS = "pairs.jsonl"
"""The pairs file of a generate stage (and the fallback name in a train stage's own directory)."""
CHECKPOINT = "checkpoint"
"""The merged checkpoint's directory inside a train stage."""
_PREFIX = "round_"


def round_dir(out: str | Path, k: int) -> Path:
    """<out>/round_<k>."""
    return Path(out) / f"{_PREFIX}{k}"


def stage_dir(out: str | Path, k: int, stage: str) -> Path:
    """<out>/round_<k>/<stage>."""
    return round_dir(out, k) / stage


def stage_name(k: int, stage: str) -> str:
    """The name a stage goes by in the manifest and on the console: "round_<k>/<stage>"."""
    return f"{_PREFIX}{k}/{stage}"


def checkpoint(out: str | Path, k: int) -> Path:
    """Round k's merged checkpoint: <out>/round_<k>/train/checkpoint."""
    return stage_dir(out, k, "train") / CHECKPOINT


def pairs_file(generate_dir: str | Path) -> Path:
    """The pairs file of a generate stage directory."""
    return Path(generate_dir) / PAIRS


def train_pairs(train_dir: str | Path) -> Path:
    """The pairs a train stage reads by default: the generate stage's beside it when there is one, else its own
    directory's pairs.jsonl."""
    sibling = pairs_file(Path(train_dir).parent / "generate")
    return sibling if sibling.is_file() else Path(train_dir) / PAIRS


def round_of(name: str) -> int | None:
    """k of "round_<k>" or of a stage name "round_<k>/<stage>"; None for any other name."""
    head = name.split("/")[0]
    k = head.removeprefix(_PREFIX)
    return int(k) if head.startswith(_PREFIX) and k.isdigit() else None


def rounds(out: str | Path) -> list[tuple[int, Path]]:
    """(k, directory) of every round_<k> under out, by k."""
    found = [(round_of(p.name), p) for p in Path(out).glob(f"{_PREFIX}*")]
    return sorted((k, p) for k, p in found if k is not None)
