"""The configuration schema: one frozen dataclass per section, with every allowed value and every rule.

Each field has a type, a default and a docstring right under it (`csr <command> --help` prints them).
A field with a fixed set of values says so in its type (`Literal[...]`) or, where a leaf module owns the
list (filters.py, yes_no.py's POPE parsers and splits), in `field(metadata={"choices": ...})`. The schema
reads no stage and no benchmark: the rules that need the benchmark registry (task and metric names, the
annotations a task needs) are checked by `config.validate`, which reads both.
`RunConfig.validate()` checks every such value and every rule between fields, naming the override
key and listing the allowed values or the nearest one, so a misspelt value fails when the config is
loaded, before any stage starts. Every float, wherever it sits, must be finite (`check_finite`): no
setting has a meaning for nan or inf. The dataclasses are frozen: a stage derives new values (an
estimated tau, a device per rank) into its outputs and passes them on explicitly; it never edits the
config it was given.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..coerce import build_section, check_choices, check_finite
from ..errors import ConfigError
from ..outdir import check_out
from .evaluation import EvalConfig, LoopConfig
from .generation import (
    DEVICE,
    NORMALIZE_MODES,
    TAU_RULES,
    CurateConfig,
    DataConfig,
    ModelConfig,
    RewardConfig,
    SearchConfig,
    VLLMConfig,
)
from .training import LR_SCHEDULERS, TRL_LOSS_TYPES, TrainConfig

__all__ = ["DEVICE", "LR_SCHEDULERS", "NORMALIZE_MODES", "TAU_RULES", "TRL_LOSS_TYPES", "CurateConfig", "DataConfig",
           "EvalConfig", "LoopConfig", "ModelConfig", "RewardConfig", "RunConfig", "SearchConfig", "TrainConfig",
           "VLLMConfig"]


@dataclass(frozen=True)
class RunConfig:
    """The whole configuration: output, seed, and one section per stage."""

    out: str = field(default="runs/default", metadata={"path": True})
    """Output directory of the stage (or of the whole loop): new, empty or made by csr (docs/reliability.md);
    never empty, ~ or a number (quote 0755)."""
    seed: int = 0
    """Seed for sampling, splits and training; per-prompt seeds derive from it and the prompt id."""
    overwrite: bool = False
    """Redo finished work instead of resuming it."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """The calibrated sentence reward."""
    search: SearchConfig = field(default_factory=SearchConfig)
    """The sentence-level search."""
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    """The vLLM engine (search.engine=vllm)."""
    curate: CurateConfig = field(default_factory=CurateConfig)
    """Turning searched answers into preference pairs."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """DPO + LoRA training."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation benchmarks (CHAIR, POPE)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Prompts and images."""
    loop: LoopConfig = field(default_factory=LoopConfig)
    """The iterative CSR loop."""

    def validate(self) -> RunConfig:
        """Check every allowed value and every rule between fields; returns self (a ConfigError names the key)."""
        check_finite(self, "")
        check_out(self.out)
        check_choices(self)
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        sentence_pairs = self.curate.pair_level != "response"
        doubters = [name for name, on in (("curate.require_doubt", self.curate.require_doubt),
                                          (f"curate.rejected={self.curate.rejected}",
                                           self.curate.rejected != "lowest"),
                                          (f"curate.pair_level={self.curate.pair_level}", sentence_pairs))
                    if on]
        if sentence_pairs and self.search.mode != "paper":
            raise ConfigError(f"curate.pair_level={self.curate.pair_level} cuts pairs from the calibrated search's "
                              "scored siblings, which only search.mode=paper keeps")
        for name in doubters:  # both ask which sentences CLIP doubts: below tau
            if self.reward.normalize != "center":
                raise ConfigError(f"{name} needs reward.normalize=center (its tau says which sentences CLIP doubts), "
                                  f"got reward.normalize={self.reward.normalize}")
            if self.reward.lam == 0:
                raise ConfigError(f"{name} judges answers by CLIP, which reward.lam=0 leaves out of the reward: "
                                  f"unset it for a likelihood-only run")
        if self.curate.yes_no_anchor and "sft" not in self.train.loss_type:
            raise ConfigError("curate.yes_no_anchor rows teach only through the SFT term: add sft to train.loss_type "
                              f"(e.g. [sigmoid, sft]), got {self.train.loss_type}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                value.validate(f.name)
        dev = self.dev_eval()
        check_choices(dev, "loop.dev.")
        dev.validate("loop.dev")
        for metric, factor in self.loop.relative_guards.items():
            if factor <= 0:
                raise ConfigError(f"loop.relative_guards.{metric} must be > 0, got {factor}")
        return self

    def validate_loop(self) -> RunConfig:
        """validate() plus the rules that only bind when the stages run as a loop (`csr loop`)."""
        self.validate()
        if self.loop.rounds > 1 and self.train.use_lora and not self.train.merge:
            raise ConfigError("train.merge=false keeps only the adapter, but round 2 starts from a full checkpoint; "
                              "set train.merge=true or loop.rounds=1")
        return self

    def dev_eval(self) -> EvalConfig:
        """The eval section of the dev evaluation: eval with loop.dev's keys overridden (checked like overrides)."""
        merged = {**dataclasses.asdict(self.eval), **self.loop.dev}
        return build_section(EvalConfig, merged, "loop.dev.")
