"""The configuration schema: one frozen dataclass per section, with every allowed value and every rule.

Each field has a type, a default and a docstring right under it (`csr <command> --help` prints them).
A field with a fixed set of values says so in its type (`Literal[...]`) or, where a module owns the
list (filters, POPE parsers and splits, benchmarks), in `field(metadata={"choices": ...})`.
`RunConfig.validate()` checks every such value and every rule between fields, naming the override
key and listing the allowed values or the nearest one, so a misspelt value fails when the config is
loaded, before any stage starts. The dataclasses are frozen: a stage derives new values (an
estimated tau, a device per rank) into its outputs and passes them on explicitly; it never edits the
config it was given.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from .coerce import build_section, check_choices, check_positive, check_range, did_you_mean
from .errors import ConfigError
from .eval.pope import PARSERS, SPLITS
from .eval.registry import TASKS, metric_names
from .search.filters import FILTERS

# TRL 1.x DPOConfig.loss_type values (trl/trainer/dpo_config.py docstring).
TRL_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
# transformers' SchedulerType values.
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
                 "warmup_stable_decay")
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")

Normalize = Literal["none", "center", "zscore", "rank"]
TauRule = Literal["true_sd", "youden"]
NORMALIZE_MODES: tuple[str, ...] = typing.get_args(Normalize)
TAU_RULES: tuple[str, ...] = typing.get_args(TauRule)


@dataclass(frozen=True)
class ModelConfig:
    """The policy: checkpoint, dtype, device."""

    path: str = ""
    """Policy checkpoint: a local directory or a hub id (e.g. llava-hf/llava-1.5-7b-hf)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype: auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16 or float16."""
    device: str = "auto"
    """Device: auto (cuda if available, else cpu), cpu, mps, cuda or cuda:N."""
    trust_remote_code: bool = False
    """Allow model code from the checkpoint directory. Off unless you trust the checkpoint."""
    attn_implementation: str = ""
    """Attention kernel passed to from_pretrained (sdpa, eager, flash_attention_2); empty = library default."""

    def validate(self, key: str = "model") -> None:
        """Check this section's values; a ConfigError names `<key>.<field>` (key: where the section sits)."""
        if not DEVICE.fullmatch(self.device):
            raise ConfigError(f"{key}.device: {self.device!r} is not a device (auto, cpu, mps, cuda or cuda:N)")


@dataclass(frozen=True)
class RewardConfig:
    """The calibrated sentence reward R = lam * R_I + (1 - lam) * R_T and how its terms share a scale."""

    clip_path: str = ""
    """CLIP (or SigLIP) scorer: a local directory or hub id (e.g. openai/clip-vit-large-patch14-336)."""
    lam: float = 0.9
    """Weight of the image-relevance term: R = lam * R_I + (1 - lam) * R_T (paper: 0.9)."""
    self_score: Literal["sum", "mean"] = "mean"
    """R_T of a sentence: sum (the paper's log of the product of token probs) or mean token log-prob."""
    normalize: Normalize = "none"
    """How R_I and R_T share a scale: none (paper), center ((R_I - tau) / scale), zscore or rank (per step)."""
    tau: float | None = None
    """CLIP threshold for normalize=center; None estimates it from reward.tau_calibration."""
    tau_calibration: str = ""
    """JSONL of labelled (image, text, present) sentences from which tau is estimated."""
    tau_rule: TauRule = "true_sd"
    """true_sd: tau = mean(true R_I) - tau_sd * sd(true R_I); youden: the cut maximising TPR - FPR."""
    tau_sd: float = 3.0
    """Standard deviations below the true-sentence mean at which tau is set (tau_rule=true_sd)."""
    scale: float = 10.0
    """Divisor of (R_I - tau) for normalize=center."""
    end_reward: Literal["neutral", "zero"] = "neutral"
    """R_I of the end-of-answer step: neutral (tau under center, else the step mean) or zero."""
    end_self_score: bool = True
    """R_T of the end-of-answer step is the policy's log-prob of stopping; false makes it 0, so that under
    center stopping is exactly neutral however unlikely the model finds it (a model that always names a
    partner otherwise pays more for stopping than for a hallucination CLIP scores a little below tau)."""
    repeat_neutral: bool = True
    """A sentence that repeats what the answer already said gets a neutral R_I, so repeating earns nothing."""
    repeat_penalty: float = 0.0
    """Subtracted from R of a sentence that repeats the answer; > 0 makes repeating worse than ending."""
    clip_batch_size: int = 64
    """Sentences scored by CLIP in one forward pass."""

    def validate(self, key: str = "reward") -> None:
        """Check this section's values; a ConfigError names `<key>.<field>` (key: where the section sits)."""
        check_range(key, "lam", self.lam, 0.0, 1.0)
        check_positive(key, self, ("tau_sd", "scale", "clip_batch_size"))
        if self.repeat_penalty < 0:
            raise ConfigError(f"{key}.repeat_penalty must be >= 0, got {self.repeat_penalty}")
        if self.normalize == "center" and self.tau is None and not self.tau_calibration:
            raise ConfigError(f"{key}.normalize=center needs {key}.tau or {key}.tau_calibration (a labelled "
                              "sentence file from which tau is estimated)")


