"""The schema of what the generate stage reads: the policy, the reward, the search, its vLLM engine, pairs, data."""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from ..coerce import check_positive, check_range
from ..errors import ConfigError
from ..filters import FILTERS
from ..yes_no import parse_answer

DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
Normalize = Literal["none", "center", "zscore", "rank"]
TauRule = Literal["true_sd", "youden"]
RejectedRule = Literal["lowest", "hardest", "likeliest"]
PairLevel = Literal["response", "sentence", "both"]
PairTokens = Literal["searched", "template"]
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

    scorer: str = "clip"
    """The kind of image-text scorer that gives R_I (scorer.py's registry; default clip: CLIP or SigLIP)."""
    clip_path: str = ""
    """The scorer's checkpoint: a local directory or hub id (e.g. openai/clip-vit-large-patch14-336)."""
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
    yes_no_statement: str = "There is a {} in the image."
    """For a prompt asking whether an object is in the image (POPE's "Is there a {} in the image?"), under
    normalize=center: an answer's "yes" earns R_I of this statement about the object, "no" its mirror around tau."""
    object_names: str = ""
    """JSON {object: name} for that statement (e.g. {tv: television}, or the toy world's {circle: red circle},
    the words its CLIP knows); empty or an object not listed = the object as the question names it."""

    def validate(self, key: str = "reward") -> None:
        """Check this section's values; a ConfigError names `<key>.<field>` (key: where the section sits)."""
        check_range(key, "lam", self.lam, 0.0, 1.0)
        check_positive(key, self, ("tau_sd", "scale", "clip_batch_size"))
        if self.repeat_penalty < 0:
            raise ConfigError(f"{key}.repeat_penalty must be >= 0, got {self.repeat_penalty}")
        if "{}" not in self.yes_no_statement:
            raise ConfigError(f"{key}.yes_no_statement needs a {{}} where the object goes")
        if self.normalize == "center" and self.tau is None and not self.tau_calibration:
            raise ConfigError(f"{key}.normalize=center needs {key}.tau or {key}.tau_calibration (a labelled "
                              "sentence file from which tau is estimated)")


@dataclass(frozen=True)
class SearchConfig:
    """The sentence-level search: how candidates are proposed, pruned and when answers stop."""

    engine: Literal["hf", "vllm"] = "hf"
    """What runs the model: hf (transformers, cached keys/values, runs everywhere) or vllm (a vLLM engine per
    rank: prefix caching, continuous batching, tensor parallelism; needs the vLLM environment)."""
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
    """Sampling temperature for sampler=sample; 0 is greedy (in both engines)."""
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
    delimiters: list[str] = field(default_factory=lambda: [".", "!", "?", "\n", "。", "！", "？", "…"])
    """Characters that end a sentence (full-width ones need no space after them); see search.boundary."""
    boundary: Literal["text", "token"] = "text"
    """text: a delimiter ends a sentence only before whitespace, EOS or nothing ("3.5", "e.g." and "Mr." do not);
    token: every token that ends in a delimiter does (the official code's rule; docs/sentences.md)."""
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
        if self.engine == "vllm" and self.sampler != "sample":
            raise ConfigError(f"{key}.engine=vllm samples its candidates ({key}.sampler=sample); the Hamming-diverse "
                              f"beams of {key}.sampler={self.sampler} need {key}.engine=hf")


@dataclass(frozen=True)
class VLLMConfig:
    """The vLLM engine (search.engine=vllm): what is passed to vllm.LLM."""

    tensor_parallel_size: int = 1
    """GPUs one engine spans (tensor parallelism). Data parallelism is torchrun: one engine per rank."""
    gpu_memory_utilization: float = 0.9
    """Share of each GPU's memory vLLM may take (weights + KV cache)."""
    max_model_len: int | None = None
    """Context length of the engine (prompt + answer); None = the model's."""
    block_size: int | None = None
    """KV-cache block size (the unit of prefix caching); None = vLLM's default on GPU, 32 on CPU (which needs a
    multiple of 32)."""
    enforce_eager: bool = False
    """Skip graph capture / compilation: a much faster start (seconds, not a minute), a little slower decoding."""
    cpu_kv_cache_gib: float = 1.0
    """KV-cache size on a CPU-only machine (VLLM_CPU_KVCACHE_SPACE)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Any other vllm.LLM arguments, passed through as given."""

    def validate(self, key: str = "vllm") -> None:
        """Check this section's values; a ConfigError names `<key>.<field>` (key: where the section sits)."""
        check_positive(key, self, ("tensor_parallel_size", "cpu_kv_cache_gib"))
        check_range(key, "gpu_memory_utilization", self.gpu_memory_utilization, 0.05, 1.0)
        if self.block_size is not None and self.block_size < 1:
            raise ConfigError(f"{key}.block_size must be >= 1 or null, got {self.block_size}")


