"""The schema of the train stage: DPO + LoRA through TRL's DPOTrainer and PEFT."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..coerce import check_positive, check_range
from ..errors import ConfigError

# TRL 1.x DPOConfig.loss_type values (trl/trainer/dpo_config.py docstring).
TRL_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
# transformers' SchedulerType values.
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
                 "warmup_stable_decay")


@dataclass(frozen=True)
class TrainConfig:
    """DPO + LoRA (TRL DPOTrainer + PEFT) on one round's pairs; the paper's settings by default."""

    pairs: str = ""
    """Preference pairs JSONL; empty = the round's generate/pairs.jsonl (or <out>/pairs.jsonl)."""
    loss_type: list[str] = field(default_factory=lambda: ["sigmoid"], metadata={"choices": TRL_LOSS_TYPES})
    """TRL DPO loss types; [sigmoid, sft] adds a likelihood term on chosen."""
    loss_weights: list[float] | None = None
    """Weights of the loss types (TRL loss_weights); None = equal weights."""
    beta: float = 0.1
    """DPO beta."""
    reference: str = field(default="search", metadata={"choices": ("search", "model")})
    """DPO's reference log-probs: search = the sums the search wrote into each pair, where TRL forwards the same
    tokens (TRL's reference, before training, for the others): no reference forward in training; model = TRL's."""
    use_lora: bool = True
    """Train LoRA adapters (true) or the full language model (false)."""
    lora_r: int = 128
    """LoRA rank (paper: 128)."""
    lora_alpha: int = 256
    """LoRA alpha (paper: 256)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA adapter's input (paper: 0.05). Applied: TRL's disable_dropout turns every dropout of the
    model off, and csr train sets the adapter's back to this value (the model's own stay off). Dropout draws
    differ between runs on different numbers of ranks; 0 makes those runs comparable weight for weight."""
    lora_target_modules: list[str] | None = None
    """LoRA targets; None = every nn.Linear of the language model (not vision tower, projector or lm_head)."""
    learning_rate: float = 1e-7
    """Peak learning rate (paper: 1e-7 for LoRA on a 7B model)."""
    lr_scheduler_type: str = field(default="cosine", metadata={"choices": LR_SCHEDULERS})
    """Learning-rate schedule."""
    warmup_ratio: float = 0.03
    """Fraction of steps spent warming up."""
    num_train_epochs: float = 1.0
    """Epochs over the pairs per round."""
    per_device_train_batch_size: int = 1
    """Pairs per device per step."""
    gradient_accumulation_steps: int = 1
    """Steps accumulated per optimizer update."""
    max_length: int | None = None
    """Token cap of prompt + completion (TRL advises None for vision models)."""
    bf16: bool | None = None
    """bf16 training; None = on when a GPU with bf16 is present, off otherwise."""
    gradient_checkpointing: bool = False
    """Trade compute for memory."""
    merge: bool = True
    """Merge LoRA into the weights and save a complete checkpoint; false keeps the adapter only."""
    save_steps: int = 0
    """Save a Trainer checkpoint (weights, optimizer, scheduler, RNG) every N optimizer steps; a killed train
    stage resumes from the last one. 0 = no checkpoints (a killed stage starts again from step 0)."""
    save_total_limit: int = 1
    """Trainer checkpoints kept (the oldest are deleted); all are removed once the stage is done."""
    report_to: list[str] = field(default_factory=list)
    """Trackers passed to the trainer (tensorboard, wandb)."""
    trl_args: dict[str, Any] = field(default_factory=dict)
    """Any other DPOConfig fields, passed through as given."""

    def validate(self, key: str = "train") -> None:
        """Check this section's values; a ConfigError names `<key>.<field>` (key: where the section sits)."""
        if not self.loss_type:
            raise ConfigError(f"{key}.loss_type must name at least one TRL loss type")
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ConfigError(f"{key}.loss_weights has {len(self.loss_weights)} weight(s) for "
                              f"{len(self.loss_type)} loss type(s) ({', '.join(self.loss_type)})")
        check_positive(key, self, ("beta", "lora_r", "lora_alpha", "learning_rate", "num_train_epochs",
                                    "per_device_train_batch_size", "gradient_accumulation_steps"))
        check_range(key, "lora_dropout", self.lora_dropout, 0.0, 1.0)
        if self.save_steps < 0:
            raise ConfigError(f"{key}.save_steps must be >= 0 (0: no checkpoints), got {self.save_steps}")
        check_positive(key, self, ("save_total_limit",))
        check_range(key, "warmup_ratio", self.warmup_ratio, 0.0, 1.0)
        if self.max_length is not None and self.max_length < 1:
            raise ConfigError(f"{key}.max_length must be >= 1 or null, got {self.max_length}")