@dataclass(frozen=True)
class SearchConfig:
    """The sentence-level search: how candidates are proposed, pruned and when answers stop."""

    mode: Literal["paper", "official"] = "paper"
    """paper: prune by calibrated reward at every step; official: reproduce the official code's search and ranks."""
    sampler: Literal["sample", "diverse_beam"] = "sample"
    """How candidate sentences are proposed: sample (temperature) or diverse_beam (own Hamming-diverse beams)."""
    num_candidates: int = 5
    """Candidate next sentences proposed per live partial answer per step."""
    offer_end: bool = False
    """The last of each answer's candidates is always "end the answer here" (EOS, with its real log-prob),
    so stopping competes at every step even where sampling would rarely draw it."""
    temperature: float = 0.7
    """Sampling temperature for sampler=sample."""
    top_p: float = 1.0
    """Nucleus sampling mass for sampler=sample."""
    diversity_penalty: float = 3.0
    """Hamming diversity penalty between groups for sampler=diverse_beam (official: 3.0)."""
    keep_top: int = 2
    """Best partial answers kept after each step (official code: 1)."""
    keep_bottom: int = 2
    """Worst partial answers kept after each step (official code: 2)."""
    max_sentences: int = 6
    """Stop extending an answer after this many sentences."""
    max_new_tokens: int = 70
    """Token cap for one sentence (official code: 70)."""
    delimiters: list[str] = field(default_factory=lambda: [".", "!", "?", "\n"])
    """Characters that end a sentence; their token ids are looked up in the tokenizer."""
    filters: list[str] = field(
        default_factory=lambda: ["script", "emoji", "word_repeat", "char_repeat", "newlines", "short"],
        metadata={"choices": tuple(FILTERS)})
    """Junk filters applied to each sentence (official code's list); [] switches them off."""
    min_sentence_chars: int = 4
    """Sentences shorter than this many characters are dropped by the `short` filter."""
    prompt_batch_size: int = 1
    """Prompts searched together in one batch (one forward per token for all their candidate rows; each keeps its
    own seeded sampler, so results equal batch 1 up to float rounding)."""
    check_cache: bool = True
    """Before searching, compare the first prompt's cached greedy decoding with a full forward and refuse a model
    whose cached decoding differs (a family the cached search does not support); false skips the check."""

    def validate(self, key: str = "search") -> None:
        """Check this section's values; a ConfigError names `<key>.<field>` (key: where the section sits)."""
        check_positive(key, self, ("num_candidates", "max_sentences", "max_new_tokens", "prompt_batch_size"))
        if self.keep_top < 0 or self.keep_bottom < 0 or self.keep_top + self.keep_bottom < 1:
            raise ConfigError(f"{key}.keep_top and {key}.keep_bottom must be >= 0 and keep at least one answer "
                              f"together, got {self.keep_top} and {self.keep_bottom}")
        if self.temperature < 0:
            raise ConfigError(f"{key}.temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"{key}.top_p must be in (0, 1], got {self.top_p}")
        if not self.delimiters or any(not d for d in self.delimiters):
            raise ConfigError(f"{key}.delimiters must be a non-empty list of non-empty strings")
        if self.offer_end and self.num_candidates < 2:
            raise ConfigError(f"{key}.offer_end=true needs {key}.num_candidates >= 2 (one candidate is the end)")


@dataclass(frozen=True)
class CurateConfig:
    """Turning a prompt's searched answers into one preference pair."""

    min_margin: float = 0.0
    """Pairs whose chosen-minus-rejected reward is below this are dropped (logged in skipped.jsonl)."""

    def validate(self, key: str = "curate") -> None:
        """No rule: any margin, negative included, is a valid threshold."""


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
    use_lora: bool = True
    """Train LoRA adapters (true) or the full language model (false)."""
    lora_r: int = 128
    """LoRA rank (paper: 128)."""
    lora_alpha: int = 256
    """LoRA alpha (paper: 256)."""
    lora_dropout: float = 0.05
    """LoRA dropout."""
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


@dataclass(frozen=True)
class EvalConfig:
    """The benchmarks csr eval runs and their protocol (prompts, token caps, parser)."""

    tasks: list[str] = field(default_factory=lambda: ["chair", "pope"], metadata={"choices": lambda: tuple(TASKS)})
    """Benchmarks to run (the eval task registry: chair, pope)."""
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
    pope_suffix: str = " Please answer yes or no."
    """Appended to each POPE question."""
    pope_parser: str = field(default="default", metadata={"choices": PARSERS})
    """Answer parser: default, llava or vlmevalkit."""
    pope_max_new_tokens: int = 8
    """Token cap for POPE answers."""
    batch_size: int = 8
    """Prompts decoded together."""

    def validate(self, key: str = "eval") -> None:
        """Check this section's values; a ConfigError names `<key>.<field>` (key: where the section sits)."""
        check_positive(key, self, ("num_images", "max_new_tokens", "pope_max_new_tokens", "batch_size"))
        if not self.tasks:
            raise ConfigError(f"{key}.tasks is empty; choose from {', '.join(TASKS)}")
        if "pope" in self.tasks and not self.pope_splits:
            raise ConfigError(f"{key}.pope_splits is empty; choose from {', '.join(SPLITS)}")


@dataclass(frozen=True)
class DataConfig:
    """The prompts and images searched in every round."""

    prompts: str = ""
    """Prompts: JSONL of {id, image, prompt}, or the official CSR JSON list of {id, image, input}."""
    image_root: str = ""
    """Directory that relative image paths are resolved against."""
    image_prefix: str = ""
    """Prefix added to image file names (the official prompt file needs COCO_train2014_)."""
    max_prompts: int | None = None
    """Use only the first N valid prompts."""
    max_image_pixels: int = 50_000_000
    """Images with more pixels than this are skipped as extreme."""
    max_prompt_tokens: int | None = None
    """Prompts longer than this (image + text tokens) are skipped; None = only the model's context limits them."""

    def validate(self, key: str = "data") -> None:
        """Check this section's values; a ConfigError names `<key>.<field>` (key: where the section sits)."""
        check_positive(key, self, ("max_image_pixels",))
        for name in ("max_prompts", "max_prompt_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{key}.{name} must be >= 1 or null, got {value}")


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


@dataclass(frozen=True)
class RunConfig:
    """The whole configuration: output, seed, and one section per stage."""

    out: str = "runs/default"
    """Output directory of the stage (or of the whole loop)."""
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
        check_choices(self)
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                value.validate(f.name)
        dev = self.dev_eval()
        check_choices(dev, "loop.dev.")
        dev.validate("loop.dev")
        self._validate_selection(dev)
        return self

    def validate_loop(self) -> RunConfig:
        """validate() plus the rules that only bind when the stages run as a loop (`csr loop`)."""
        self.validate()
        if self.loop.rounds > 1 and self.train.use_lora and not self.train.merge:
            raise ConfigError("train.merge=false keeps only the adapter, but round 2 starts from a full checkpoint; "
                              "set train.merge=true or loop.rounds=1")
        if self.loop.evaluate or self.loop.select_on:
            needing = [t for t in self.eval.tasks if TASKS[t].needs_annotations(self.eval)]
            if needing and not self.eval.annotations:
                raise ConfigError(f"eval.annotations is not set, but loop.evaluate/select_on evaluate "
                                  f"{', '.join(needing)} (set loop.evaluate=false to train without evaluating)")
        return self

    def dev_eval(self) -> EvalConfig:
        """The eval section of the dev evaluation: eval with loop.dev's keys overridden (checked like overrides)."""
        merged = {**dataclasses.asdict(self.eval), **self.loop.dev}
        return build_section(EvalConfig, merged, "loop.dev.")

    def _validate_selection(self, dev: EvalConfig) -> None:
        """select_on and the guards must name metrics that the dev evaluation's tasks produce."""
        known = metric_names(dev.tasks)
        wanted = [("loop.select_on", self.loop.select_on)] if self.loop.select_on else []
        wanted += [("loop.guards", m) for m in self.loop.guards]
        wanted += [("loop.relative_guards", m) for m in self.loop.relative_guards]
        for key, metric in wanted:
            if metric not in known:
                raise ConfigError(f"{key}: {metric!r} is not a metric of the dev tasks ({', '.join(dev.tasks)})"
                                  f"{did_you_mean(metric, known)}")
        for metric, factor in self.loop.relative_guards.items():
            if factor <= 0:
                raise ConfigError(f"loop.relative_guards.{metric} must be > 0, got {factor}")
