"""Typed configuration for every csr stage: dataclasses, YAML loading, `section.key=value` overrides.

Precedence is dataclass default < YAML file < command-line overrides. Values are parsed as YAML
(`3`, `0.9`, `true`, `[q_proj,v_proj]`) and checked against the field's type. Unknown keys are
errors that suggest the nearest valid key. The resolved config is written beside each stage's
outputs (`save_config`), so every result can be traced to the exact settings behind it.

    cfg = load_config("configs/toy.yaml", ["search.num_candidates=6", "reward.lam=0.5"])
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration problem the user can fix; the CLI prints it as one line."""


@dataclass
class ModelConfig:
    path: str = ""
    """Policy checkpoint: a local directory or a hub id (e.g. llava-hf/llava-1.5-7b-hf)."""
    dtype: str = "auto"
    """Weights dtype: auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16 or float16."""
    device: str = "auto"
    """Device: auto (cuda if available, else cpu), cpu, cuda or cuda:N."""
    trust_remote_code: bool = False
    """Allow model code from the checkpoint directory. Off unless you trust the checkpoint."""
    attn_implementation: str = ""
    """Attention kernel passed to from_pretrained (sdpa, eager, flash_attention_2); empty = library default."""


@dataclass
class RewardConfig:
    clip_path: str = ""
    """CLIP (or SigLIP) scorer: a local directory or hub id (e.g. openai/clip-vit-large-patch14-336)."""
    lam: float = 0.9
    """Weight of the image-relevance term: R = lam * R_I + (1 - lam) * R_T (paper: 0.9)."""
    self_score: str = "mean"
    """R_T of a sentence: sum (the paper's log of the product of token probs) or mean token log-prob."""
    normalize: str = "none"
    """How R_I and R_T share a scale: none (paper), center ((R_I - tau) / scale), zscore or rank (per step)."""
    tau: float | None = None
    """CLIP threshold for normalize=center; None estimates it from reward.tau_calibration."""
    tau_calibration: str = ""
    """JSONL of labelled (image, text, present) sentences from which tau is estimated."""
    tau_rule: str = "true_sd"
    """true_sd: tau = mean(true R_I) - tau_sd * sd(true R_I); youden: the cut maximising TPR - FPR."""
    tau_sd: float = 3.0
    """Standard deviations below the true-sentence mean at which tau is set (tau_rule=true_sd)."""
    scale: float = 10.0
    """Divisor of (R_I - tau) for normalize=center."""
    end_reward: str = "neutral"
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


@dataclass
class SearchConfig:
    mode: str = "paper"
    """paper: prune by calibrated reward at every step; official: reproduce the official code's search and ranks."""
    sampler: str = "sample"
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
        default_factory=lambda: ["script", "emoji", "word_repeat", "char_repeat", "newlines", "short"])
    """Junk filters applied to each sentence (official code's list); [] switches them off."""
    min_sentence_chars: int = 4
    """Sentences shorter than this many characters are dropped by the `short` filter."""
    prompt_batch_size: int = 1
    """Prompts searched together in one batch (one forward per token for all their candidate rows; each keeps its
    own seeded sampler, so results equal batch 1 up to float rounding)."""


@dataclass
class CurateConfig:
    min_margin: float = 0.0
    """Pairs whose chosen-minus-rejected reward is below this are dropped (logged in skipped.jsonl)."""


@dataclass
class TrainConfig:
    pairs: str = ""
    """Preference pairs JSONL; empty = the round's generate/pairs.jsonl (or <out>/pairs.jsonl)."""
    loss_type: list[str] = field(default_factory=lambda: ["sigmoid"])
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
    lr_scheduler_type: str = "cosine"
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
    report_to: list[str] = field(default_factory=list)
    """Trackers passed to the trainer (tensorboard, wandb)."""
    trl_args: dict[str, Any] = field(default_factory=dict)
    """Any other DPOConfig fields, passed through as given."""


@dataclass
class EvalConfig:
    tasks: list[str] = field(default_factory=lambda: ["chair", "pope"])
    """Benchmarks to run: chair, pope."""
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
    pope_splits: list[str] = field(default_factory=lambda: ["random", "popular", "adversarial"])
    """POPE splits to build and score."""
    pope_suffix: str = " Please answer yes or no."
    """Appended to each POPE question."""
    pope_parser: str = "default"
    """Answer parser: default, llava or vlmevalkit."""
    pope_max_new_tokens: int = 8
    """Token cap for POPE answers."""
    batch_size: int = 8
    """Prompts decoded together."""