@dataclass(frozen=True)
class CurateConfig:
    """Turning a prompt's searched answers into one preference pair."""

    min_margin: float = 0.0
    """Pairs whose chosen-minus-rejected reward is below this are dropped (logged in skipped.jsonl)."""
    balance_yes_no: bool = False
    """Keep as many yes/no-question pairs choosing "yes" as choosing "no": the larger side's smallest margins are
    dropped (skipped.jsonl), so DPO does not move the model's yes/no prior. Default off (docs/toyworld-results.md)."""

    yes_no_answers: dict[str, str] = field(default_factory=dict)
    """The words of a yes and a no answer ({"yes": "Yes.", "no": "No."}, keys quoted in YAML), or {} (off, default).
    Set, a question whose sampled answers all agree still pairs: the verdict CLIP backs (reward.yes_no_statement
    against tau) against the other, written in these words."""
    require_doubt: bool = False
    """Keep a pair only when its rejected answer has a sentence the reward doubts: R_I below tau (needs
    reward.normalize=center) or a repeat; dropped pairs go to skipped.jsonl. Default off."""

    yes_no_anchor: bool = False
    """A yes/no question gives an anchor row, its likeliest sampled answer as both chosen and rejected: DPO's term is
    zero, the SFT term replays it, so the rounds keep the yes/no skill. Needs "sft" in train.loss_type; overrides
    yes_no_answers and balance_yes_no for questions. Default off."""

    rejected: RejectedRule = "lowest"
    """The answer a pair rejects: lowest (default, the paper: lowest cumulative reward), or among answers with a
    doubted sentence (needs reward.normalize=center) hardest (highest reward) or likeliest (highest summed R_T);
    with no doubted answer the lowest is kept."""

    pair_level: PairLevel = "response"
    """response: one pair of whole answers per prompt (the paper); sentence: pairs of sibling next sentences after
    a prefix CLIP trusts (docs/sentences.md; needs reward.normalize=center); both: the two kinds together."""
    max_sentence_pairs: int = 2
    """Sentence pairs one prompt gives at most, earliest depths first (curate.pair_level sentence or both)."""
    pair_tokens: PairTokens = "searched"
    """searched: a row is the searched tokens (the prompt as encoded, BOS included; each answer's end token), so
    train.reference=search is exact; template: conversational rows TRL renders with the chat template."""

    def validate(self, key: str = "curate") -> None:
        """Any margin, negative included, is a valid threshold; yes_no_answers has a yes and a no that read so."""
        check_positive(key, self, ("max_sentence_pairs",))
        if not self.yes_no_answers:
            return
        if set(self.yes_no_answers) != {"yes", "no"}:
            hint = " (YAML reads a bare yes/no as true/false: quote the keys)" if any(
                isinstance(k, bool) for k in self.yes_no_answers) else ""
            raise ConfigError(f"{key}.yes_no_answers needs exactly the keys yes and no, got "
                              f"{sorted(map(str, self.yes_no_answers))}{hint}")
        for verdict, text in self.yes_no_answers.items():
            if parse_answer(str(text)) != verdict:
                raise ConfigError(f"{key}.yes_no_answers.{verdict}: {text!r} does not read as {verdict!r}")


@dataclass(frozen=True)
class DataConfig:
    """The prompts and images searched in every round."""

    prompts: str = ""
    """Prompts, JSONL or a JSON list: {id, image, prompt}, the official CSR file's {id, image, input}, {id, image,
    question}, or LLaVA-Instruct's {id, image, conversations} (the first human turn is the prompt); docs/formats.md."""
    image_root: str = ""
    """Directory that relative image paths are resolved against; empty = the prompts file's own folder."""
    image_prefix: str = ""
    """Prefix added to image file names (the official prompt file needs COCO_train2014_)."""
    mix_prompts: str = ""
    """A second prompts file searched beside data.prompts every round (same format), e.g. the yes/no questions
    about the training images that `csr questions` writes; ids must differ from data.prompts'."""
    max_prompts: int | None = None
    """Use only the first N valid prompts (of data.prompts; data.mix_prompts come on top, see max_mix_prompts)."""
    max_mix_prompts: int | None = None
    """Use only the first N valid prompts of data.mix_prompts: the share of every round's pairs the second task
    takes; None (default) = all of them."""
    max_image_pixels: int = 50_000_000
    """Images with more pixels than this are skipped as extreme."""
    max_prompt_tokens: int | None = None
    """Prompts longer than this (image + text tokens) are skipped; None = only the model's context limits them."""

    def validate(self, key: str = "data") -> None:
        """Check this section's values; a ConfigError names `<key>.<field>` (key: where the section sits)."""
        check_positive(key, self, ("max_image_pixels",))
        for name in ("max_prompts", "max_mix_prompts", "max_prompt_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{key}.{name} must be >= 1 or null, got {value}")
