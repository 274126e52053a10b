"""The schema of evaluation and of the loop: the benchmarks and their protocol, rounds and round selection."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..coerce import check_positive
from ..errors import ConfigError
from ..yes_no import PARSERS, SPLITS, SUFFIX


@dataclass(frozen=True)
class EvalConfig:
    """The benchmarks csr eval runs and their protocol (prompts, token caps, parser)."""

    tasks: list[str] = field(default_factory=lambda: ["chair", "pope"])
    """Benchmarks to run, by name in the benchmark registry (chair, pope; checked when the config is loaded)."""
    annotations: str = ""
    """COCO-format instances JSON (categories, images, annotations)."""
    gt_captions: str = ""
    """COCO-format captions JSON; objects named in them count as ground truth for CHAIR."""
    image_root: str = ""
    """Directory holding the evaluation images."""
    synonyms: str = ""
    """CHAIR synonym table; empty = the COCO table shipped with the package."""
    num_images: int = 500
    """Images sampled (seeded) for CHAIR and for building POPE splits."""
    prompt: str = "Please describe this image in detail."
    """Prompt for CHAIR captions (recorded with the metrics: published numbers depend on it)."""
    max_new_tokens: int = 512
    """Token cap for CHAIR captions."""
    pope_questions: str = ""
    """Existing POPE question file (JSONL); empty = build random/popular/adversarial from the annotations."""
    pope_splits: list[str] = field(default_factory=lambda: list(SPLITS), metadata={"choices": SPLITS})
    """POPE splits to build and score."""
    pope_suffix: str = SUFFIX
    """Appended to each POPE question."""
    pope_parser: str = field(default="default", metadata={"choices": PARSERS})
    """Answer parser: default, llava or vlmevalkit."""
    pope_max_new_tokens: int = 8
    """Token cap for POPE answers."""
    batch_size: int = 8
    """Prompts decoded together."""
    lmms_tasks: list[str] = field(default_factory=list)
    """lmms-eval tasks run on the checkpoint too (e.g. [mme, seedbench, mmbench_en_dev]); needs the lmms extra."""
    lmms_model: str = ""
    """lmms-eval model class; empty = chosen from the checkpoint's model_type (llava, llava_next: llava_hf)."""
    lmms_model_args: dict[str, Any] = field(default_factory=dict)
    """Extra lmms-eval model_args (pretrained and device_map are set by csr)."""
    lmms_include_path: str = ""
    """A folder of extra lmms-eval task YAMLs (e.g. <toy world>/lmms_tasks)."""
    lmms_args: dict[str, Any] = field(default_factory=dict)
    """Other lmms-eval command-line options, e.g. {limit: 100}, passed as --key value."""

    def validate(self, key: str = "eval") -> None:
        """Check this section's values; a ConfigError names `<key>.<field>` (key: where the section sits)."""
        check_positive(key, self, ("num_images", "max_new_tokens", "pope_max_new_tokens", "batch_size"))
        if "pope" in self.tasks and not self.pope_splits:
            raise ConfigError(f"{key}.pope_splits is empty; choose from {', '.join(SPLITS)}")


@dataclass(frozen=True)
class LoopConfig:
    """Rounds of generate -> train -> eval, and how the best round is picked on a dev split."""

    rounds: int = 3
    """Rounds of generate -> train -> evaluate."""
    evaluate: bool = True
    """Evaluate each round's checkpoint (needs eval.annotations)."""
    select_on: str = ""
    """Dev metric that picks the best round (e.g. chair_i); empty = the last round."""
    patience: int = 0
    """Stop after this many rounds without dev improvement; 0 = never stop early."""
    guards: dict[str, float] = field(default_factory=dict)
    """Dev-metric bounds a round must meet to be selected, e.g. {dup_rate: 0.05} (max for lower-is-better)."""
    relative_guards: dict[str, float] = field(default_factory=dict)
    """Bounds as multiples of the base model's dev metric, e.g. {recall: 0.9}: at least 0.9 x base recall."""
    dev: dict[str, Any] = field(default_factory=dict)
    """Eval-section overrides for the dev evaluation used by select_on (e.g. {annotations: dev.json})."""

    def validate(self, key: str = "loop") -> None:
        """Check this section's values; a ConfigError names `<key>.<field>` (key: where the section sits)."""
        check_positive(key, self, ("rounds",))
        if self.patience < 0:
            raise ConfigError(f"{key}.patience must be >= 0, got {self.patience}")
        if self.patience and not self.select_on:
            raise ConfigError(f"{key}.patience needs {key}.select_on (the dev metric that must improve)")
        if (self.guards or self.relative_guards) and not self.select_on:
            raise ConfigError(f"{key}.guards bound the dev metrics of rounds that {key}.select_on picks; "
                              f"set {key}.select_on")