@dataclass
class DataConfig:
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


@dataclass
class LoopConfig:
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


@dataclass
class RunConfig:
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
    """CHAIR and POPE evaluation."""
    data: DataConfig = field(default_factory=DataConfig)
    """Prompts and images."""
    loop: LoopConfig = field(default_factory=LoopConfig)
    """The iterative CSR loop."""


# ---------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Build a RunConfig from defaults, an optional YAML file and `section.key=value` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    cfg = _build(RunConfig, raw, prefix="")
    for item in overrides:
        apply_override(cfg, item)
    return cfg


def apply_override(cfg: RunConfig, item: str) -> None:
    """Apply one `section.key=value` override in place (value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form section.key=value")
    key, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    parts = key.strip().split(".")
    target: Any = cfg
    for depth, name in enumerate(parts):
        _check_key(type(target), name, ".".join(parts[:depth]))
        if depth == len(parts) - 1:
            ftype = _field_types(type(target))[name]
            if dataclasses.is_dataclass(ftype):
                if not isinstance(value, dict):
                    raise ConfigError(f"{key}: expected a mapping of {ftype.__name__} fields")
                setattr(target, name, _build(ftype, value, prefix=key + "."))
            else:
                setattr(target, name, _coerce(value, ftype, key))
        else:
            target = getattr(target, name)
            if not dataclasses.is_dataclass(target):
                raise ConfigError(f"{'.'.join(parts[: depth + 1])} is a value, not a section")


def save_config(cfg: RunConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(path)
    return path


def check_reusable(out: str | Path, cfg: RunConfig, keys: tuple[str, ...]) -> None:
    """Refuse to reuse a finished stage directory whose saved config.yaml differs from cfg at `keys`.

    keys are dotted (`model.path`, `eval`); a stage calls this before skipping finished work, so
    `csr eval --model B` into a directory that holds model A's metrics is an error, not A's numbers.
    """
    saved = Path(out) / "config.yaml"
    if not saved.is_file():
        return
    old, new = yaml.safe_load(saved.read_text()) or {}, yaml.safe_load(yaml.safe_dump(to_dict(cfg)))

    def get(tree: Any, key: str) -> Any:
        for part in key.split("."):
            tree = tree.get(part) if isinstance(tree, dict) else None
        return tree

    differ = [k for k in keys if get(old, k) != get(new, k)]
    if differ:
        raise ConfigError(f"out: {out} holds results of a different config ({', '.join(differ)} differ); "
                          "use overwrite=true or another out")


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass (the string literal right under each field)."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def describe(cls: type = RunConfig, prefix: str = "") -> list[str]:
    """One line per config key with its default and docstring (for `--help` output)."""
    lines = []
    docs = field_docs(cls)
    types_ = _field_types(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(types_[f.name]):
            lines.extend(describe(types_[f.name], prefix + f.name + "."))
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            lines.append(f"  {prefix}{f.name}={default!r}  {docs.get(f.name, '')}")
    return lines


# ---------------------------------------------------------------------------- internals


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_key(cls: type, name: str, section: str) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    if name in names:
        return
    full = f"{section}.{name}" if section else name
    valid = [f"{section}.{n}" if section else n for n in names]
    guess = difflib.get_close_matches(full, valid + _all_keys(), n=1, cutoff=0.6)
    hint = f"; did you mean {guess[0]!r}?" if guess else f"; valid keys here: {', '.join(valid)}"
    raise ConfigError(f"unknown config key {full!r}{hint}")


def _all_keys(cls: type = RunConfig, prefix: str = "") -> list[str]:
    keys = []
    types_ = _field_types(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(types_[f.name]):
            keys.extend(_all_keys(types_[f.name], prefix + f.name + "."))
        else:
            keys.append(prefix + f.name)
    return keys


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(raw).__name__}")
    types_ = _field_types(cls)
    kwargs = {}
    for name, value in raw.items():
        _check_key(cls, str(name), prefix.rstrip("."))
        ftype = types_[name]
        if dataclasses.is_dataclass(ftype):
            kwargs[name] = _build(ftype, value or {}, prefix + name + ".")
        else:
            kwargs[name] = _coerce(value, ftype, prefix + name)
    return cls(**kwargs)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against type `tp`, converting the harmless cases (int -> float, scalar -> str)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected bool (true/false), got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected int, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads `1e-7` as a string
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected float, got {value!r}")
    if tp is str:
        if value is None:
            return ""
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected str, got {value!r}")
    return value
